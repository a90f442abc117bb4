"""The in-memory form every detection source (YOLO layout, COCO JSON, shapes-det) is read into: images with
boxes relative to their width and height, checked once and letterboxed on demand."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Protocol

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from edgeres.data.folder import CACHE_BYTES
from edgeres.data.split import SPLITS
from edgeres.errors import UserInputError
from edgeres.letterbox import read_letterboxed

if TYPE_CHECKING:
    from edgeres.data import DataConfig

Geometry = tuple[tuple[int, int], tuple[int, int]]  # letterboxed (w, h) and pad (x, y) of one image


class ImageStore(Protocol):
    """Images of one source, letterboxed to the input size."""

    geometry: list[Geometry]

    def __len__(self) -> int: ...

    def name(self, index: int) -> str:
        """What to call image `index` in messages (its file)."""
        ...

    def load(self, index: int) -> np.ndarray:
        """Image `index` as size x size x 3 uint8, letterboxed."""
        ...


@dataclasses.dataclass
class DetectionSource:
    """Images and their boxes, however they were stored: what the bundle splits, letterboxes and serves."""

    class_names: list[str]
    images: ImageStore
    boxes: list[np.ndarray]  # per image (n, 5) float32 [class, x1, y1, x2, y2], coordinates in [0, 1]
    given_splits: dict[str, np.ndarray] | None
    skipped: list[str]


class ImageFiles:
    """Image files decoded once at load (so a bad file is named before training) and kept if they fit."""

    def __init__(self, paths: list[str], size: int) -> None:
        self.paths, self.size = paths, size
        self.geometry: list[Geometry] = []
        self._cache: list[np.ndarray] | None = [] if len(paths) * size * size * 3 <= CACHE_BYTES else None

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return self.paths[index]

    def check(self, skip_bad: bool, skipped: list[str]) -> np.ndarray:
        """Decode every file, dropping unreadable ones (or raising); returns the kept positions."""
        keep = []
        for i, path in enumerate(self.paths):
            try:
                pixels, resized, pad = read_letterboxed(path, self.size)
            except Exception as e:  # decoders fail in many ways (OSError, SyntaxError, EOFError...)
                if not skip_bad:
                    raise UserInputError(f"cannot read image {path}: {e}; fix or remove it, or pass --skip-bad "
                                         "(skip_bad=True) to skip unreadable images") from None
                skipped.append(f"{path}: unreadable image ({e})")
                continue
            keep.append(i)
            self.geometry.append((resized, pad))
            if self._cache is not None:
                self._cache.append(pixels)
        self.paths = [self.paths[i] for i in keep]
        return np.asarray(keep, dtype=np.int64)

    def load(self, index: int) -> np.ndarray:
        if self._cache is not None:
            return self._cache[index]
        path = self.paths[index]
        try:
            return read_letterboxed(path, self.size)[0]
        except Exception as e:  # the file changed or broke after it was checked
            raise UserInputError(f"cannot read image {path}: {e}; it was readable when the data was loaded, "
                                 "so it may have been changed or removed since") from None


def source_from_files(class_names: list[str], paths: list[str], boxes: list[np.ndarray], owners: list[str] | None,
                      config: DataConfig, skipped: list[str]) -> DetectionSource:
    """Check the images, drop unreadable ones with their boxes, and group them by `owners` (split names)."""
    if not paths:
        raise UserInputError("no images found; expected image files ending in " + ", ".join(IMG_EXTENSIONS))
    images = ImageFiles(paths, config.img_size)
    keep = images.check(config.skip_bad, skipped)
    if len(keep) == 0:
        raise UserInputError(f"none of the {len(paths)} image(s) could be read (see the skipped list)")
    kept_boxes = [boxes[i] for i in keep]
    given = None
    if owners is not None:
        kept_owners = np.asarray(owners)[keep]
        given = {s: np.flatnonzero(kept_owners == s) for s in SPLITS if s in set(owners)}
        empty = [s for s, members in given.items() if len(members) == 0]
        if empty:
            raise UserInputError(f"the {' and '.join(empty)} split(s) have no readable images")
    return DetectionSource(class_names, images, kept_boxes, given, skipped)
