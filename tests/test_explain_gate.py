"""`edgeres check --max-explanation-drift`: the gate's explanation condition, on a model that learnt something."""
import json

import pytest
import torch

from edgeres.checkpoint import load_checkpoint, save_checkpoint
from edgeres.evaluate.gate import GateConfig, check
from edgeres.errors import UserInputError


def test_a_checkpoint_against_itself_passes_the_drift_limit(edgeres, tiny_checkpoint, tmp_path):
    code, text = edgeres("check", "--baseline", tiny_checkpoint, "--candidate", tiny_checkpoint,
                         "--max-explanation-drift", "0.01", "--explanation-images", "4", "--json", tmp_path / "g.json")
    assert code == 0, text
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["explanation_drift"]["rank_correlation_mean"] == pytest.approx(1.0)
    assert len(result["explanation_drift"]["images"]) == 4
    assert [c["passed"] for c in result["checks"] if c["name"] == "explanation drift"] == [True]


def test_re_initialised_weights_fail_the_drift_limit_with_exit_1(edgeres, tiny_checkpoint, tmp_path):
    model, meta = load_checkpoint(tiny_checkpoint)
    torch.manual_seed(7)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    save_checkpoint(model, meta, tmp_path / "random")
    code, text = edgeres("check", "--baseline", tiny_checkpoint, "--candidate", tmp_path / "random",
                         "--allow-unrelated", "--max-explanation-drift", "0.3", "--explanation-images", "4",
                         "--json", tmp_path / "g.json")
    assert code == 1, text
    assert "explanation drift" in text
    result = json.loads((tmp_path / "g.json").read_text())
    drift = [c for c in result["checks"] if c["name"] == "explanation drift"]
    assert [c["passed"] for c in drift] == [False]
    assert 1 - result["explanation_drift"]["rank_correlation_mean"] > 0.3


def test_a_drift_limit_without_a_measurement_is_refused():
    import numpy as np

    from edgeres.tasks.classify import Predictions

    p = Predictions(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]))
    with pytest.raises(UserInputError, match="no explanation drift"):
        check(p, p, ["a", "b"], GateConfig(max_explanation_drift=0.2))
    with pytest.raises(UserInputError, match="max_explanation_drift"):
        GateConfig(max_explanation_drift=-1)
