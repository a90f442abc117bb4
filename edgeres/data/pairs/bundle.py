"""Image-to-image data: (input, target) pairs, split, augmented together and served as image-range tensors."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from edgeres.data.pairs.augment import PairAugment
from edgeres.data.pairs.degrade import Degradation, pair_generator
from edgeres.data.pairs.files import ImageCache
from edgeres.data.split import SplitBundle


class PairSource(Protocol):
    """Where pairs come from: degraded built-in or folder images, or paired files."""

    def pair(self, index: int, split: str, augment: PairAugment | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, target) of item `index`, each C x H x W float32 in [0, 1]."""
        ...


@dataclasses.dataclass
class SyntheticPairs:
    """Clean images and a degradation: random on train, the same per image on val and test (seeded)."""

    clean: Any  # .image(index) -> C x H x W in [0, 1]
    degradation: Degradation
    seed: int

    def pair(self, index: int, split: str, augment: PairAugment | None) -> tuple[torch.Tensor, torch.Tensor]:
        target = self.clean.image(index)
        if augment is not None:
            (target,) = augment(target)  # degrading after augmenting keeps the noise independent per pixel
        generator = None if split == "train" else pair_generator(self.seed, split, index)
        return self.degradation(target, generator), target


@dataclasses.dataclass
class FilePairs:
    """Input and target files paired by name, read at the same size."""

    inputs: ImageCache
    targets: ImageCache

    def pair(self, index: int, split: str, augment: PairAugment | None) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.inputs.image(index), self.targets.image(index)
        return augment(x, y) if augment is not None else (x, y)


class PairDataset(Dataset):
    """One split: (input C x H x W, label 2 x C x H x W = [target, input]) items, image range [0, 1].

    The label carries the input too, so evaluation can score the input itself (the "do nothing" baseline)
    from the labels alone."""

    def __init__(self, pairs: PairSource, indices: np.ndarray, split: str, augment: PairAugment | None) -> None:
        self.pairs, self.indices, self.split, self.augment = pairs, indices, split, augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.pairs.pair(int(self.indices[i]), self.split, self.augment)
        return x, torch.stack([y, x])


@dataclasses.dataclass
class PairBundle(SplitBundle):
    """The three splits of one image-to-image data config. `class_names` holds one name, the pairs' kind
    ("denoise", "paired", ...), so a model records what it restores; inputs are not normalised (mean 0, std 1)."""

    pairs: PairSource = dataclasses.field(repr=False, default=None)
    indices: dict[str, np.ndarray] = dataclasses.field(repr=False, default_factory=dict)
    hflip: bool = True

    def count(self, split: str) -> int:
        """Images in `split`."""
        return len(self._check_split(split))

    def dataset(self, split: str, augment: bool | None = None) -> PairDataset:
        """A split as a Dataset; augmented (the pair together) only on train by default."""
        indices = self._check_split(split)
        if augment is None:
            augment = split == "train" and self.config.augment
        return PairDataset(self.pairs, indices, split, PairAugment(self.hflip) if augment else None)

    def labels(self, split: str) -> np.ndarray:
        """One class (the pairs' kind) per image: what class-balancing code asks of any bundle."""
        return np.zeros(len(self._check_split(split)), dtype=np.int64)

    def batches(self, split: str, batch_size: int, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Un-augmented float32 inputs (N, C, H, W) and labels (N, 2, C, H, W) = [target, input], in order."""
        return self._stacked_batches(split, batch_size, limit, lambda ys: torch.stack(ys).numpy())
