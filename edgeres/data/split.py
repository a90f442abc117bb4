"""Seeded stratified splits, and class balancing (loss weights, sampler)."""

from __future__ import annotations

import dataclasses

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from edgeres.errors import UserInputError

SPLITS = ("train", "val", "test")


def check_fractions(split: Sequence[float], field: str = "split") -> tuple[float, float, float]:
    """Validate train/val/test fractions: three numbers in (0, 1) that sum to 1."""
    try:
        values = tuple(float(v) for v in split)
    except (TypeError, ValueError):
        raise UserInputError(
            f"{field}={split!r} is not a list of numbers; expected three train/val/test "
            "fractions such as (0.8, 0.1, 0.1)") from None
    if len(values) != 3:
        raise UserInputError(
            f"{field}={split!r} has {len(values)} values; expected three train/val/test "
            "fractions such as (0.8, 0.1, 0.1)")
    # Every split must be non-empty so that evaluation and calibration always have data.
    if not all(0.0 < v < 1.0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise UserInputError(
            f"{field}={split!r} is not valid; expected three fractions, each between 0 and 1 "
            "(exclusive), summing to 1, such as (0.8, 0.1, 0.1)")
    return values  # type: ignore[return-value]


def _allocate(count: int, fractions: Sequence[float]) -> list[int]:
    """Per-class counts: rounded held-out shares (at least one each), the first part takes the rest."""
    held = [max(1, round(count * f)) for f in fractions[1:]]
    while count - sum(held) < 1:
        # Rounding up tiny classes can starve train: take back from the largest held-out share.
        held[int(np.argmax(held))] -= 1
    return [count - sum(held), *held]


def _split_per_class(labels: np.ndarray, class_names: Sequence[str], fractions: Sequence[float],
                     seed: int, what: str) -> list[np.ndarray]:
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(class_names))
    needed = len(fractions)
    for name, n in zip(class_names, counts):
        if n < needed:
            raise UserInputError(
                f"class {name!r} has {n} image(s); {what} needs at least {needed} images per class")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in range(len(class_names)):
        members = rng.permutation(np.flatnonzero(labels == cls))
        bounds = np.cumsum(_allocate(len(members), fractions))[:-1]
        for part, chunk in zip(parts, np.split(members, bounds)):
            part.append(chunk)
    # Sorted indices keep dataset order stable and independent of class iteration order.
    return [np.sort(np.concatenate(p)) for p in parts]


def stratified_split(labels: np.ndarray, class_names: Sequence[str],
                     fractions: tuple[float, float, float], seed: int,
                     hint: str = "") -> dict[str, np.ndarray]:
    """Split item indices per class so every split holds every class; same seed, same split.

    A per-class split (rather than one global stratified draw) guarantees each class appears in
    val and test, which per-class metrics and the confusion matrix rely on.
    """
    what = f"splitting it into train/val/test {tuple(fractions)}{hint}"
    return dict(zip(SPLITS, _split_per_class(labels, class_names, fractions, seed, what)))


def carve(indices: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
          fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Take a stratified, seeded `fraction` of `indices` out as a held-out split: (rest, held)."""
    rest, held = _split_per_class(np.asarray(labels)[indices], class_names,
                                  (1.0 - fraction, fraction), seed, what)
    return indices[rest], indices[held]


def _check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise UserInputError(
            f"labels must be a non-empty 1-D array of integers; got shape {labels.shape}, "
            f"dtype {labels.dtype}")
    if num_classes < 1 or labels.min() < 0 or labels.max() >= num_classes:
        raise UserInputError(
            f"labels must lie in [0, {num_classes}) for num_classes={num_classes}; "
            f"got values from {labels.min()} to {labels.max()}")
    return labels.astype(np.int64)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights with mean 1 over classes (absent classes weigh 0)."""
    counts = np.bincount(_check_labels(labels, num_classes), minlength=num_classes)
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return torch.tensor(inverse * num_classes / inverse.sum(), dtype=torch.float32)


def make_sampler(labels: np.ndarray, num_classes: int, seed: int) -> WeightedRandomSampler:
    """A seeded sampler that draws every class equally often on average (with replacement)."""
    labels = _check_labels(labels, num_classes)
    per_item = class_weights(labels, num_classes)[torch.from_numpy(labels)].double()
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(per_item, num_samples=len(labels), replacement=True,
                                 generator=generator)


@dataclasses.dataclass
class SplitBundle:
    """What every task's data bundle holds: the splits of one data config and what a model must know of them.
    Subclasses add the source, the split indices and how items are made."""

    config: Any  # edgeres.data.DataConfig
    class_names: list[str]
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: list[str]

    def _check_split(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise UserInputError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        return self.indices[split]

    @staticmethod
    def _check_batch_size(batch_size: int) -> None:
        if batch_size < 1:
            raise UserInputError(f"batch_size must be positive, got {batch_size}")

    def _stacked_batches(self, split: str, batch_size: int, limit: int | None,
                         stack_labels: Any) -> Any:
        """Un-augmented float32 NCHW batches of `split` in dataset order, at most `limit` images, each with its
        items' labels joined by `stack_labels` (a list of labels -> one array)."""
        self._check_batch_size(batch_size)
        ds = self.dataset(split, augment=False)
        n = len(ds) if limit is None else min(limit, len(ds))
        for start in range(0, n, batch_size):
            items = [ds[i] for i in range(start, min(start + batch_size, n))]
            yield torch.stack([x for x, _ in items]).numpy(), stack_labels([y for _, y in items])
