"""Data: built-in sets and user folders, split, augmented and normalised the same way everywhere."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import numpy as np
from torch.utils.data import Dataset

from edgeres.data.builtin import BUILTIN_SOURCES
from edgeres.data.folder import FolderSource
from edgeres.data.pairs.degrade import PAIR_KINDS
from edgeres.data.split import SplitBundle, check_fractions, class_weights, make_sampler, stratified_split
from edgeres.data.subset import ClassSubset
from edgeres.data.transforms import NORMALIZE_MODES, SplitDataset, resolve_stats, train_augment
from edgeres.errors import UserInputError

# Built-in detection sets live in edgeres.data.detect, which imports this package: named here, not imported.
_BUILTIN_NAMES = ", ".join(sorted([*BUILTIN_SOURCES, "shapes-det"]))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are split and prepared. JSON-able, stored with each model."""

    source: str                                     # "digits", "shapes", "shapes-det", or a folder/file
    img_size: int = 64
    in_chans: int | None = None                     # None: the source's own (digits 1, shapes 3, folder: by files)
    split: tuple[float, float, float] | None = None  # None: the source's default
    seed: int = 0
    augment: bool = True                            # train split only
    hflip: bool | None = None                       # None: the source's default (never for digits)
    normalize: str = "auto"                         # auto | imagenet | dataset
    skip_bad: bool = False
    shapes_per_class: int = 120
    detect_images: int = 600                        # shapes-det: images generated
    pairs: str | None = None                        # image2image: denoise | inpaint | sr2 | sr4; None: paired
                                                    # input/ and target/ folders if the source has them, else denoise
    sigma: float = 0.1                              # image2image denoise: the noise's std in image range [0, 1]
    classes: tuple[str, ...] | None = None          # only these of the source's classes, in this order

    def __post_init__(self) -> None:
        source = os.fspath(self.source) if isinstance(self.source, os.PathLike) else self.source
        if not isinstance(source, str) or not source:
            raise UserInputError(f"source must be a built-in name ({_BUILTIN_NAMES}) or an "
                                 f"image folder path, got {self.source!r}")
        object.__setattr__(self, "source", source)
        _check_int("img_size", self.img_size, 8, 4096)
        if self.in_chans is not None and (isinstance(self.in_chans, bool) or self.in_chans not in (1, 3)):
            raise UserInputError(f"in_chans must be 1 or 3 (or unset), got {self.in_chans!r}")
        if self.split is not None:
            object.__setattr__(self, "split", check_fractions(self.split))
        _check_int("seed", self.seed, 0, 2**63 - 1)
        for name in ("augment", "skip_bad") + (("hflip",) if self.hflip is not None else ()):
            if not isinstance(getattr(self, name), bool):
                raise UserInputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.normalize not in NORMALIZE_MODES:
            raise UserInputError(f"normalize must be one of {list(NORMALIZE_MODES)}, got {self.normalize!r}")
        _check_int("shapes_per_class", self.shapes_per_class, 3, 10**6)
        _check_int("detect_images", self.detect_images, 3, 10**6)
        if self.pairs is not None and self.pairs not in PAIR_KINDS:
            raise UserInputError(f"pairs must be one of {list(PAIR_KINDS)} (or unset), got {self.pairs!r}")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not 0 < self.sigma <= 1:
            raise UserInputError(f"sigma must be a number in (0, 1] (noise std in image range), got {self.sigma!r}")
        if self.classes is not None:
            if isinstance(self.classes, str) or not all(isinstance(c, str) and c for c in self.classes):
                raise UserInputError(f"classes must be a list of class names, got {self.classes!r}")
            object.__setattr__(self, "classes", tuple(self.classes))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields; from_dict() rebuilds the same config."""
        d = dataclasses.asdict(self)
        d["split"] = list(self.split) if self.split else None
        d["classes"] = list(self.classes) if self.classes else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        """Rebuild from to_dict() output (or YAML/JSON), naming unknown or invalid fields."""
        if not isinstance(d, dict):
            raise UserInputError(f"data config must be a mapping of field names to values, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserInputError(f"unknown data field(s) {unknown}; known: {sorted(known)}")
        if "source" not in d:
            raise UserInputError("data config lacks 'source'; expected a built-in name "
                                 f"({_BUILTIN_NAMES}) or an image folder path")
        return cls(**d)


@dataclasses.dataclass
class DataBundle(SplitBundle):
    """The three splits of one classification data config, with what a model needs to know about them."""

    source: Any = dataclasses.field(repr=False, default=None)
    indices: dict[str, np.ndarray] = dataclasses.field(repr=False, default_factory=dict)
    hflip: bool = False

    def dataset(self, split: str, augment: bool | None = None) -> Dataset:
        """A split as a Dataset of (normalised CxHxW float32, label); augmented only on train by default."""
        indices = self._check_split(split)
        if augment is None:
            augment = split == "train" and self.config.augment
        return SplitDataset(self.source, indices, self.mean, self.std, train_augment(self.hflip) if augment else None)

    def labels(self, split: str) -> np.ndarray:
        """Integer labels of `split`, in dataset order."""
        return self.source.labels[self._check_split(split)].copy()

    def batches(self, split: str, batch_size: int, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Un-augmented float32 NCHW batches and their labels, in dataset order; at most `limit` images."""
        return self._stacked_batches(split, batch_size, limit, lambda ys: np.asarray(ys, dtype=np.int64))


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    # bool is an int subclass, but img_size=True is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserInputError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def _open_source(config: DataConfig):
    source = _open_whole_source(config)
    return source if config.classes is None else ClassSubset(source, config.classes)


def _open_whole_source(config: DataConfig):
    if config.source in BUILTIN_SOURCES:
        return BUILTIN_SOURCES[config.source](config)
    return FolderSource(config)


def load_data(config: DataConfig) -> DataBundle:
    """Open, check and split the data `config` names."""
    source = _open_source(config)
    if source.given_splits is not None:
        indices = dict(source.given_splits)
    else:
        fractions = config.split or source.default_split
        indices = stratified_split(source.labels, source.class_names, fractions, config.seed,
                                   hint=f" for {config.source}")
    mean, std = resolve_stats(config.normalize, source, indices["train"])
    hflip = source.default_hflip if config.hflip is None else config.hflip
    return DataBundle(config=config, class_names=list(source.class_names), in_chans=source.in_chans,
                      img_size=config.img_size, mean=tuple(mean), std=tuple(std), skipped=list(source.skipped),
                      source=source, indices=indices, hflip=hflip)


__all__ = ["DataBundle", "DataConfig", "class_weights", "load_data", "make_sampler"]
