"""A new user's path with a detector on a real photo set in YOLO layout (photos shipped in scikit-learn and
matplotlib, not drawn by the project): train, eval, export, predict and check through the `edgeres` command."""
import json
import sys

import pytest
from PIL import Image

from photo_set import OBJECTS, build_photo_set

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return build_photo_set(tmp_path_factory.mktemp("photos"))


def _edgeres(monkeypatch, capsys, *args) -> tuple[int, str]:
    from edgeres import cli

    monkeypatch.setattr(sys, "argv", ["edgeres", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr()
    return (e.value.code or 0), out.out + out.err


def test_photo_set_train_export_predict_check(photos, tmp_path, monkeypatch, capsys):
    run = lambda *a: _edgeres(monkeypatch, capsys, *a)  # noqa: E731
    ckpt = tmp_path / "ckpt"
    code, out = run("train", "--model", "test_yolo", "--data", photos, "--img-size", 96, "--epochs", 2,
                    "--batch-size", 8, "--out", ckpt)
    assert code == 0, out
    assert "mAP@0.5:0.95" in out and "Traceback" not in out
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["task"] == "detection" and meta["class_names"] == list(OBJECTS)
    assert len(meta["arch_kwargs"]["anchors"]) == 9  # fitted to these photos' boxes
    for name in ("detections_test.png", "pr_curve_test.png", "curves.png"):
        assert (ckpt / name).is_file(), name

    code, out = run("export", ckpt, "--to", "onnx,openvino", "--precision", "fp32", "--out", tmp_path / "exp")
    assert code == 0, out
    exported = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert exported["task"] == "detection" and exported["output_names"] == ["boxes", "scores"]
    onnx_file = next(a["file"] for a in exported["artifacts"] if a["backend"] == "onnxruntime")

    images = photos.parent / "images" / "val"
    code, out = run("predict", onnx_file, images, "--out", tmp_path / "pred")
    assert code == 0, out
    doc = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert doc["images"] == 8 and doc["task"] == "detection"
    for p in doc["predictions"]:
        with Image.open(images / p["file"]) as original, Image.open(tmp_path / "pred" / p["annotated"]) as drawn:
            assert drawn.size == original.size  # drawn on the user's own image, not the letterboxed input
        for d in p["detections"]:
            x1, y1, x2, y2 = d["box_xyxy"]
            assert 0 <= x1 <= x2 <= p["width"] and 0 <= y1 <= y2 <= p["height"] and d["score"] >= 0.25

    code, out = run("check", "--baseline", ckpt, "--candidate", onnx_file, "--max-drop", 0.5)
    assert code == 0, out
    assert "mAP@0.5:0.95 drop" in out and "mAP@0.5 drop" in out

    code, out = run("bench", ckpt, onnx_file, "--out", tmp_path / "bench", "--runs", 5, "--warmup", 1,
                    "--min-seconds", 0, "--budget", 5)
    assert code == 0, out
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    for a in results["artifacts"]:
        assert a["task"] == "detection" and a["latency"]["end_to_end"]["p50_ms"] > 0
        assert 0 <= a["metrics"]["map"] <= 1 and "map50" in a["metrics"]
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "mAP@0.5:0.95 %" in report and "Δ mAP (points)" in report
