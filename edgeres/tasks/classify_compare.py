"""The classification comparator: an exported model's logits against the source model's on the same inputs."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Union

import numpy as np

from edgeres.errors import UserInputError
from edgeres.tasks.base import nonfinite_reasons

LOGITS = "logits"  # the output every edgeres classifier names, in torch (EdgeModel.output_names) and in its exports
#: A runner's named outputs, or a classifier's logits themselves (a torch model's or an ONNX session's).
ClassifierOutputs = Union[Mapping[str, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """What an export must meet to count as valid. INT8 is judged on agreement, not on exact values."""

    max_abs_diff: float | None = 1e-3
    min_cosine: float = 0.999
    min_top1_agreement: float = 1.0
    # Deep nets with large logits differ by float rounding in proportion to their size: the abs limit
    # grows by this fraction of the largest reference logit.
    rel_diff: float = 1e-5


TOLERANCES = {
    "fp32": Tolerance(max_abs_diff=1e-3, min_cosine=0.99999, min_top1_agreement=1.0),
    "fp16": Tolerance(max_abs_diff=5e-2, min_cosine=0.999, min_top1_agreement=0.98),
    "int8": Tolerance(max_abs_diff=None, min_cosine=0.95, min_top1_agreement=0.9),
}
# An INT8 runtime judged against the fake-quantized torch model it came from (QAT). Integer kernels
# requantize unlike the float simulation (OpenVINO and ONNX Runtime agree with each other more than with
# it), so low-margin predictions flip: a broken export shows in the cosine, and top-1 agreement gets more
# room than TOLERANCES["int8"] gives.
QAT_TOLERANCE = Tolerance(max_abs_diff=None, min_cosine=0.95, min_top1_agreement=0.85)


def logits(outputs: ClassifierOutputs) -> np.ndarray:
    """A classifier's logits from a runner's named outputs (an array is taken as the logits already)."""
    if not isinstance(outputs, Mapping):
        return np.asarray(outputs)
    if LOGITS not in outputs:
        raise UserInputError(f"a classifier's outputs hold {LOGITS!r}; these are named {sorted(outputs)}")
    return np.asarray(outputs[LOGITS])


def compare_outputs(reference: ClassifierOutputs, candidate: ClassifierOutputs) -> dict[str, Any]:
    """Max abs diff, cosine similarity, top-1 agreement and NaN/inf counts of two models' logits.

    `logit_cosine`, which judge() limits, is the cosine of the two models' logits over the whole batch, each row
    less its mean: a softmax ignores that shift, and with two classes a sample's own pair of logits has one
    direction left, so per-sample cosines (`cosine_mean`, `cosine_min`, reported too) swing between -1 and 1 on
    the low-margin samples alone.
    Statistics over NaN or infinite values are not numbers: they are None, and judge() fails the pair.
    """
    reference, candidate = logits(reference), logits(candidate)
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    cand = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape}, candidate {cand.shape}")
    nonfinite = {"nonfinite_reference": int((~np.isfinite(ref)).sum()),
                 "nonfinite_candidate": int((~np.isfinite(cand)).sum())}
    if any(nonfinite.values()):
        return {"samples": int(len(ref)), **nonfinite, "max_abs_diff": None, "reference_max_abs": None,
                "mean_abs_diff": None, "cosine_min": None, "cosine_mean": None, "logit_cosine": None,
                "top1_agreement": None}
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.where(norms > 0, (ref * cand).sum(axis=1) / np.maximum(norms, 1e-30), 1.0)
    return {
        "samples": int(len(ref)),
        "max_abs_diff": float(np.abs(ref - cand).max()),
        "reference_max_abs": float(np.abs(ref).max()),
        "mean_abs_diff": float(np.abs(ref - cand).mean()),
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "logit_cosine": _cosine(ref - ref.mean(1, keepdims=True), cand - cand.mean(1, keepdims=True)),
        "top1_agreement": float((ref.argmax(1) == cand.argmax(1)).mean()),
        **nonfinite,
    }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The cosine of two arrays taken whole; two zero arrays agree (1), one zero array does not (0)."""
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float((a * b).sum() / norms)


def judge(stats: dict[str, Any], tolerance: Tolerance) -> list[str]:
    """Reasons the comparison fails `tolerance`; an empty list means it passes."""
    nonfinite = nonfinite_reasons(stats)  # an all-NaN model must not export as "ok"
    if nonfinite:
        return nonfinite
    reasons = []
    if tolerance.max_abs_diff is not None:
        limit = tolerance.max_abs_diff + tolerance.rel_diff * stats.get("reference_max_abs", 0.0)
        if stats["max_abs_diff"] > limit:
            reasons.append(f"max abs diff {stats['max_abs_diff']:.3g} > {limit:.3g}")
    cosine = stats.get("logit_cosine", stats["cosine_mean"])  # stats saved before logit_cosine existed
    if cosine < tolerance.min_cosine:
        reasons.append(f"logit cosine {cosine:.6f} < {tolerance.min_cosine}")
    if stats["top1_agreement"] < tolerance.min_top1_agreement:
        reasons.append(f"top-1 agreement {stats['top1_agreement']:.3f} < {tolerance.min_top1_agreement}")
    return reasons
