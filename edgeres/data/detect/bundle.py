"""Detection data: open a source, split it, and serve letterboxed images with boxes in input pixels."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from edgeres.data.detect import shapes_det
from edgeres.data.detect.augment import DetectAugment
from edgeres.data.detect.coco import find_coco, read_coco
from edgeres.data.detect.source import DetectionSource
from edgeres.data.detect.yolo import find_yaml, read_yolo
from edgeres.data.split import SPLITS, SplitBundle
from edgeres.data.transforms import IMAGENET_MEAN, IMAGENET_STD, NORMALIZE_MODES, STATS_SAMPLE
from edgeres.errors import UserInputError

if TYPE_CHECKING:
    from edgeres.data import DataConfig

DEFAULT_SPLIT = (0.7, 0.15, 0.15)


def is_detection_source(source: str) -> bool:
    """Whether `source` names detection data (shapes-det, a data.yaml, a YOLO or COCO layout); reads no image."""
    if source == shapes_det.NAME:
        return True
    path = Path(source).expanduser()
    if path.is_file():
        return path.suffix in (".yaml", ".yml", ".json")
    return path.is_dir() and (find_yaml(path) is not None or find_coco(path) is not None
                              or ((path / "images").is_dir() and (path / "labels").is_dir()))


def _open(config: DataConfig) -> DetectionSource:
    if config.source == shapes_det.NAME:
        return shapes_det.read_shapes_det(config)
    path = Path(config.source).expanduser()
    coco = None if find_yaml(path) is not None else find_coco(path)
    return read_coco(config, coco) if coco is not None else read_yolo(config)


def _take(indices: np.ndarray, share: float, rng: np.random.Generator, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random `share` of `indices` (at least one) taken out: (rest, taken), each sorted."""
    held = max(1, round(len(indices) * share))
    if len(indices) - held < 1:
        raise UserInputError(f"{what}: {len(indices)} image(s) are too few to hold out {held} and train on the rest")
    order = rng.permutation(indices)
    return np.sort(order[held:]), np.sort(order[:held])


def split_indices(count: int, given: dict[str, np.ndarray] | None, config: DataConfig,
                  where: str) -> dict[str, np.ndarray]:
    """Image indices per split: the given ones, with a missing val or test carved out of train (seeded)."""
    if given is not None and config.split is not None and set(given) == set(SPLITS):
        raise UserInputError(f"{where} already has train, val and test splits, so a split cannot be applied "
                             f"(got split={config.split}); drop --split to use them as given")
    fractions = dict(zip(SPLITS, config.split or DEFAULT_SPLIT))
    splits = dict(given) if given is not None else {"train": np.arange(count)}
    rng = np.random.default_rng(config.seed)
    for s in SPLITS[1:]:
        if s not in splits:
            # A share of what train still holds: with val and test both missing, this yields the fractions.
            share = fractions[s] / (fractions["train"] + sum(fractions[m] for m in SPLITS[1:] if m not in splits))
            splits["train"], splits[s] = _take(splits["train"], share, rng,
                                               f"carving a {s} split out of the training images of {where}")
    return {s: splits[s] for s in SPLITS}


def pixel_boxes(source: DetectionSource, index: int) -> np.ndarray:
    """Image `index`'s boxes (n, 5) [class, x1, y1, x2, y2] in letterboxed input pixels."""
    (width, height), (pad_x, pad_y) = source.images.geometry[index]
    boxes = source.boxes[index].copy()
    boxes[:, [1, 3]] = boxes[:, [1, 3]] * width + pad_x
    boxes[:, [2, 4]] = boxes[:, [2, 4]] * height + pad_y
    return boxes


class DetectionDataset(Dataset):
    """One split: (normalised float32 3xHxW tensor, boxes float32 (n, 5) [class, x1, y1, x2, y2]) items."""

    def __init__(self, source: DetectionSource, indices: np.ndarray, boxes: list[np.ndarray],
                 mean: tuple[float, ...], std: tuple[float, ...], augment: DetectAugment | None = None) -> None:
        self.source, self.indices, self.boxes, self.augment = source, indices, boxes, augment
        # (v / 255 - mean) / std as one multiply-add per pixel, in numpy: torch is slower on small HWC images.
        self.gain = (1 / (255 * np.asarray(std))).astype(np.float32)
        self.offset = (-np.asarray(mean) / np.asarray(std)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(self.indices[i])
        image, boxes = self.source.images.load(index), self.boxes[index]
        if self.augment is not None:
            image, boxes = self.augment(image, boxes)
        x = np.ascontiguousarray((image * self.gain + self.offset).transpose(2, 0, 1))
        return torch.from_numpy(x), torch.from_numpy(boxes.astype(np.float32, copy=False))


def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack images to (N, C, H, W) and boxes to targets (M, 6) [image index in batch, class, x1, y1, x2, y2]."""
    images = torch.stack([x for x, _ in items])
    targets = [torch.cat([torch.full((len(b), 1), float(i)), b.reshape(-1, 5)], 1) for i, (_, b) in enumerate(items)]
    return images, torch.cat(targets) if targets else torch.zeros((0, 6))


@dataclasses.dataclass
class DetectionBundle(SplitBundle):
    """The three splits of one detection data config, with what a detector needs to know about them."""

    source: DetectionSource = dataclasses.field(repr=False)
    indices: dict[str, np.ndarray] = dataclasses.field(repr=False)
    boxes: list[np.ndarray] = dataclasses.field(repr=False)  # per source image, in input pixels
    hflip: bool = True
    collate = staticmethod(collate)

    def count(self, split: str) -> int:
        """Images in `split`."""
        return len(self._check_split(split))

    def dataset(self, split: str, augment: bool | None = None) -> DetectionDataset:
        """A split as a Dataset; augmented (box-aware) only on train by default."""
        indices = self._check_split(split)
        if augment is None:
            augment = split == "train" and self.config.augment
        return DetectionDataset(self.source, indices, self.boxes, self.mean, self.std,
                                DetectAugment(hflip=self.hflip) if augment else None)

    def labels(self, split: str) -> np.ndarray:
        """Targets (M, 6) of the whole split: [image index in the split, class, x1, y1, x2, y2] in input pixels."""
        rows = [np.concatenate([np.full((len(self.boxes[k]), 1), i, np.float32), self.boxes[k]], 1)
                for i, k in enumerate(self._check_split(split))]
        return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 6), np.float32)

    def batches(self, split: str, batch_size: int, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Un-augmented letterboxed float32 NCHW batches and their targets (M, 6), column 0 the index in the batch."""
        self._check_batch_size(batch_size)
        ds = self.dataset(split, augment=False)
        n = len(ds) if limit is None else min(limit, len(ds))
        for start in range(0, n, batch_size):
            images, targets = collate([ds[i] for i in range(start, min(start + batch_size, n))])
            yield images.numpy(), targets.numpy()


def _stats(config: DataConfig, source: DetectionSource, train: np.ndarray) -> tuple[tuple[float, ...], ...]:
    """ImageNet mean/std (the backbones' pretraining), or the train split's own for normalize="dataset"."""
    if config.normalize != "dataset":
        return IMAGENET_MEAN, IMAGENET_STD
    if len(train) > STATS_SAMPLE:
        train = train[np.linspace(0, len(train) - 1, STATS_SAMPLE).astype(np.int64)]
    total, squares, count = np.zeros(3), np.zeros(3), 0
    for i in train:
        pixels = source.images.load(int(i)).reshape(-1, 3).astype(np.float64) / 255
        total += pixels.sum(0)
        squares += (pixels * pixels).sum(0)
        count += len(pixels)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0))
    std = np.where(std < 1e-6, 1.0, std)  # a constant channel has no spread to normalise away
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def load_detection_data(config: DataConfig) -> DetectionBundle:
    """Open, check and split the detection data `config` names."""
    if config.in_chans not in (None, 3):
        raise UserInputError(f"detection reads RGB images: in_chans must be 3 or unset, got {config.in_chans}")
    if config.normalize not in NORMALIZE_MODES:
        raise UserInputError(f"normalize must be one of {list(NORMALIZE_MODES)}, got {config.normalize!r}")
    source = _open(config)
    indices = split_indices(len(source.images), source.given_splits, config, config.source)
    mean, std = _stats(config, source, indices["train"])
    return DetectionBundle(config=config, class_names=list(source.class_names), in_chans=3, img_size=config.img_size,
                           mean=tuple(mean), std=tuple(std), skipped=list(source.skipped), source=source,
                           indices=indices, boxes=[pixel_boxes(source, i) for i in range(len(source.images))],
                           hflip=True if config.hflip is None else config.hflip)
