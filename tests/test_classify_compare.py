"""The classification export comparator judges the shape of the logits over the batch (each row less its mean),
not per-sample cosines, which two-class models with low-margin samples swing between -1 and 1."""
from __future__ import annotations

import numpy as np

from edgeres.tasks.classify_compare import TOLERANCES, compare_outputs, judge

INT8 = TOLERANCES["int8"]


def _binary(n: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    margin = rng.normal(0, 2, n)  # many samples near the decision boundary, as in a trained binary model
    return np.stack([margin / 2, -margin / 2], 1).astype(np.float32)


def test_a_faithful_binary_int8_passes_though_per_sample_cosines_swing():
    reference = _binary()
    candidate = reference + np.random.default_rng(1).normal(0, 0.15, reference.shape).astype(np.float32)
    stats = compare_outputs(reference, candidate)
    assert stats["cosine_min"] < 0 and stats["cosine_mean"] < INT8.min_cosine  # what used to fail it
    assert stats["logit_cosine"] > 0.99 and stats["top1_agreement"] >= 0.9
    assert judge(stats, INT8) == []


def test_swapped_or_unrelated_logits_fail_on_the_logit_cosine():
    reference = _binary()
    swapped = judge(compare_outputs(reference, reference[:, ::-1]), INT8)
    assert any(r.startswith("logit cosine -") for r in swapped) and any("top-1" in r for r in swapped)
    rng = np.random.default_rng(2)
    ten = rng.normal(0, 3, (100, 10))
    unrelated = compare_outputs(ten, rng.normal(0, 3, (100, 10)))
    assert abs(unrelated["logit_cosine"]) < 0.2 and any("logit cosine" in r for r in judge(unrelated, INT8))


def test_a_shift_a_softmax_ignores_leaves_the_logit_cosine_at_one():
    reference = np.random.default_rng(3).normal(0, 3, (50, 10))
    shifted = reference + np.random.default_rng(4).normal(0, 5, (50, 1))  # a constant per row
    assert compare_outputs(reference, shifted)["logit_cosine"] > 0.999999
