"""Detection task: postprocess (host and in-graph NMS), collect, COCO metrics, export comparator, plots."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from torchvision.ops import nms

from edgeres.errors import UserInputError
from edgeres.tasks import get_task
from edgeres.tasks.detect_compare import TOLERANCES
from edgeres.tasks.detect_metrics import CONVENTION, DetectionPredictions, detection_metrics

NAMES = ["circle", "square", "triangle"]
TASK = get_task("detection")


def _gt(*rows) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, 5)


def _det(*rows) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, 6)


def _perfect(gts: list[np.ndarray], score: float = 0.9) -> list[np.ndarray]:
    return [np.c_[g[:, 1:5], np.full(len(g), score), g[:, 0]].astype(np.float32) for g in gts]


GTS = [_gt([0, 10, 10, 60, 60], [1, 100, 100, 180, 150]), _gt([2, 5, 5, 40, 90]), _gt([0, 120, 20, 200, 100])]


def test_perfect_detections_score_one():
    m = detection_metrics(DetectionPredictions(GTS, _perfect(GTS)), NAMES)
    # pycocotools divides by tp + fp + eps: a perfect AP is 1 - 2e-16
    assert [m["map"], m["map50"], m["map75"], m["precision"], m["recall"]] == pytest.approx([1.0] * 5, abs=1e-12)
    assert m["convention"] == CONVENTION and m["n"] == 3 and m["conf_threshold"] == 0.25
    assert [c["ap"] for c in m["per_class"]] == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    assert [c["support"] for c in m["per_class"]] == [2, 1, 1]
    assert len(m["pr_curve"]["recall"]) == 101 and m["pr_curve"]["all"] == [1.0] * 101  # rounded to 4 digits


def test_shifted_boxes_pass_at_iou_half_and_fail_at_three_quarters():
    # A 100 px square shifted by 23 px overlaps with IoU 77/123 = 0.626: a match at IoU 0.5, 0.55, 0.6 only.
    gts = [_gt([0, 0, 0, 100, 100]), _gt([1, 50, 50, 150, 150])]
    dets = [_det([23, 0, 123, 100, 0.8, 0]), _det([73, 50, 173, 150, 0.7, 1])]
    m = detection_metrics(DetectionPredictions(gts, dets), NAMES)
    assert m["map50"] == pytest.approx(1.0) and m["map75"] == 0.0
    assert m["map"] == pytest.approx(0.3)
    assert m["per_class"][2]["ap"] is None and m["per_class"][2]["support"] == 0  # no triangle: not in the mean


def test_empty_cases_give_zero_not_a_crash():
    no_boxes = [_gt(), _gt()]
    m = detection_metrics(DetectionPredictions(no_boxes, [_det(), _det()]), NAMES)
    assert (m["map"], m["map50"], m["precision"], m["recall"]) == (0.0, 0.0, 0.0, 0.0)
    m = detection_metrics(DetectionPredictions(GTS, [_det()] * 3), NAMES)
    assert (m["map"], m["map50"], m["recall"], m["detections"]) == (0.0, 0.0, 0.0, 0)
    # a background image with a confident false positive costs precision, not recall
    m = detection_metrics(DetectionPredictions([*GTS, _gt()], [*_perfect(GTS), _det([0, 0, 30, 30, 0.95, 0])]),
                          NAMES)
    assert m["recall"] == 1.0 and m["precision"] == pytest.approx(4 / 5)
    assert m["per_class"][0]["ap"] < 0.9 and m["per_class"][1]["ap"] == pytest.approx(1.0)


def test_per_class_ap_and_precision_recall_at_the_confidence():
    gts = [_gt([0, 0, 0, 50, 50], [1, 60, 60, 120, 120]), _gt([0, 10, 10, 70, 70], [1, 100, 0, 150, 40])]
    dets = [_det([0, 0, 50, 50, 0.9, 0], [60, 60, 120, 120, 0.8, 2]),  # the square called a triangle
            _det([10, 10, 70, 70, 0.1, 0], [100, 0, 150, 40, 0.6, 1])]  # a true circle under conf 0.25
    m = detection_metrics(DetectionPredictions(gts, dets), NAMES)
    circle, square, triangle = m["per_class"]
    assert circle["ap"] == pytest.approx(1.0)
    assert square["ap50"] == pytest.approx(0.5, abs=0.01)  # one of two squares found
    assert triangle["ap"] is None and triangle["precision"] == 0.0
    assert m["map"] == pytest.approx((circle["ap"] + square["ap"]) / 2)
    # conf >= 0.25 keeps 3 detections, 2 of them right, of 4 true boxes
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 4)
    assert (circle["recall"], square["recall"]) == (0.5, 0.5)


def _raw(seed: int = 0, n: int = 2, objects: int = 4, c: int = 3) -> dict[str, np.ndarray]:
    """Decoded boxes and per-class scores as a YOLO graph gives them: for each object six overlapping boxes
    scoring for its class, plus faint background boxes."""
    rng = np.random.default_rng(seed)
    k = objects * 6 + 10
    centres = np.concatenate([rng.uniform(40, 200, (n, objects, 2)).repeat(6, axis=1),
                              rng.uniform(0, 240, (n, 10, 2))], axis=1) + rng.normal(0, 3, (n, k, 2))
    size = rng.uniform(20, 60, (n, k, 2))
    boxes = np.concatenate([centres - size / 2, centres + size / 2], axis=2).astype(np.float32)
    scores = rng.uniform(0, 0.05, (n, k, c))
    cls = rng.integers(0, c, (n, objects)).repeat(6, axis=1)
    scores[np.arange(n)[:, None], np.arange(objects * 6)[None], cls] = rng.uniform(0.3, 0.95, (n, objects * 6))
    scores[:, objects * 6:] = rng.uniform(0, 0.2, (n, 10, c))
    return {"boxes": boxes, "scores": scores.astype(np.float32)}


def _graph_nms(raw: dict[str, np.ndarray], conf: float, iou: float, max_det: int) -> np.ndarray:
    """What NMS in a graph outputs, computed independently: per class torchvision nms, padded rows class -1."""
    out = np.zeros((len(raw["boxes"]), max_det, 6), np.float32)
    out[:, :, 5] = -1
    for b, (boxes, scores) in enumerate(zip(raw["boxes"], raw["scores"])):
        rows = []
        for c in range(scores.shape[1]):
            idx = np.flatnonzero(scores[:, c] > conf)
            keep = idx[nms(torch.from_numpy(boxes[idx]), torch.from_numpy(scores[idx, c]), iou).numpy()]
            rows += [[*boxes[i], scores[i, c], c] for i in keep]
        rows = sorted(rows, key=lambda r: -r[4])[:max_det]
        out[b, :len(rows)] = rows
    return out


def test_host_nms_and_in_graph_nms_give_identical_predictions():
    raw = _raw()
    host = TASK.postprocess(raw, conf=0.25, iou=0.6, max_det=20)
    graph = TASK.postprocess({"detections": _graph_nms(raw, 0.25, 0.6, 20)}, conf=0.25, max_det=20)
    assert len(host) == len(graph) == 2
    for h, g in zip(host, graph):
        assert h.dtype == np.float32 and h.shape[1] == 6 and 0 < len(h) <= 20
        np.testing.assert_array_equal(h, g)
        assert (np.diff(h[:, 4]) <= 0).all()
    # NMS ran: fewer detections than pairs above the threshold; a box may stand for two classes
    assert len(host[0]) < int((raw["scores"][0] > 0.25).sum())


def test_host_and_in_graph_nms_of_a_yolo_model_agree():
    from edgeres.models import create

    torch.manual_seed(0)
    model = create("test_yolo", num_classes=3).eval()
    x = torch.randn(2, 3, 96, 96) * 3
    conf = 0.0015  # an untrained head scores low: keep enough candidates for NMS to matter
    with torch.no_grad():
        boxes, scores = model.inference_module()(x)
        graph = model.inference_module(nms={"max_det": 100, "iou": 0.6, "conf": conf})(x)
    host = TASK.postprocess({"boxes": boxes.numpy(), "scores": scores.numpy()}, conf=conf, iou=0.6)
    in_graph = TASK.postprocess({"detections": graph.numpy()}, conf=conf)
    assert all(len(h) > 10 for h in host)
    for h, g in zip(host, in_graph):
        np.testing.assert_array_equal(h, g)


def test_in_graph_padding_and_threshold():
    d = np.zeros((1, 5, 6), np.float32)
    d[0, :, 5] = -1
    d[0, 0] = [0, 0, 10, 10, 0.3, 2]
    d[0, 1] = [5, 5, 20, 20, 0.9, 0]
    out = TASK.postprocess({"detections": d})
    np.testing.assert_array_equal(out[0][:, 4:], np.float32([[0.9, 0], [0.3, 2]]))
    assert len(TASK.postprocess({"detections": d}, conf=0.5)[0]) == 1


def test_unexpected_outputs_are_refused_by_name():
    with pytest.raises(UserInputError, match=r"named \['logits'\]"):
        TASK.postprocess({"logits": np.zeros((1, 3))})
    with pytest.raises(UserInputError, match="'boxes' has shape"):
        TASK.postprocess({"boxes": np.zeros((1, 4)), "scores": np.zeros((1, 4, 3))})


def test_collect_splits_batches_into_images_in_order():
    labels = [np.array([[0, 1, 1, 2, 3, 4], [1, 0, 5, 5, 9, 9], [1, 2, 0, 0, 1, 1]], np.float32),
              np.zeros((0, 6), np.float32)]
    preds = [[_det(), _det([0, 0, 1, 1, 0.5, 2])], [_det()]]
    p = TASK.collect(labels, preds)
    assert len(p) == 3 and [len(g) for g in p.gts] == [1, 2, 0] and [len(d) for d in p.dets] == [0, 1, 0]
    np.testing.assert_array_equal(p.gts[1], [[0, 5, 5, 9, 9], [2, 0, 0, 1, 1]])


def _with_scores_of(raw: dict[str, np.ndarray], scores: np.ndarray) -> dict[str, np.ndarray]:
    return {"boxes": raw["boxes"], "scores": scores.astype(np.float32)}


def test_compare_passes_identical_and_flags_corrupted():
    raw = _raw(1, n=4)
    same = TASK.compare(raw, {k: v.copy() for k, v in raw.items()})
    assert same["reference_found"] == same["candidate_found"] == 1.0 and same["mean_iou"] == 1.0
    assert same["max_score_diff"] == 0.0 and same["raw_score_max_abs_diff"] == 0.0 and same["matched"] > 0
    assert all(TASK.judge(same, TASK.tolerance(p)) == [] for p in TOLERANCES)
    # a broken export: each class's scores reported under the next class
    broken = TASK.compare(raw, _with_scores_of(raw, np.roll(raw["scores"], 1, axis=2)))
    reasons = TASK.judge(broken, TASK.tolerance("int8"))
    assert any("have a match among" in r for r in reasons)
    # boxes shifted by a third of their size: found at the right class, but the IoU collapses
    shifted = {"boxes": raw["boxes"] + 12.0, "scores": raw["scores"]}
    assert any("IoU" in r or "match" in r for r in TASK.judge(TASK.compare(raw, shifted), TASK.tolerance("fp16")))
    nan = _with_scores_of(raw, np.where(np.arange(raw["scores"].size).reshape(raw["scores"].shape) == 0, np.nan,
                                        raw["scores"]))
    assert TASK.judge(TASK.compare(raw, nan), TASK.tolerance("fp32")) == ["exported outputs hold 1 NaN/inf values"]


def test_compare_forgives_small_score_noise_near_the_threshold():
    raw = _raw(2, n=4)
    noisy = _with_scores_of(raw, np.clip(raw["scores"] + np.random.default_rng(0).normal(0, 0.01, raw["scores"].shape),
                                         0, 1))
    stats = TASK.compare(raw, noisy)
    assert stats["reference_found"] >= 0.95 and stats["candidate_found"] >= 0.95
    assert TASK.judge(stats, TASK.tolerance("int8")) == []
    assert any("raw class scores" in r for r in TASK.judge(stats, TASK.tolerance("fp32")))
    assert TASK.tolerance("int8", simulated=True).min_matched < TASK.tolerance("int8").min_matched


def test_training_pieces_come_from_the_model(monkeypatch):
    calls = []

    class FakeLoss:
        def __init__(self, model):
            calls.append(model)

        def __call__(self, outputs, targets):
            return torch.tensor(2.0)

    monkeypatch.setitem(sys.modules, "edgeres.tasks.detect_loss", types.SimpleNamespace(YoloLoss=FakeLoss))
    loss = TASK.criterion(None, model="the model")
    outputs = (torch.zeros(3, 24, 8, 8),)
    assert float(loss(outputs, torch.zeros(0, 6), None)) == 2.0 and calls == ["the model"]
    assert float(TASK.loss_sum(outputs, torch.zeros(0, 6), model="the model")) == 6.0  # mean per image x 3
    assert TASK.batch_score(outputs, torch.zeros(0, 6)) is None
    with pytest.raises(ValueError, match="model="):
        TASK.criterion(None)
    with pytest.raises(UserInputError, match="label smoothing"):
        TASK.criterion(None, model="m", label_smoothing=0.1)


def test_anchors_are_fitted_to_the_training_boxes(monkeypatch):
    seen = []

    def kmeans_anchors(wh):
        seen.append(wh)
        return np.arange(18, dtype=np.float64).reshape(9, 2) + 1

    monkeypatch.setitem(sys.modules, "edgeres.models.anchors", types.SimpleNamespace(kmeans_anchors=kmeans_anchors))

    class Bundle:
        def __init__(self, boxes):
            self.boxes = boxes

        def labels(self, split):
            assert split == "train"
            return self.boxes

    boxes = np.array([[i, 0, 10, 20, 10 + i + 1, 20 + 2 * i + 2] for i in range(12)], np.float32)
    kwargs = TASK.model_kwargs(Bundle(boxes))
    assert kwargs == {"anchors": [[float(2 * i + 1), float(2 * i + 2)] for i in range(9)]}
    np.testing.assert_array_equal(seen[0], np.c_[np.arange(12) + 1, 2 * np.arange(12) + 2])


def test_summary_table_and_plots(tmp_path):
    from edgeres.plots import plot_detections

    m = detection_metrics(DetectionPredictions(GTS, _perfect(GTS)), NAMES)
    assert set(TASK.summary(m)) == set(TASK.summary_keys) and TASK.headline(m) == pytest.approx(1.0)
    assert [h for h, _ in TASK.table_columns(m)][:2] == ["mAP@0.5:0.95", "mAP@0.5"]
    written = TASK.write_plots({"test": m, "val": m}, tmp_path, NAMES)
    assert [p.name for p in written] == ["pr_curve_test.png", "pr_curve_val.png"]
    images = np.zeros((3, 220, 220, 3), np.uint8)
    grid = plot_detections(images, GTS, _perfect(GTS), NAMES, tmp_path / "grid.png")
    assert grid.stat().st_size > 1000 and sorted(p.name for p in tmp_path.iterdir())[0] == "grid.png"
