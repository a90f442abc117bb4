"""Explanation drift: does a compressed or exported model still look where its baseline looked?

Accuracy can survive pruning or INT8 while the evidence behind it moves (a model that now reads the watermark
instead of the object). `explanation_drift` maps the same images with occlusion through both artifacts' own
Runners, the baseline's predicted class (or top detection) as the target of both, and compares the maps:

- rank correlation (Spearman) of all pixels: 1 when both order the image's regions alike, near 0 when unrelated;
- IoU of the top-20% regions: whether the most important fifth of the image is the same pixels.

For a gate, compare the mean (typical images) and the minimum (the worst image) with thresholds; a model against
itself gives 1 and 1, a model against the same architecture with random weights gives far less (the
randomisation check of Adebayo et al., 2018, which tests/test_explain.py runs).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.stats import spearmanr

from edgeres.errors import UserInputError
from edgeres.explain.explainer import Explainer, image_files, prepare_images

#: The share of pixels counted as a map's most important region.
TOP_FRACTION = 0.2
DEFAULT_IMAGES = 16


@dataclasses.dataclass(frozen=True)
class Agreement:
    """How alike two saliency maps of one image are."""

    rank_correlation: float  # Spearman's rho over pixels, -1..1
    top_iou: float           # IoU of the two maps' top-TOP_FRACTION pixels, 0..1


@dataclasses.dataclass(frozen=True)
class ImageDrift:
    image: str
    class_id: int
    rank_correlation: float
    top_iou: float


@dataclasses.dataclass(frozen=True)
class DriftResult:
    """Per-image agreement of the candidate's maps with the baseline's, and its mean and minimum."""

    baseline: str
    candidate: str
    window: int
    stride: int
    images: list[ImageDrift]

    @property
    def rank_correlation_mean(self) -> float:
        return float(np.mean([i.rank_correlation for i in self.images]))

    @property
    def rank_correlation_min(self) -> float:
        return float(np.min([i.rank_correlation for i in self.images]))

    @property
    def top_iou_mean(self) -> float:
        return float(np.mean([i.top_iou for i in self.images]))

    @property
    def top_iou_min(self) -> float:
        return float(np.min([i.top_iou for i in self.images]))

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "candidate": self.candidate, "method": "occlusion",
                "window": self.window, "stride": self.stride, "top_fraction": TOP_FRACTION,
                "rank_correlation_mean": self.rank_correlation_mean, "rank_correlation_min": self.rank_correlation_min,
                "top_iou_mean": self.top_iou_mean, "top_iou_min": self.top_iou_min,
                "images": [dataclasses.asdict(i) for i in self.images]}


def saliency_agreement(map_a: np.ndarray, map_b: np.ndarray) -> Agreement:
    """Spearman rank correlation of two maps' pixels and the IoU of their top-20% regions.

    A constant map ranks nothing: it agrees fully with another constant map and not at all (0) with any other.
    """
    a, b = np.asarray(map_a, np.float64).ravel(), np.asarray(map_b, np.float64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise UserInputError(f"saliency maps must have one shape, got {np.shape(map_a)} and {np.shape(map_b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise UserInputError("a saliency map holds NaN or infinite values; the model's outputs are not finite")
    flat_a, flat_b = np.ptp(a) == 0, np.ptp(b) == 0
    if flat_a or flat_b:
        same = float(flat_a and flat_b)
        return Agreement(same, same)
    rho = float(spearmanr(a, b).statistic)
    k = max(1, math.ceil(TOP_FRACTION * a.size))
    # Stable order: tied pixels enter the top region in index order, so equal maps give equal regions.
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    return Agreement(rho, len(top_a & top_b) / len(top_a | top_b))


def explanation_drift(baseline: str | Path, candidate: str | Path, images: Any = None, n: int = DEFAULT_IMAGES,
                      window: int | None = None, stride: int | None = None, data: str | None = None,
                      batch_size: int = 64) -> DriftResult:
    """Occlusion maps of `baseline` and `candidate` (any artifacts of one model) on the same images, compared.

    images: image files or folders (a path or a list of them); a data bundle (`edgeres.evaluate.load_task_data`),
        whose test split is used; or None: the test split of the baseline's own data (`data` overrides it).
    n: at most this many images (the first, in order).
    window, stride: occlusion's patch and step in input pixels (default: relative to the input size).
    """
    return explanation_drifts(baseline, [candidate], images, n, window, stride, data, batch_size)[0]


def explanation_drifts(baseline: str | Path, candidates: Sequence[str | Path], images: Any = None,
                       n: int = DEFAULT_IMAGES, window: int | None = None, stride: int | None = None,
                       data: str | None = None, batch_size: int = 64) -> list[DriftResult]:
    """`explanation_drift` of several candidates against one baseline, whose maps are computed once."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserInputError(f"n (images to compare) must be a positive integer, got {n!r}")
    base = Explainer(baseline, "occlusion", window, stride, batch_size=batch_size)
    reference = []  # (name, input, target, the baseline's map) per image
    for name, x in _inputs(base, images, n, data):
        target = base.choose(x)
        reference.append((name, x, target, base.explain(x, target).saliency))
    results = []
    for candidate in candidates:
        cand = Explainer(candidate, "occlusion", batch_size=batch_size)
        if tuple(cand.meta.input_shape) != tuple(base.meta.input_shape):
            raise UserInputError(f"{candidate} takes inputs of shape {cand.meta.input_shape} but {baseline} takes "
                                 f"{base.meta.input_shape}; explanation drift compares two artifacts of one model")
        cand.window, cand.stride = base.window, base.stride  # one set of windows, or the maps would not compare
        per_image = []
        for name, x, target, base_map in reference:
            agreement = saliency_agreement(base_map, cand.explain(x, target).saliency)
            per_image.append(ImageDrift(name, target.class_id, agreement.rank_correlation, agreement.top_iou))
        results.append(DriftResult(str(baseline), str(candidate), base.window, base.stride, per_image))
    return results


def _inputs(base: Explainer, images: Any, n: int, data: str | None) -> list[tuple[str, np.ndarray]]:
    """(name, prepared input) pairs: the first `n` of the images or of a bundle's test split."""
    if images is None or hasattr(images, "batches"):
        from edgeres.evaluate import load_task_data

        bundle = load_task_data(base.meta, data) if images is None else images
        batch = next(bundle.batches("test", n, limit=n), None)
        if batch is None:
            raise UserInputError("the data's test split holds no images to compare explanations on")
        return [(f"test[{i}]", np.ascontiguousarray(x, np.float32)) for i, x in enumerate(batch[0])]
    paths: Sequence[str | Path] = [images] if isinstance(images, (str, Path)) else list(images)
    return prepare_images(image_files(paths)[:n], base.meta)
