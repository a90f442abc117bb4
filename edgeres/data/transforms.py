"""From a source's images to model tensors: channels, augmentation, normalisation."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from edgeres.errors import UserInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# One-channel ImageNet statistics: the channel averages, as timm uses for grayscale inputs.
IMAGENET_GRAY_MEAN = (0.449,)
IMAGENET_GRAY_STD = (0.226,)
NORMALIZE_MODES = ("auto", "imagenet", "dataset")
STATS_SAMPLE = 1000  # images read to estimate dataset statistics; enough for 3 decimals


class ImageSource(Protocol):
    """What load_data needs from a source (built-in or folder)."""

    class_names: list[str]
    labels: np.ndarray  # int64, one per item
    in_chans: int
    skipped: list[str]
    given_splits: dict[str, np.ndarray] | None  # item indices per split, when the source has them

    def image(self, index: int) -> torch.Tensor:
        """Item `index` as float32 in_chans x img_size x img_size, values in [0, 1]."""
        ...


def to_channels(image: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Convert a CxHxW (or NxCxHxW) image between 1 and 3 channels."""
    have = image.shape[-3]
    if have == in_chans:
        return image
    if in_chans == 1:
        return F.rgb_to_grayscale(image)
    return image.expand(*image.shape[:-3], 3, *image.shape[-2:])


class TrainAugment:
    """Cheap train-time augmentation: small affine, optional mirror, brightness/contrast jitter.

    Calls torchvision's v2 functional ops directly: the v2 transform classes spend more time
    sampling parameters than transforming a 32x32 image. Randomness comes from torch's global
    RNG, as for torchvision's transforms, so DataLoader workers seed it the usual way.
    """

    def __init__(self, hflip: bool, degrees: float = 10.0, translate: float = 0.06,
                 scale: tuple[float, float] = (0.92, 1.08), jitter: float = 0.2) -> None:
        self.hflip, self.degrees, self.translate = hflip, degrees, translate
        self.scale, self.jitter = scale, jitter

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        r = torch.rand(7).tolist()
        height, width = image.shape[-2:]
        shift = [(2 * r[1] - 1) * self.translate * width, (2 * r[2] - 1) * self.translate * height]
        image = F.affine_image(image, angle=(2 * r[0] - 1) * self.degrees, translate=shift,
                               scale=self.scale[0] + r[3] * (self.scale[1] - self.scale[0]),
                               shear=[0.0, 0.0], interpolation=v2.InterpolationMode.BILINEAR)
        if self.hflip and r[4] < 0.5:
            image = F.horizontal_flip_image(image)
        image = F.adjust_brightness_image(image, 1.0 + (2 * r[5] - 1) * self.jitter)
        return F.adjust_contrast_image(image, 1.0 + (2 * r[6] - 1) * self.jitter)


def train_augment(hflip: bool) -> TrainAugment:
    """The train-split augmentation; `hflip` adds random horizontal mirroring."""
    return TrainAugment(hflip)


def channel_stats(source: ImageSource, indices: np.ndarray) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and std over (an evenly spaced sample of) the given items."""
    if len(indices) > STATS_SAMPLE:
        indices = indices[np.linspace(0, len(indices) - 1, STATS_SAMPLE).astype(np.int64)]
    total = torch.zeros(source.in_chans, dtype=torch.float64)
    squares = torch.zeros_like(total)
    pixels = 0
    for i in indices:
        x = source.image(int(i)).double().flatten(1)
        total += x.sum(1)
        squares += (x * x).sum(1)
        pixels += x.shape[1]
    mean = total / pixels
    std = (squares / pixels - mean * mean).clamp_min(0).sqrt()
    # A constant channel has no spread to normalise away; dividing by ~0 would explode it.
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def resolve_stats(mode: str, source: ImageSource,
                  train: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std for `mode`: "imagenet", "dataset" (train split), or "auto" (imagenet iff RGB)."""
    if mode not in NORMALIZE_MODES:
        raise UserInputError(f"normalize={mode!r} is not known; expected one of {NORMALIZE_MODES}")
    if mode == "auto":
        mode = "imagenet" if source.in_chans == 3 else "dataset"
    if mode == "dataset":
        return channel_stats(source, train)
    if source.in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD


class SplitDataset(Dataset):
    """One split of a source: (normalised float32 CxHxW tensor, int label) items."""

    def __init__(self, source: ImageSource, indices: np.ndarray, mean: tuple[float, ...],
                 std: tuple[float, ...], augment: TrainAugment | None = None) -> None:
        self.source = source
        self.indices = indices
        self.augment = augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = int(self.indices[i])
        x = self.source.image(index)
        if self.augment is not None:
            x = self.augment(x)
        return (x - self.mean) / self.std, int(self.source.labels[index])
