"""The gate on detectors: mAP changes with a paired bootstrap over images, per-class AP, JUnit and JSON."""
from __future__ import annotations

import contextlib
import io
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from edgeres.errors import UserInputError
from edgeres.evaluate.gate import GateConfig, check, check_rows, write_junit
from edgeres.tasks import get_task
from edgeres.tasks.detect_metrics import DetectionPredictions, ResampledAP, coco_eval, matching, mean_ap

NAMES = ["circle", "square", "triangle"]
TASK = get_task("detection")


def _scene(n: int = 60, seed: int = 0, miss: float = 0.1) -> DetectionPredictions:
    """n images of 1-4 objects; a detector that finds most with jittered boxes, misses some, and adds false
    positives. Scores are continuous, so no two detections tie."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(n):
        k = int(rng.integers(1, 5))
        xy, wh = rng.uniform(0, 180, (k, 2)), rng.uniform(12, 70, (k, 2))
        cls = rng.integers(0, len(NAMES), k)
        gts.append(np.c_[cls, xy, xy + wh].astype(np.float32))
        found = rng.random(k) > miss
        jitter = rng.normal(0, 0.08, (k, 4)) * np.c_[wh, wh]
        hits = np.c_[np.c_[xy, xy + wh] + jitter, rng.uniform(0.3, 1.0, k), cls][found]
        f = int(rng.integers(0, 4))
        fxy, fwh = rng.uniform(0, 180, (f, 2)), rng.uniform(12, 70, (f, 2))
        false = np.c_[fxy, fxy + fwh, rng.uniform(0.01, 0.7, f), rng.integers(0, len(NAMES), f)]
        dets.append(np.r_[hits, false].astype(np.float32))
    return DetectionPredictions(gts, dets)


def _drop_every_other(p: DetectionPredictions, cls: int | None = None) -> DetectionPredictions:
    """The same ground truth; every other detection (of class `cls`, or of any) removed."""
    out = []
    for d in p.dets:
        chosen = np.ones(len(d), bool) if cls is None else d[:, 5] == cls
        drop = np.zeros(len(d), bool)
        drop[np.flatnonzero(chosen)[::2]] = True
        out.append(d[~drop])
    return DetectionPredictions(p.gts, out)


def test_identical_detectors_pass_with_a_zero_interval():
    p = _scene()
    r = check(p, p, NAMES, GateConfig(max_class_drop=0.0), task=TASK)
    assert r.passed and r.reasons == [] and r.warnings == []
    assert [c.name for c in r.checks] == ["mAP@0.5:0.95 drop", "mAP@0.5 drop", "class AP@0.5:0.95 drop"]
    assert [m.delta_ci_points for m in r.metric_checks] == [(0.0, 0.0), (0.0, 0.0)]
    assert r.delta_points == 0.0 and r.task == "detection" and r.class_metric == "AP@0.5:0.95"
    assert r.baseline_accuracy is None and r.mcnemar_p is None  # classification's figures stay empty
    assert r.metric_checks[0].baseline == r.metric_checks[0].candidate > 0.3
    d = json.loads(json.dumps(r.to_dict()))
    assert [m["key"] for m in d["metric_checks"]] == ["map", "map50"]
    assert sum(c["support"] for c in d["per_class"]) == sum(len(g) for g in p.gts)


def test_missing_half_the_detections_fails_with_reasons():
    p = _scene()
    r = check(p, _drop_every_other(p), NAMES, GateConfig(n_boot=1000), task=TASK)
    assert not r.passed and len(r.reasons) == 2
    assert r.reasons[0].startswith("mAP@0.5:0.95 dropped") and r.reasons[1].startswith("mAP@0.5 dropped")
    assert all("> allowed 0.5" in reason for reason in r.reasons)
    for m in r.metric_checks:
        assert m.delta_points < -10 and m.delta_ci_points[0] <= m.delta_points <= m.delta_ci_points[1] < 0
    assert [row[3] for row in check_rows(r)[1]] == ["FAIL", "FAIL"]


def test_bootstrap_with_the_identity_resample_equals_pycocotools():
    p = _scene(n=40, seed=3)
    E = coco_eval(p.gts, p.dets, len(NAMES))
    standard = COCOeval(E.cocoGt, E.cocoDt, "bbox")  # pycocotools with its default parameters
    with contextlib.redirect_stdout(io.StringIO()):
        standard.evaluate()
        standard.accumulate()
        standard.summarize()
    resampled = ResampledAP(matching(E))
    identity = resampled.maps(np.ones((1, len(p)), np.int64))[0]
    assert identity[0] == standard.stats[0] and identity[1] == standard.stats[1]  # exactly
    np.testing.assert_array_equal(resampled.precision(np.ones((1, len(p))))[0],
                                  standard.eval["precision"][:, :, :, 0, -1])
    # any resample: the weighted curves equal pycocotools run on the resampled list of images
    rng = np.random.default_rng(0)
    for idx in rng.integers(0, len(p), (3, len(p))):
        idx = np.sort(idx)
        drawn = coco_eval([p.gts[i] for i in idx], [p.dets[i] for i in idx], len(NAMES)).eval["precision"]
        fast = resampled.maps(np.bincount(idx, minlength=len(p))[None])[0]
        assert fast == pytest.approx([mean_ap(drawn[..., 0, -1]), mean_ap(drawn[0, :, :, 0, -1])], abs=1e-12)


def test_interval_reflects_sampling_noise():
    p = _scene(n=80, seed=1)
    worse = _scene(n=80, seed=1, miss=0.2)  # same ground truth, a detector missing more
    r = check(p, worse, NAMES, GateConfig(max_drop=50.0, n_boot=500), task=TASK)
    for m in r.metric_checks:
        lo, hi = m.delta_ci_points
        assert lo < m.delta_points < hi and hi - lo > 1.0  # a real interval, around the point estimate


def test_per_class_ap_drop_fails_only_with_the_class_limit():
    p = _scene(seed=2)
    cand = _drop_every_other(p, cls=1)
    loose = check(p, cand, NAMES, GateConfig(max_drop=30.0, n_boot=200), task=TASK)
    assert loose.passed
    r = check(p, cand, NAMES, GateConfig(max_drop=30.0, max_class_drop=5.0, n_boot=200), task=TASK)
    assert not r.passed and len(r.reasons) == 1
    assert "AP@0.5:0.95 of class 'square' dropped" in r.reasons[0] and "boxes) > allowed 5" in r.reasons[0]
    circle, square, _ = r.per_class
    assert circle.delta_points == 0.0 and square.delta_points < -5.0
    assert square.support == sum(int((g[:, 0] == 1).sum()) for g in p.gts)


def test_junit_carries_the_detection_figures(tmp_path):
    p = _scene()
    r = check(p, _drop_every_other(p), NAMES, GateConfig(n_boot=200), task=TASK)
    suite = ET.parse(write_junit(r, tmp_path / "junit.xml")).getroot()
    props = {e.get("name"): e.get("value") for e in suite.iter("property")}
    assert {"n", "baseline_map", "candidate_map", "map_delta_points", "map50_ci_high_points"} <= set(props)
    assert float(props["baseline_map"]) == pytest.approx(r.metric_checks[0].baseline)
    assert suite.get("failures") == "2" and suite.get("tests") == "2"


def test_unpaired_predictions_are_refused():
    p = _scene(n=10)
    with pytest.raises(UserInputError, match="same test images"):
        check(p, DetectionPredictions(p.gts[:9], p.dets[:9]), NAMES, GateConfig(), task=TASK)
    with pytest.raises(UserInputError, match="ground truth differs on 2 of 10"):
        check(p, DetectionPredictions([p.gts[1], p.gts[0], *p.gts[2:]], p.dets), NAMES, GateConfig(), task=TASK)
    with pytest.raises(UserInputError, match="no test images"):
        check(DetectionPredictions([], []), DetectionPredictions([], []), NAMES, GateConfig(), task=TASK)
