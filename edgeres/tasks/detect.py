"""Detection: boxes with a class and a score. COCO mAP@0.5:0.95 is the headline, the YOLO loss trains it."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from edgeres.errors import UserInputError
from edgeres.letterbox import PAD_VALUE
from edgeres.plots import plot_detections, plot_pr_curve
from edgeres.tasks import detect_predict
from edgeres.tasks.base import ClassDelta, Criterion, GateEvidence, LossConfig, MetricDelta, Task
from edgeres.tasks.detect_compare import POOL_CONF, QAT_TOLERANCE, TOLERANCES, Tolerance, compare_detections, judge
from edgeres.tasks.detect_metrics import (MAX_DET, DetectionPredictions, Matching, ResampledAP, class_ap, coco_eval,
                                          detection_metrics, matching, mean_ap)

if TYPE_CHECKING:
    import torch

HOST_NMS = ("boxes", "scores")  # decoded boxes (N, K, 4) and per-class scores (N, K, C): NMS runs here
HOST_NMS_IOU = 0.6  # boxes of one class overlapping more than this are one object
GRAPH_NMS = ("detections",)  # (N, max_det, 6) `[x1, y1, x2, y2, score, class]`, padded with class -1


class Detection(Task):
    """Object detection over `class_names`, boxes in input pixels."""

    name = "detection"
    metric = "map"
    graph_nms = True
    summary_keys = ("map", "map50", "map75", "precision", "recall")
    report_columns = ("mAP@0.5:0.95 %", "Δ mAP (points)")

    def load_data(self, config: Any) -> Any:
        """A DetectionBundle: a built-in set, a YOLO-layout folder or data.yaml, or COCO JSON."""
        from edgeres.data.detect import load_detection_data  # the data package imports torch

        return load_detection_data(config)

    def model_kwargs(self, bundle: Any) -> dict[str, Any]:
        """Anchors by k-means on the training boxes' widths and heights (stored in model.json)."""
        from edgeres.models.anchors import kmeans_anchors

        boxes = np.asarray(bundle.labels("train"), dtype=np.float32).reshape(-1, 6)
        anchors = kmeans_anchors(boxes[:, 4:6] - boxes[:, 2:4])
        return {"anchors": [[float(w), float(h)] for w, h in anchors]}

    # torch is imported by the loss methods alone, as in Classification.
    def criterion(self, bundle: Any, device: Any = "cpu", *, model: Any = None, label_smoothing: float = 0.0,
                  class_weighted: bool = False, loss: LossConfig | None = None) -> Criterion:
        """The YOLO loss (box CIoU, objectness, class) of `model`'s anchors and strides."""
        self.refuse_loss_options(loss)
        if label_smoothing or class_weighted:
            raise UserInputError("detection training takes neither label smoothing nor class-weighted loss "
                                 f"(got label_smoothing={label_smoothing}, class_weighted={class_weighted}); "
                                 "leave them at their defaults")
        loss = _yolo_loss(model)
        return lambda outputs, targets, images: loss(outputs, targets)

    def loss_sum(self, outputs: Any, targets: "torch.Tensor", model: Any = None) -> "torch.Tensor":
        """The YOLO loss (a mean per image) times the batch's images."""
        return _yolo_loss(model)(outputs, targets) * outputs[0].shape[0]

    def batch_score(self, outputs: Any, targets: "torch.Tensor") -> None:
        """None: mAP ranks detections across a whole split, so a batch has no share of it."""
        return None

    def postprocess(self, outputs: Mapping[str, np.ndarray], conf: float = 0.001, iou: float = HOST_NMS_IOU,
                    max_det: int = MAX_DET) -> list[np.ndarray]:
        """Named outputs to per-image (k, 6) float32 `[x1, y1, x2, y2, score, class]`, best first, scores > conf.

        {"boxes", "scores"}: every (box, class) pair scoring above conf enters per-class NMS at IoU `iou`, as
        NMS in a graph does. {"detections"}: the graph ran NMS; padding rows go.
        """
        names = tuple(sorted(outputs))
        if names == GRAPH_NMS:
            return [_from_graph(d, conf, max_det) for d in _checked_detections(outputs["detections"])]
        if names == HOST_NMS:
            boxes, scores = _checked_boxes_scores(outputs["boxes"], outputs["scores"])
            return [_nms(b, s, conf, iou, max_det) for b, s in zip(boxes, scores)]
        raise UserInputError(f"a detector's outputs are named {list(HOST_NMS)} (NMS on the host) or "
                             f"{list(GRAPH_NMS)} (NMS in the graph); these are named {list(names)}")

    def collect(self, labels: list[np.ndarray], predictions: list[list[np.ndarray]]) -> DetectionPredictions:
        """Per-image ground truth from each batch's (M, 6) targets (column 0: the image in the batch)."""
        gts, dets = [], []
        for targets, batch in zip(labels, predictions):
            targets = np.asarray(targets, dtype=np.float32).reshape(-1, 6)
            index = targets[:, 0].astype(np.int64)
            if len(index) and (index.min() < 0 or index.max() >= len(batch)):
                raise ValueError(f"targets name images {index.min()}..{index.max()} of a batch of {len(batch)}")
            for i, d in enumerate(batch):
                gts.append(targets[index == i, 1:6])
                dets.append(np.asarray(d, dtype=np.float32).reshape(-1, 6))
        return DetectionPredictions(gts, dets)

    def metrics(self, predictions: DetectionPredictions, class_names: list[str]) -> dict[str, Any]:
        return detection_metrics(predictions, class_names)

    def write_plots(self, metrics: dict[str, dict[str, Any]], out: Path, class_names: list[str]) -> list[Path]:
        """A precision-recall curve (IoU 0.5) per split."""
        return [plot_pr_curve(m["pr_curve"], out / f"pr_curve_{split}.png",
                              title=f"Precision-recall at IoU 0.5 ({split}; mAP@0.5 {m['map50']:.3f})")
                for split, m in metrics.items()]

    def write_examples(self, bundle: Any, predictions: DetectionPredictions, out: Path, split: str = "test",
                       count: int = 16) -> list[Path]:
        """A grid of the split's first images with true boxes and detections scoring at least the predict
        threshold."""
        images, _ = next(bundle.batches(split, count))
        mean = np.asarray(bundle.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(bundle.std, dtype=np.float32)[:, None, None]
        pixels = [np.clip((x * std + mean) * 255.0, 0, 255).round().astype(np.uint8).transpose(1, 2, 0) for x in images]
        dets = [d[d[:, 4] >= detect_predict.PREDICT_CONF] for d in predictions.dets[:len(pixels)]]
        return [plot_detections(pixels, predictions.gts[:len(pixels)], dets, bundle.class_names,
                                out / f"detections_{split}.png")]

    def soft_loss(self, student: Any, teacher: Any, temperature: float) -> "torch.Tensor":
        """Objectness-scaled distillation of the raw head maps (edgeres.tasks.detect_distill)."""
        from edgeres.tasks.detect_distill import yolo_soft_loss

        return yolo_soft_loss(student, teacher, temperature)

    def prepare(self, image: Any, meta: Any) -> tuple[np.ndarray, Any]:
        return detect_predict.prepare(image, meta)

    def describe(self, outputs: Mapping[str, np.ndarray], contexts: list[Any], class_names: list[str]) -> list[dict]:
        return detect_predict.describe(outputs, contexts, class_names, self.postprocess)

    def draw(self, image: Any, prediction: dict[str, Any]) -> Any:
        return detect_predict.draw(image, prediction)

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Detections matched both ways (same class, IoU >= 0.5), their IoU and score differences, and the raw
        class scores' largest difference when both models give them."""
        nonfinite = {"nonfinite_reference": _nonfinite(reference), "nonfinite_candidate": _nonfinite(candidate)}
        if any(nonfinite.values()):
            return {"images": None, **nonfinite}
        stats = compare_detections(self.postprocess(reference, conf=POOL_CONF),
                                   self.postprocess(candidate, conf=POOL_CONF))
        ref, cand = reference.get("scores"), candidate.get("scores")
        if ref is not None and cand is not None and np.shape(ref) == np.shape(cand):
            diff = np.abs(np.asarray(ref, np.float64) - np.asarray(cand, np.float64))
            stats["raw_score_max_abs_diff"] = float(diff.max()) if diff.size else 0.0
        return {**stats, **nonfinite}

    def deploy_fields(self, output_names: list[str]) -> dict[str, Any]:
        return {"input": {"resize": "letterbox", "pad_value": PAD_VALUE},
                "postprocess": {"conf": detect_predict.PREDICT_CONF, "iou": HOST_NMS_IOU, "max_det": MAX_DET,
                                "nms_in_graph": list(output_names) == list(GRAPH_NMS)}}

    def tolerance(self, precision: str, *, simulated: bool = False) -> Tolerance:
        return QAT_TOLERANCE if simulated else TOLERANCES[precision]

    def judge(self, stats: dict[str, Any], tolerance: Tolerance) -> list[str]:
        return judge(stats, tolerance)

    def gate_evidence(self, baseline: DetectionPredictions, candidate: DetectionPredictions,
                      class_names: list[str]) -> GateEvidence:
        """mAP@0.5:0.95 and mAP@0.5 changes, resampled over test images without re-matching; per-class AP."""
        _check_paired(baseline, candidate)
        if not class_names:
            raise UserInputError("class_names is empty; a detector detects at least one class")
        m_b = matching(coco_eval(baseline.gts, baseline.dets, len(class_names)))
        m_c = matching(coco_eval(candidate.gts, candidate.dets, len(class_names)))
        n = len(baseline)
        t50 = int(np.flatnonzero(np.isclose(m_b.iou_thresholds, 0.5))[0])
        metrics = [_delta("map", "mAP@0.5:0.95", mean_ap(m_b.precision), mean_ap(m_c.precision)),
                   _delta("map50", "mAP@0.5", mean_ap(m_b.precision[t50]), mean_ap(m_c.precision[t50]))]
        support = m_b.gt_count.sum(axis=1)
        per_class = [ClassDelta(name, int(support[i]), b, c, None if b is None else 100.0 * (c - b))
                     for i, (name, b, c) in enumerate(zip(class_names, class_ap(m_b), class_ap(m_c)))]
        constant = all(np.array_equal(b, c) for b, c in zip(baseline.dets, candidate.dets))
        return GateEvidence(n, metrics, _resampler(m_b, m_c, n), per_class, "AP@0.5:0.95", "boxes",
                            constant=constant)

    def table_columns(self, metrics: dict[str, Any]) -> list[tuple[str, Any]]:
        return [("mAP@0.5:0.95", metrics["map"]), ("mAP@0.5", metrics["map50"]), ("mAP@0.75", metrics["map75"]),
                ("precision", metrics["precision"]), ("recall", metrics["recall"])]


def _yolo_loss(model: Any) -> Any:
    if model is None:
        raise ValueError("the detection loss reads the model's anchors and strides: pass model=")
    from edgeres.tasks.detect_loss import YoloLoss

    return YoloLoss(model)


def _checked_boxes_scores(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise UserInputError(f"'boxes' has shape {boxes.shape} and 'scores' {scores.shape}; expected (N, K, 4) "
                             "and (N, K, classes)")
    return boxes, scores


def _checked_detections(detections: np.ndarray) -> np.ndarray:
    detections = np.asarray(detections, np.float32)
    if detections.ndim != 3 or detections.shape[2] != 6:
        raise UserInputError(f"'detections' has shape {detections.shape}; expected (N, max_det, 6) rows of "
                             "[x1, y1, x2, y2, score, class]")
    return detections


def _nms(boxes: np.ndarray, scores: np.ndarray, conf: float, iou: float, max_det: int) -> np.ndarray:
    """Per-class NMS of one image's (box, class) pairs scoring above conf."""
    import torch
    from torchvision.ops import batched_nms

    box_i, cls = np.nonzero(scores > conf)
    if len(box_i) == 0:
        return np.zeros((0, 6), np.float32)
    b = torch.from_numpy(boxes[box_i])
    s = torch.from_numpy(scores[box_i, cls])
    keep = batched_nms(b, s, torch.from_numpy(cls), iou)[:max_det].numpy()
    return np.concatenate([boxes[box_i[keep]], scores[box_i[keep], cls[keep], None],
                           cls[keep, None].astype(np.float32)], axis=1)


def _from_graph(detections: np.ndarray, conf: float, max_det: int) -> np.ndarray:
    """One image's in-graph NMS rows without padding (class -1 or score 0), above conf, best first."""
    rows = detections[(detections[:, 5] >= 0) & (detections[:, 4] > max(conf, 0.0))]
    return rows[np.argsort(-rows[:, 4], kind="stable")][:max_det]


def _nonfinite(outputs: Mapping[str, np.ndarray]) -> int:
    return sum(int((~np.isfinite(np.asarray(v, np.float64))).sum()) for v in outputs.values())


def _delta(key: str, name: str, baseline: float, candidate: float) -> MetricDelta:
    return MetricDelta(key, name, baseline, candidate, 100.0 * (candidate - baseline))


def _resampler(m_b: Matching, m_c: Matching, n: int) -> Callable[[np.ndarray], np.ndarray]:
    """Rows of image indices -> (rows, 2) changes in points of mAP@0.5:0.95 and mAP@0.5, both models alike."""
    base, cand = ResampledAP(m_b), ResampledAP(m_c)

    def resample(idx: np.ndarray) -> np.ndarray:
        rows = len(idx)
        counts = np.bincount((idx + n * np.arange(rows)[:, None]).ravel(), minlength=rows * n).reshape(rows, n)
        return 100.0 * (cand.maps(counts) - base.maps(counts))

    return resample


def _check_paired(baseline: DetectionPredictions, candidate: DetectionPredictions) -> None:
    """Refuse predictions of other images, in another order, or with other ground truth."""
    if len(baseline) == 0:
        raise UserInputError("no test images: the gate needs predictions on at least one image")
    if len(baseline) != len(candidate):
        raise UserInputError(f"baseline has predictions for {len(baseline)} images, candidate {len(candidate)}; "
                             "both must be evaluated on the same test images")
    differ = sum(not np.array_equal(a, b) for a, b in zip(baseline.gts, candidate.gts))
    if differ:
        raise UserInputError(f"ground truth differs on {differ} of {len(baseline)} images; both models must be "
                             "evaluated on the same test images in the same order")
