"""Latency-aware pruning: a roofline latency budget, and channels ranked per unit of latency they cost."""
from __future__ import annotations

import copy

import pytest
import torch

from edgeres.compress.prune import PruneConfig, _per_latency, estimated_latency, prune
from edgeres.errors import UserInputError
from edgeres.models import create

SHAPE = (3, 32, 32)
# A roofline where moving bytes is slow: wide late layers (many weights, few positions) dominate.
MEMORY_BOUND = {"ops_per_s": 1e13, "bytes_per_s": 1e8, "overhead_s": 1e-6, "element_bytes": 1}


def _model():
    torch.manual_seed(0)
    return create("resnet18", num_classes=10).eval()


def test_latency_target_needs_a_valid_roofline():
    with pytest.raises(UserInputError, match="roofline"):
        PruneConfig(target="latency", amount=0.5)
    with pytest.raises(UserInputError, match="roofline"):
        PruneConfig(target="macs", amount=0.5, roofline=MEMORY_BOUND)
    with pytest.raises(UserInputError, match="positive numbers"):
        PruneConfig(target="latency", amount=0.5, roofline={**MEMORY_BOUND, "bytes_per_s": 0})


@pytest.mark.parametrize("global_pruning", [False, True])
def test_latency_target_is_met_on_the_roofline(global_pruning):
    model = _model()
    before = estimated_latency(model, SHAPE, MEMORY_BOUND)
    report = prune(model, SHAPE, PruneConfig(target="latency", amount=0.4, round_to=8,
                                             global_pruning=global_pruning, roofline=MEMORY_BOUND))
    after = estimated_latency(model, SHAPE, MEMORY_BOUND)
    assert after <= 0.4 * before + 1e-12
    assert report.achieved == pytest.approx(after / before)
    assert report.achieved > 0.25  # the smallest ratio that meets the budget, not an overshoot
    model(torch.zeros(1, *SHAPE))  # still a working network


def test_latency_aware_ranking_keeps_more_channels_within_the_same_budget():
    """Removing the channels that cost most latency first, the global latency-aware plan meets the same
    roofline budget as the uniform one while keeping more channels (more of the network's capacity)."""
    def kept(model):
        return sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))

    uniform, aware = _model(), _model()
    for model, global_pruning in ((uniform, False), (aware, True)):
        r = prune(model, SHAPE, PruneConfig(target="latency", amount=0.4, global_pruning=global_pruning,
                                            round_to=8, roofline=MEMORY_BOUND))
        assert r.achieved <= 0.4
    assert kept(aware) > 1.05 * kept(uniform)  # measured: 3360 against 3000


def test_per_latency_divides_importance_by_relative_saving():
    class Cost:  # removing a channel of "a" saves 3 units, of "b" 1 unit (mean 2)
        def __call__(self, plan):
            return 10.0 - {"a": 3.0, "b": 1.0}.get(next(iter(plan), ""), 0.0)

    scores = [("a", torch.ones(4), 1), ("b", torch.ones(4), 1)]
    weighted = dict((name, imp) for name, imp, _ in _per_latency(copy.deepcopy(scores), Cost()))
    assert torch.allclose(weighted["a"], torch.full((4,), 2 / 3))
    assert torch.allclose(weighted["b"], torch.full((4,), 2.0))
