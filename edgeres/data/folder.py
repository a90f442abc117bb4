"""User image folders in ImageFolder layout: ROOT/<class>/* or ROOT/{train,val,test}/<class>/*."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms.v2 import functional as TF

from edgeres.data.split import SPLITS
from edgeres.errors import UserInputError

if TYPE_CHECKING:
    from edgeres.data import DataConfig

CACHE_BYTES = 512 * 2**20  # decoded images are kept when the whole split set fits in this
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _scan(directory: Path, class_names: list[str] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (file, class index) pairs under `directory`, one subfolder per class."""
    try:
        found, _ = find_classes(str(directory))
    except FileNotFoundError:
        raise UserInputError(f"{directory} has no class subfolders; expected {directory}/<class>/<image> "
                             f"(images ending in {', '.join(IMG_EXTENSIONS)})") from None
    names = class_names or found
    missing = sorted(set(names) - set(found))
    extra = sorted(set(found) - set(names))
    if missing or extra:
        raise UserInputError(f"{directory} lacks class folder(s) {missing} or has unexpected ones {extra}; "
                             f"every split needs the same classes: {names}")
    samples = make_dataset(str(directory), {n: i for i, n in enumerate(names)}, IMG_EXTENSIONS, allow_empty=True)
    counts = np.bincount([c for _, c in samples], minlength=len(names))
    empty = [n for n, k in zip(names, counts) if k == 0]
    if empty:
        raise UserInputError(f"{directory}: class folder(s) {empty} hold no images "
                             f"(looked for {', '.join(IMG_EXTENSIONS)})")
    return names, samples


def _check_image(path: str) -> str:
    """The image's PIL mode; raises if the file cannot be decoded."""
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:  # verify() leaves the file unusable, so reopen to read the mode
        return im.mode


def _to_tensor(im: Image.Image, in_chans: int, size: int) -> torch.Tensor:
    """Decode to float32 in [0, 1], in_chans x size x size; 16-bit and float greys keep their range."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        scale = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        x = torch.from_numpy(np.clip(a / scale, 0, 1)).unsqueeze(0)
        x = x.expand(3, -1, -1) if in_chans == 3 else x
    else:
        x = TF.to_dtype(TF.pil_to_tensor(im.convert("L" if in_chans == 1 else "RGB")), torch.float32, scale=True)
    return TF.resize(x, [size, size], antialias=True).clamp(0, 1).contiguous()


class FolderSource:
    """Images from a folder, checked at load so a bad file is named before training starts."""

    default_hflip = True
    default_split = (0.8, 0.1, 0.1)

    def __init__(self, config: DataConfig) -> None:
        root = Path(config.source)
        if not root.is_dir():
            raise UserInputError(f"data folder {root} does not exist (or is not a folder); expected an image "
                                 "folder, or one of the built-in data sets: digits, shapes")
        self.size = config.img_size
        split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
        if split_dirs:
            self._load_given_splits(root, split_dirs, config.skip_bad)
        else:
            self.class_names, samples = _scan(root)
            self._set_samples(samples, config.skip_bad)
            self.given_splits = None
        if len(self.class_names) < 2:
            raise UserInputError(f"{root} has a single class {self.class_names}; classification needs at least two")
        self.in_chans = config.in_chans or self.natural_chans
        self._cache: dict[int, torch.Tensor] | None = (
            {} if len(self.paths) * self.in_chans * self.size**2 * 4 <= CACHE_BYTES else None)

    def _load_given_splits(self, root: Path, split_dirs: list[Path], skip_bad: bool) -> None:
        if not (root / "train").is_dir():
            raise UserInputError(f"{root} has {[d.name for d in split_dirs]} but no train/ folder; "
                                 "expected train/ (and val/, test/) each with one folder per class")
        missing = [s for s in SPLITS if not (root / s).is_dir()]
        if missing:
            raise UserInputError(f"{root} has train/ but lacks {missing}; give all of train/, val/, test/, "
                                 "or put class folders directly in the root to have edgeres split them")
        self.class_names, train = _scan(root / "train")
        parts = {"train": train}
        for s in ("val", "test"):
            parts[s] = _scan(root / s, self.class_names)[1]
        samples, owner = [], []
        for s in SPLITS:
            samples += parts[s]
            owner += [s] * len(parts[s])
        keep = self._set_samples(samples, skip_bad)
        owner = np.asarray(owner)[keep]
        self.given_splits = {s: np.flatnonzero(owner == s) for s in SPLITS}
        for s in SPLITS:
            present = set(self.labels[self.given_splits[s]].tolist())
            lacking = [n for i, n in enumerate(self.class_names) if i not in present]
            if lacking:
                raise UserInputError(f"the {s} split of {root} has no readable images of class(es) {lacking}")

    def _set_samples(self, samples: list[tuple[str, int]], skip_bad: bool) -> np.ndarray:
        """Check every file; keep the readable ones. Returns the kept positions."""
        self.skipped: list[str] = []
        keep, modes = [], []
        for i, (path, _) in enumerate(samples):
            try:
                modes.append(_check_image(path))
                keep.append(i)
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
                if not skip_bad:
                    raise UserInputError(f"cannot read image {path}: {e}; fix or remove it, or pass --skip-bad "
                                         "to skip unreadable images") from None
                self.skipped.append(path)
        self.paths = [samples[i][0] for i in keep]
        self.labels = np.asarray([samples[i][1] for i in keep], dtype=np.int64)
        self.natural_chans = 1 if all(m in _GREY_MODES for m in modes) else 3
        return np.asarray(keep, dtype=np.int64)

    def image(self, index: int) -> torch.Tensor:
        """Item `index` as float32 in_chans x img_size x img_size in [0, 1]."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        with Image.open(self.paths[index]) as im:
            x = _to_tensor(im, self.in_chans, self.size)
        if self._cache is not None:
            self._cache[index] = x
        return x
