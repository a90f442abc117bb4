"""User image folders in ImageFolder layout: ROOT/<class>/* or ROOT/{train,val,test}/<class>/*."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from torchvision.transforms.v2 import functional as TF

from edgeres.data.split import SPLITS, carve
from edgeres.errors import UserInputError

if TYPE_CHECKING:
    from edgeres.data import DataConfig

log = logging.getLogger("edgeres")

CACHE_BYTES = 512 * 2**20  # decoded images are kept when the whole split set fits in this
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
_LAYOUT = "ROOT/<class>/<image> or ROOT/train|val|test/<class>/<image>"


def _class_dirs(directory: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .git) are tool litter, never classes.
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def _is_image(path: str) -> bool:
    # "._x.png" files are macOS metadata that carry an image extension but hold no image.
    return has_file_allowed_extension(path, IMG_EXTENSIONS) and not os.path.basename(path).startswith(".")


def _identity(path: str) -> tuple[int, int] | None:
    """What a path resolves to (device, inode), following symlinks; None for a dangling link."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _walk_once(top: Path) -> list[tuple[str, list[str]]]:
    """(folder, sorted file names) under `top`, following symlinks but entering each real folder once.

    A symlink back to an ancestor (a loop) or a second link to a folder already scanned is reported and
    skipped: following it would list the same images again, without end for a loop.
    """
    visited: dict[tuple[int, int], str] = {}
    found = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        key = _identity(dirpath)
        if key in visited:
            log.warning("%s leads back to %s, which is already scanned (a symlink loop or a second link to one "
                        "folder); its images are counted once", dirpath, visited[key])
            dirnames[:] = []
            continue
        if key is not None:
            visited[key] = dirpath
        dirnames.sort()
        found.append((dirpath, sorted(filenames)))
    return sorted(found)


def _class_samples(directory: Path, names: list[str], seen: dict[tuple[int, int], str]) -> list[tuple[str, int]]:
    """(file, class index) pairs; a file reached twice in one class counts once, in two places is refused."""
    samples = []
    for index, name in enumerate(names):
        place = str(directory / name)
        for dirpath, filenames in _walk_once(directory / name):
            for fname in filenames:
                path = os.path.join(dirpath, fname)
                if not _is_image(path):
                    continue
                key = _identity(path)
                if key is not None and key in seen:
                    if seen[key] != place:
                        raise UserInputError(
                            f"{path} is the same file as one in {seen[key]} (a symlink or hard link): one image "
                            f"in two classes or splits ({seen[key]} and {place}) would leak test images into "
                            "training or teach two labels; keep each image in one place")
                    continue
                if key is not None:
                    seen[key] = place
                samples.append((path, index))
    return samples


def _scan(directory: Path, class_names: list[str] | None = None, seen: dict[tuple[int, int], str] | None = None,
          only: tuple[str, ...] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (file, class index) pairs under `directory`, one subfolder per class.

    `seen` carries the files found so far across calls, so one file in two splits is refused. `only`: the class
    folders to read (the data's `classes`); the others are not looked into.
    """
    found = _class_dirs(directory)
    if only is not None and found:
        absent = sorted(set(only) - set(found))
        if absent:
            raise UserInputError(f"classes {absent} are not class folders of {directory}; its class folders "
                                 f"are {found}")
        found = [name for name in found if name in only]
    if not found:
        loose = sum(1 for p in directory.iterdir() if _is_image(str(p)))
        what = f"{loose} image(s) but no class subfolders" if loose else "no class subfolders"
        raise UserInputError(f"{directory} has {what}; expected {_LAYOUT} "
                             f"(images ending in {', '.join(IMG_EXTENSIONS)})")
    names = class_names or found
    missing = sorted(set(names) - set(found))
    extra = sorted(set(found) - set(names))
    if missing:
        raise UserInputError(f"{directory} lacks class folder(s) {missing}; every split needs the same "
                             f"classes as train/: {names}")
    if extra:
        raise UserInputError(f"{directory} has class folder(s) {extra} that train/ lacks; every split needs "
                             f"the same classes as train/: {names}")
    samples = _class_samples(directory, names, {} if seen is None else seen)
    counts = np.bincount([c for _, c in samples], minlength=len(names))
    empty = [n for n, k in zip(names, counts) if k == 0]
    if empty:
        raise UserInputError(f"{directory}: class folder(s) {empty} hold no images "
                             f"(looked for {', '.join(IMG_EXTENSIONS)})")
    return names, samples


def _check_image(path: str, size: int) -> str:
    """The image's PIL mode; raises if the file cannot be fully decoded."""
    with Image.open(path) as im:
        mode = im.mode
        # A full decode, not verify(): verify() passes truncated JPEGs. draft() makes JPEGs decode
        # at reduced scale, so checking large photos stays cheap.
        im.draft(None, (size, size))
        im.load()
    return mode


def image_to_tensor(im: Image.Image, in_chans: int, size: int) -> torch.Tensor:
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
        root = Path(config.source).expanduser()
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise UserInputError(f"data folder {root} {what}; expected an image folder laid out as {_LAYOUT}, "
                                 "or one of the built-in data sets: digits, shapes")
        self.size = config.img_size
        split_dirs = [s for s in SPLITS if (root / s).is_dir()]
        if split_dirs:
            self._load_given_splits(root, split_dirs, config)
        else:
            self.class_names, samples = _scan(root, only=config.classes)
            self._set_samples(samples, config.skip_bad)
            self.given_splits = None
        if len(self.class_names) < 2:
            raise UserInputError(f"{root} has a single class {self.class_names}; classification needs at least "
                                 "two class folders")
        self.in_chans = config.in_chans or self.natural_chans
        self._cache: dict[int, torch.Tensor] | None = (
            {} if len(self.paths) * self.in_chans * self.size**2 * 4 <= CACHE_BYTES else None)

    def _load_given_splits(self, root: Path, split_dirs: list[str], config: DataConfig) -> None:
        if "train" not in split_dirs:
            raise UserInputError(f"{root} has {split_dirs} but no train/ folder; expected train/ (and val/, "
                                 "test/) each with one folder per class")
        if split_dirs == ["train"]:
            raise UserInputError(f"{root} has train/ but neither val/ nor test/; add them, or put the class "
                                 "folders directly in the root to have edgeres split them")
        if config.split is not None and split_dirs == list(SPLITS):
            raise UserInputError(f"{root} already has train/, val/ and test/ folders, so a split cannot be "
                                 f"applied (got split={config.split}); drop --split to use the folders as given")
        seen: dict[tuple[int, int], str] = {}
        self.class_names, train = _scan(root / "train", seen=seen, only=config.classes)
        parts = {"train": train}
        for s in split_dirs[1:]:
            parts[s] = _scan(root / s, self.class_names, seen, only=config.classes)[1]
        samples, owner = [], []
        for s in split_dirs:
            samples += parts[s]
            owner += [s] * len(parts[s])
        keep = self._set_samples(samples, config.skip_bad)
        owner = np.asarray(owner)[keep]
        self.given_splits = {s: np.flatnonzero(owner == s) for s in split_dirs}
        for s in split_dirs:
            present = set(self.labels[self.given_splits[s]].tolist())
            lacking = [n for i, n in enumerate(self.class_names) if i not in present]
            if lacking:
                raise UserInputError(f"the {s} split of {root} has no readable images of class(es) {lacking}")
        self._carve_missing(root, config)

    def _carve_missing(self, root: Path, config: DataConfig) -> None:
        """Fill a missing val/ or test/ from train, stratified and seeded, in the split's proportion."""
        fractions = dict(zip(SPLITS, config.split or self.default_split))
        for s in SPLITS:
            if s not in self.given_splits:
                share = fractions[s] / (fractions["train"] + fractions[s])
                self.given_splits["train"], self.given_splits[s] = carve(
                    self.given_splits["train"], self.labels, self.class_names, share, config.seed,
                    f"carving a {s} split out of {root / 'train'} (there is no {s}/ folder)")
        self.given_splits = {s: self.given_splits[s] for s in SPLITS}

    def _set_samples(self, samples: list[tuple[str, int]], skip_bad: bool) -> np.ndarray:
        """Check every file; keep the readable ones. Returns the kept positions."""
        self.skipped: list[str] = []
        keep, modes = [], []
        for i, (path, _) in enumerate(samples):
            try:
                modes.append(_check_image(path, self.size))
                keep.append(i)
            except Exception as e:  # decoders fail in many ways (OSError, SyntaxError, EOFError...): all mean unreadable
                if not skip_bad:
                    raise UserInputError(f"cannot read image {path}: {e}; fix or remove it, or pass --skip-bad "
                                         "(skip_bad=True) to skip unreadable images") from None
                self.skipped.append(path)
        self.paths = [samples[i][0] for i in keep]
        self.labels = np.asarray([samples[i][1] for i in keep], dtype=np.int64)
        self.natural_chans = 1 if all(m in _GREY_MODES for m in modes) else 3
        return np.asarray(keep, dtype=np.int64)

    def image(self, index: int) -> torch.Tensor:
        """Item `index` as float32 in_chans x img_size x img_size in [0, 1]."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                im.draft("L" if self.in_chans == 1 else "RGB", (self.size, self.size))
                x = image_to_tensor(im, self.in_chans, self.size)
        except Exception as e:  # the file changed or broke after load_data checked it
            raise UserInputError(f"cannot read image {path}: {e}; it was readable when the data was "
                                 "loaded, so it may have been changed or removed since") from None
        if self._cache is not None:
            self._cache[index] = x
        return x
