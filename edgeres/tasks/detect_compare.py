"""The detection comparator: an exported detector's detections against the source model's on the same inputs.

Detections are compared after postprocess, as users see them: each reference detection at the predict
confidence looks for an unmatched candidate detection of its class (IoU >= 0.5, greedy by score), and the
other way round. A detection near the confidence threshold may score just under it on the other side, so the
side being searched keeps detections down to half the threshold: a 0.26 against a 0.24 is a match, not a miss.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgeres.tasks.base import nonfinite_reasons

MATCH_IOU = 0.5
CONF = 0.25  # the confidence `predict` draws at: the detections users see
POOL_CONF = CONF / 2


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """What an exported detector must meet. INT8 is judged on matched detections, not on exact scores."""

    min_matched: float  # fraction of detections the other side has too, each way
    min_mean_iou: float  # of matched detections
    max_score_diff: float | None  # largest |score difference| of a matched pair
    max_raw_score_diff: float | None  # largest |difference| of the raw per-class scores, when both give them


TOLERANCES = {
    "fp32": Tolerance(min_matched=0.99, min_mean_iou=0.99, max_score_diff=0.01, max_raw_score_diff=1e-3),
    "fp16": Tolerance(min_matched=0.95, min_mean_iou=0.95, max_score_diff=0.05, max_raw_score_diff=0.02),
    "int8": Tolerance(min_matched=0.8, min_mean_iou=0.85, max_score_diff=None, max_raw_score_diff=None),
}
# An INT8 runtime against the fake-quantized model it came from (QAT): integer kernels requantize unlike the
# float simulation, so near-threshold detections come and go a little more than TOLERANCES["int8"] allows.
QAT_TOLERANCE = Tolerance(min_matched=0.75, min_mean_iou=0.8, max_score_diff=None, max_raw_score_diff=None)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes (numpy: export validation runs where torch may not be installed)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match(query: np.ndarray, pool: np.ndarray, iou: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """Greedy by query score: each query detection takes the unmatched pool detection of its class with the
    highest IoU >= `iou`. Returns (query row, pool row, IoU) per match."""
    if len(query) == 0 or len(pool) == 0:
        return []
    ious = _iou(query[:, :4], pool[:, :4])
    ious[query[:, 5][:, None] != pool[:, 5][None, :]] = -1.0
    taken = np.zeros(len(pool), bool)
    pairs = []
    for q in np.argsort(-query[:, 4], kind="stable"):
        row = np.where(taken, -1.0, ious[q])
        p = int(row.argmax())
        if row[p] >= iou:
            taken[p] = True
            pairs.append((int(q), p, float(row[p])))
    return pairs


def compare_detections(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, Any]:
    """Agreement of two models' detections per image (each (k, 6) `[x1, y1, x2, y2, score, class]`, kept down
    to POOL_CONF): the fraction of each side's detections at CONF the other side has, and the matched pairs'
    IoU and score differences."""
    if len(reference) != len(candidate):
        raise ValueError(f"reference has {len(reference)} images, candidate {len(candidate)}")
    found = {"reference": 0, "candidate": 0}
    counts = {"reference": 0, "candidate": 0}
    ious, score_diffs = [], []
    for ref, cand in zip(reference, candidate):
        for side, query, pool in (("reference", ref, cand), ("candidate", cand, ref)):
            shown = query[query[:, 4] >= CONF]
            pairs = match(shown, pool)
            counts[side] += len(shown)
            found[side] += len(pairs)
            if side == "reference":
                ious += [iou for _, _, iou in pairs]
                score_diffs += [abs(float(shown[q, 4] - pool[p, 4])) for q, p, _ in pairs]
    return {
        "images": len(reference),
        "reference_detections": counts["reference"], "candidate_detections": counts["candidate"],
        "matched": len(ious),
        # nothing to find counts as all found: an empty pair of outputs agrees
        "reference_found": found["reference"] / counts["reference"] if counts["reference"] else 1.0,
        "candidate_found": found["candidate"] / counts["candidate"] if counts["candidate"] else 1.0,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "min_iou": float(np.min(ious)) if ious else None,
        "max_score_diff": float(np.max(score_diffs)) if score_diffs else None,
        "mean_score_diff": float(np.mean(score_diffs)) if score_diffs else None,
        "conf": CONF, "iou": MATCH_IOU,
    }


def judge(stats: dict[str, Any], tolerance: Tolerance) -> list[str]:
    """Reasons the comparison fails `tolerance`; an empty list means it passes."""
    nonfinite = nonfinite_reasons(stats)
    if nonfinite:
        return nonfinite
    reasons = []
    for side, who, other in (("reference", "reference (PyTorch)", "exported"),
                             ("candidate", "exported", "reference (PyTorch)")):
        if stats[f"{side}_found"] < tolerance.min_matched:
            reasons.append(f"{stats[f'{side}_found']:.1%} of the {stats[f'{side}_detections']} {who} detections "
                           f"(conf >= {stats['conf']}) have a match among the {other} ones (same class, IoU >= "
                           f"{stats['iou']}) < {tolerance.min_matched:.0%}")
    if stats["mean_iou"] is not None and stats["mean_iou"] < tolerance.min_mean_iou:
        reasons.append(f"mean IoU of matched detections {stats['mean_iou']:.4f} < {tolerance.min_mean_iou}")
    if tolerance.max_score_diff is not None and stats["max_score_diff"] is not None \
            and stats["max_score_diff"] > tolerance.max_score_diff:
        reasons.append(f"max score difference of matched detections {stats['max_score_diff']:.3g} > "
                       f"{tolerance.max_score_diff}")
    raw = stats.get("raw_score_max_abs_diff")
    if tolerance.max_raw_score_diff is not None and raw is not None and raw > tolerance.max_raw_score_diff:
        reasons.append(f"max abs diff of raw class scores {raw:.3g} > {tolerance.max_raw_score_diff}")
    return reasons
