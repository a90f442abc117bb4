import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from edgeres.errors import UserInputError
from edgeres.tasks.classify import Predictions
from edgeres.evaluate.gate import (GateConfig, bootstrap_delta_ci, check, check_rows, format_table,
                                   mcnemar_exact, write_junit)

K = 4
NAMES = ["ant", "bee", "cat", "dog"]


def _preds(labels: np.ndarray, correct: np.ndarray, k: int = K) -> Predictions:
    """Predictions that are right exactly where `correct` is True (wrong ones pick the next class)."""
    probs = np.full((len(labels), k), 0.1 / k)
    chosen = np.where(correct, labels, (labels + 1) % k)
    probs[np.arange(len(labels)), chosen] = 0.9
    return Predictions(labels, probs)


def _pair(n: int = 400, acc: float = 0.9, newly_wrong: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    right_b = rng.random(n) < acc
    right_c = right_b.copy()
    right_c[np.flatnonzero(right_b)[:newly_wrong]] = False
    return labels, right_b, right_c


def test_identical_predictions_pass_with_zero_delta():
    labels, right_b, _ = _pair()
    p = _preds(labels, right_b)
    r = check(p, p, NAMES, GateConfig(max_class_drop=0.0))
    assert r.passed and r.reasons == [] and r.warnings == []
    assert r.delta_points == 0.0 and r.delta_ci_points == (0.0, 0.0)
    assert r.mcnemar_p == 1.0 and (r.mcnemar_b, r.mcnemar_c) == (0, 0)
    assert all(c.delta_points == 0.0 for c in r.per_class)


def test_twenty_more_wrong_fails_with_reason():
    labels, right_b, right_c = _pair(newly_wrong=20)
    r = check(_preds(labels, right_b), _preds(labels, right_c), NAMES, GateConfig())
    assert not r.passed
    assert r.delta_points == pytest.approx(-5.0)
    assert (r.mcnemar_b, r.mcnemar_c) == (20, 0)
    assert r.delta_ci_points[1] < 0  # the whole interval is a drop
    assert len(r.reasons) == 1 and r.reasons[0].startswith("accuracy dropped 5.0 points (95% CI")
    assert "> allowed 0.5" in r.reasons[0]
    json.dumps(r.to_dict())  # results.json embeds it


def test_small_drop_within_limit_passes_but_warns_when_ci_is_wide():
    labels, right_b, right_c = _pair(n=200, newly_wrong=1)
    r = check(_preds(labels, right_b), _preds(labels, right_c), NAMES, GateConfig(max_drop=0.5))
    assert r.passed and r.delta_points == pytest.approx(-0.5)
    assert r.delta_ci_points[0] < -0.5
    assert any("cannot rule out" in w for w in r.warnings)


def test_bootstrap_ci_covers_true_delta_and_narrows_with_more_images():
    # Population: baseline right 90%; candidate loses 6% and gains 2% of images -> true delta -4 points.
    def draw(n, rng):
        u = rng.random(n)
        right_b = rng.random(n) < 0.9
        right_c = right_b.copy()
        right_c[right_b & (u < 0.06 / 0.9)] = False
        right_c[~right_b & (u < 0.02 / 0.1)] = True
        return right_b, right_c

    rng = np.random.default_rng(1)
    trials = [bootstrap_delta_ci(*draw(200, rng), n_boot=1000, seed=i) for i in range(100)]
    coverage = np.mean([lo <= -4.0 <= hi for lo, hi in trials])
    assert 0.88 <= coverage <= 1.0
    small = bootstrap_delta_ci(*draw(200, rng))
    large = bootstrap_delta_ci(*draw(3200, rng))
    assert large[0] <= -4.0 <= large[1]
    assert (large[1] - large[0]) < 0.5 * (small[1] - small[0])  # ~1/sqrt(16) in theory


def test_bootstrap_is_deterministic_by_seed():
    _, right_b, right_c = _pair(newly_wrong=10)
    assert bootstrap_delta_ci(right_b, right_c, seed=3) == bootstrap_delta_ci(right_b, right_c, seed=3)
    assert bootstrap_delta_ci(right_b, right_c, seed=3) != bootstrap_delta_ci(right_b, right_c, seed=4)


def test_mcnemar_matches_hand_computed_binomial():
    # b=1, c=5: P(X<=1 | n=6, p=1/2) = (1 + 6) / 64; two-sided doubles it.
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)
    assert mcnemar_exact(3, 3) == pytest.approx(1.0)
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    right_b = np.array([1, 0, 0, 0, 0, 0, 1, 1], bool)  # b = 1 (index 0)
    right_c = np.array([0, 1, 1, 1, 1, 1, 1, 1], bool)  # c = 5 (indices 1-5)
    r = check(_preds(labels, right_b), _preds(labels, right_c), NAMES, GateConfig(n_boot=200))
    assert (r.mcnemar_b, r.mcnemar_c) == (1, 5) and r.mcnemar_p == pytest.approx(14 / 64)


def test_per_class_collapse_fails_only_with_class_limit():
    # 20 classes; class 7 has 4 of 400 images. Its recall goes to 0: a 1-point mean drop.
    k, n = 20, 400
    labels = np.concatenate([np.full(4, 7), np.random.default_rng(0).choice([c for c in range(k) if c != 7], n - 4)])
    right_b = np.ones(n, bool)
    right_c = labels != 7
    names = [f"c{i}" for i in range(k)]
    base, cand = _preds(labels, right_b, k), _preds(labels, right_c, k)
    assert check(base, cand, names, GateConfig(max_drop=2.0)).passed
    r = check(base, cand, names, GateConfig(max_drop=2.0, max_class_drop=50.0))
    assert not r.passed and r.delta_points == pytest.approx(-1.0)
    assert len(r.reasons) == 1 and "'c7' dropped 100.0 points" in r.reasons[0]
    c7 = r.per_class[7]
    assert (c7.support, c7.baseline, c7.candidate, c7.delta_points) == (4, 1.0, 0.0, -100.0)


def test_latency_and_size_limits():
    labels, right_b, _ = _pair()
    p = _preds(labels, right_b)
    cfg = GateConfig(max_latency_ms=10.0, max_size_mb=5.0)
    assert check(p, p, NAMES, cfg, candidate_latency_ms=10.0, candidate_size_mb=4.9).passed  # at the limit
    r = check(p, p, NAMES, cfg, candidate_latency_ms=12.5, candidate_size_mb=6.0)
    assert not r.passed and len(r.reasons) == 2
    assert r.reasons[0] == "latency 12.50 ms > allowed 10 ms" and r.reasons[1].startswith("size 6.00 MB")
    with pytest.raises(UserInputError, match="max_latency_ms"):
        check(p, p, NAMES, cfg, candidate_size_mb=1.0)


def test_mismatched_inputs_are_refused():
    labels, right_b, _ = _pair(n=100)
    p = _preds(labels, right_b)
    shorter = _preds(labels[:99], right_b[:99])
    with pytest.raises(UserInputError, match="same test images"):
        check(p, shorter, NAMES, GateConfig())
    shuffled = _preds(labels[::-1].copy(), right_b)
    with pytest.raises(UserInputError, match="labels differ"):
        check(p, shuffled, NAMES, GateConfig())
    with pytest.raises(UserInputError, match="probabilities"):
        check(p, p, NAMES[:3], GateConfig())


@pytest.mark.parametrize("field,value", [("max_drop", -1.0), ("max_class_drop", float("nan")),
                                         ("confidence", 1.0), ("n_boot", 10), ("seed", -1), ("max_size_mb", "5")])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(UserInputError, match=field):
        GateConfig(**{field: value})


@pytest.mark.parametrize("field,value,message", [
    ("max_latency_ms", 0.0, "max_latency_ms (--max-latency-ms) must be None or a number > 0, got 0.0"),
    ("max_size_mb", 0.0, "max_size_mb (--max-size-mb) must be None or a number > 0, got 0.0"),
    ("max_drop", -1.0, "max_drop (--max-drop) must be a number >= 0, got -1.0"),
    ("n_boot", 10, "n_boot must be an integer >= 100, got 10")])  # a recipe-only field names no option
def test_limits_no_candidate_can_meet_are_bad_input_named_as_the_user_gives_them(field, value, message):
    with pytest.raises(UserInputError) as info:
        GateConfig(**{field: value})
    assert str(info.value) == message


def test_cli_check_refuses_a_zero_latency_limit_before_loading_anything(edgeres, tmp_path):
    code, out = edgeres("check", "--baseline", tmp_path / "a", "--candidate", tmp_path / "b.onnx",
                        "--max-latency-ms", 0, "--json", tmp_path / "j.json")
    assert code == 2 and "max_latency_ms (--max-latency-ms) must be None or a number > 0" in out
    assert not (tmp_path / "j.json").exists()


def test_junit_xml_counts_and_table(tmp_path):
    labels, right_b, right_c = _pair(newly_wrong=20)
    cfg = GateConfig(max_class_drop=50.0, max_latency_ms=10.0, max_size_mb=5.0)
    r = check(_preds(labels, right_b), _preds(labels, right_c), NAMES, cfg,
              candidate_latency_ms=20.0, candidate_size_mb=1.0)
    path = write_junit(r, tmp_path / "junit.xml")
    suite = ET.parse(path).getroot()
    assert suite.tag == "testsuite" and suite.get("name") == "edgeres.check"
    cases = suite.findall("testcase")
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert len(cases) == int(suite.get("tests")) == 4
    assert failed == {"accuracy drop", "latency"} and suite.get("failures") == "2"
    assert "accuracy dropped" in suite.find("testcase/failure").get("message")
    columns, rows = check_rows(r)
    assert columns == ["check", "limit", "measured", "verdict"]
    assert [row[3] for row in rows] == ["FAIL", "pass", "FAIL", "pass"]
    assert check_rows(r.to_dict()) == (columns, rows)
    assert format_table(r).count("\n") == len(rows) + 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_result_dict_round_trips_config():
    labels, right_b, _ = _pair(n=50)
    p = _preds(labels, right_b)
    d = check(p, p, NAMES, GateConfig(seed=7)).to_dict()
    assert GateConfig(**d["config"]) == GateConfig(seed=7)
