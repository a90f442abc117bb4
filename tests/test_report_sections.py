"""The report's evaluation and explanation sections, and the Grad-CAM panel they show."""
import base64
import copy

import numpy as np
import pytest

from edgeres.explain import gradcam_panel
from edgeres.report.render import render_report
from edgeres.tasks.classify_metrics import classification_metrics, threshold_on_val
from test_report import RESULTS


@pytest.fixture(scope="module")
def panel(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("panel") / "gradcam.png"
    return out, gradcam_panel(tiny_checkpoint, out, n=6)


def test_gradcam_panel_spreads_over_classes_and_names_them(panel):
    out, drawn = panel
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(drawn["images"]) == 6
    assert len({t["true"] for t in drawn["images"]}) == 6  # digits: six different classes, one each
    assert all(t["predicted"] in [str(d) for d in range(10)] for t in drawn["images"])


def test_report_shows_evaluation_and_explanation_drift(panel, tmp_path):
    rng = np.random.default_rng(0)

    def split():
        y = rng.integers(0, 2, 80)
        s = np.clip(0.5 + 0.4 * (y - 0.5) + rng.normal(0, 0.2, 80), 0, 1)
        return classification_metrics(y, np.stack([1 - s, s], 1), ["benign", "malignant"])

    metrics = threshold_on_val({"test": split(), "val": split()})
    plots = tmp_path / "confusion_test.png"
    plots.write_bytes(panel[0].read_bytes())
    drift = {"name": "model.int8.xml", "window": 4, "stride": 2, "rank_correlation_mean": 0.9,
             "rank_correlation_min": 0.8, "top_iou_mean": 0.77, "top_iou_min": 0.7, "images": [{}] * 16}
    results = copy.deepcopy(RESULTS)
    results["evaluation"] = {"name": "the trained checkpoint", "task": "classification", "metrics": metrics["test"],
                             "plots": [str(plots), str(tmp_path / "missing.png")]}
    results["explanations"] = {"baseline": "the checkpoint", "panel": str(panel[0]), "drift": [drift]}
    written = render_report(results, tmp_path / "report")
    md = written["report.md"].read_text()
    assert "the trained checkpoint on the test split" in md
    point = metrics["test"]["binary"]["operating_point"]
    assert f"sensitivity {100 * point['sensitivity']:.1f}%" in md
    assert "| malignant |" in md and "recall %" in md
    assert "| model.int8.xml | 0.100 | 0.900 | 0.800 | 0.770 | 0.700 |" in md
    assert "(plots/gradcam_panel.png)" in md and (tmp_path / "report" / "plots" / "gradcam_panel.png").is_file()
    html = written["report.html"].read_text()
    assert base64.b64encode(panel[0].read_bytes()).decode() in html  # embedded, not linked
    assert "missing.png" not in md  # a plot that is not there is left out, not linked


def test_a_detectors_per_class_list_renders(tmp_path):
    per_class = [{"name": "round", "ap": 0.5, "ap50": 0.8, "precision": 0.9, "recall": 0.7, "support": 12},
                 {"name": "ring", "ap": None, "ap50": None, "precision": 0.0, "recall": 0.0, "support": 0}]
    metrics = {"n": 5, "map": 0.5, "map50": 0.8, "map75": 0.4, "precision": 0.9, "recall": 0.7, "per_class": per_class}
    results = copy.deepcopy(RESULTS)
    results["evaluation"] = {"name": "yolo", "task": "detection", "metrics": metrics, "plots": [],
                             "reference": {"name": "yolov3_darknet53", "params": 61_949_149}}
    md = render_report(results, tmp_path)["report.md"].read_text()
    assert "| yolov3_darknet53 | 61,949,149 | 247.8 |" in md
    assert "| model.onnx | 11,200,000 (18.1%) | 44.6 (file) |" in md
    assert "| round | 90.0 | 70.0 | 80.0 | 50.0 | 12 |" in md and "| ring | 0.0 | 0.0 | – | – | 0 |" in md
