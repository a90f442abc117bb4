"""Image files for image-to-image data: a folder of clean images, or input/ and target/ folders paired by name."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from edgeres.data.folder import CACHE_BYTES, image_to_tensor
from edgeres.data.split import SPLITS
from edgeres.errors import UserInputError

INPUT, TARGET = "input", "target"
PAIRED_LAYOUT = "ROOT/input/ and ROOT/target/ (or ROOT/train|val|test/input|target/), files paired by name"


def paired_roots(root: Path) -> dict[str, Path] | None:
    """{split or "": folder holding input/ and target/} when `root` is laid out as paired folders, else None."""
    if (root / INPUT).is_dir() or (root / TARGET).is_dir():
        return {"": root}
    found = {s: root / s for s in SPLITS if (root / s / INPUT).is_dir() or (root / s / TARGET).is_dir()}
    return found or None


def image_files(folder: Path) -> dict[str, str]:
    """{path relative to `folder`: path} of every image under it (hidden files skipped), sorted."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if has_file_allowed_extension(name, IMG_EXTENSIONS) and not name.startswith("."):
                path = os.path.join(dirpath, name)
                found[os.path.relpath(path, folder)] = path
    return dict(sorted(found.items()))


def match_pairs(folder: Path) -> list[tuple[str, str]]:
    """(input, target) paths of `folder`/input and `folder`/target with the same relative name; any name on one
    side only is refused, naming it."""
    for side in (INPUT, TARGET):
        if not (folder / side).is_dir():
            raise UserInputError(f"{folder} has no {side}/ folder; paired data is laid out as {PAIRED_LAYOUT}")
    inputs, targets = image_files(folder / INPUT), image_files(folder / TARGET)
    only_in, only_target = sorted(set(inputs) - set(targets)), sorted(set(targets) - set(inputs))
    if only_in or only_target:
        parts = [f"{len(names)} only in {folder / side}/ (e.g. {', '.join(names[:5])})"
                 for side, names in ((INPUT, only_in), (TARGET, only_target)) if names]
        raise UserInputError(f"input and target files must pair up by name: {'; '.join(parts)}")
    if not inputs:
        raise UserInputError(f"{folder / INPUT} holds no images; expected files ending in {', '.join(IMG_EXTENSIONS)}")
    return [(inputs[name], targets[name]) for name in inputs]


def read_image(path: str, in_chans: int, size: int) -> torch.Tensor:
    """One file as float32 in_chans x size x size in [0, 1]; an unreadable file is named."""
    try:
        with Image.open(path) as im:
            return image_to_tensor(im, in_chans, size)
    except Exception as e:  # decoders fail in many ways (OSError, SyntaxError, EOFError...)
        raise UserInputError(f"cannot read image {path}: {e}; fix or remove it") from None


def natural_chans(paths: list[str]) -> int:
    """1 when every file (of a sample) is grey, else 3."""
    grey = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    for path in paths[:50]:
        try:
            with Image.open(path) as im:
                if im.mode not in grey:
                    return 3
        except Exception as e:
            raise UserInputError(f"cannot read image {path}: {e}; fix or remove it") from None
    return 1


class ImageCache:
    """Decoded images by index, kept while the whole set fits in CACHE_BYTES."""

    def __init__(self, paths: list[str], in_chans: int, size: int) -> None:
        self.paths, self.in_chans, self.size = paths, in_chans, size
        self._cache: dict[int, torch.Tensor] | None = {} if len(paths) * in_chans * size * size * 4 <= CACHE_BYTES \
            else None

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> torch.Tensor:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        x = read_image(self.paths[index], self.in_chans, self.size)
        if self._cache is not None:
            self._cache[index] = x
        return x


def split_owner(paths_by_split: dict[str, list]) -> tuple[list, dict[str, np.ndarray] | None]:
    """All items in split order and each split's indices ("" holds items of no split: None)."""
    items, given = [], {}
    for split, members in paths_by_split.items():
        given[split] = np.arange(len(items), len(items) + len(members))
        items += members
    return items, None if "" in given else given
