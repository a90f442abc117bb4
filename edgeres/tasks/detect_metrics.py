"""Detection metrics through pycocotools: COCO mAP, per-class AP, precision/recall at one confidence, PR curves,
and the per-image matching the gate resamples (`ResampledAP`)."""
from __future__ import annotations

import contextlib
import dataclasses
import io
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

CONVENTION = "COCO 101-point interpolated AP (pycocotools)"
CONF_THRESHOLD = 0.25  # precision and recall are read at this confidence (what `predict` draws)
MAX_DET = 100
_PR_DIGITS = 4  # PR-curve points kept in metrics.json, rounded: a plot needs no more


@dataclasses.dataclass
class DetectionPredictions:
    """One split's ground truth and detections per image, in dataset order (the gate pairs them).

    gts: per image (n, 5) float32 `[class, x1, y1, x2, y2]`; dets: per image (k, 6) float32
    `[x1, y1, x2, y2, score, class]`, both in input pixels.
    """

    gts: list[np.ndarray]
    dets: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.gts)


@dataclasses.dataclass
class Matching:
    """COCOeval's per-image matching of one model's detections at its ten IoU thresholds, area range "all".

    Per class k: `scores[k]` (D,) of every detection, images concatenated in order and each image's sorted by
    score (as COCOeval.accumulate concatenates them); `image[k]` (D,) the image of each; `tp[k]`, `fp[k]`
    (T, D) bool; `gt_count` (K, images) the ground-truth boxes that count.
    """

    scores: list[np.ndarray]
    image: list[np.ndarray]
    tp: list[np.ndarray]
    fp: list[np.ndarray]
    gt_count: np.ndarray
    precision: np.ndarray  # COCOeval.accumulate's (T, R, K): -1 where a class has no ground truth
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray


def _quiet(fn, *args) -> Any:
    """Call a pycocotools function with its progress prints swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def _coco(n_images: int, num_classes: int, annotations: list[dict[str, Any]]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": [{"id": i + 1} for i in range(n_images)],
                    "categories": [{"id": c + 1} for c in range(num_classes)], "annotations": annotations}
    _quiet(coco.createIndex)
    return coco


def _ann(i: int, ann_id: int, cls: float, box: np.ndarray, score: float | None = None) -> dict[str, Any]:
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
    ann = {"id": ann_id, "image_id": i + 1, "category_id": int(cls) + 1, "bbox": [x1, y1, w, h], "area": w * h,
           "iscrowd": 0}
    if score is not None:
        ann["score"] = float(score)
    return ann


def coco_eval(gts: list[np.ndarray], dets: list[np.ndarray], num_classes: int, max_det: int = MAX_DET) -> COCOeval:
    """COCOeval (bbox) of detections against ground truth, evaluated and accumulated for area "all" and
    `max_det` detections per image and class. Every class is evaluated, present in the ground truth or not."""
    gt_anns = [_ann(i, 0, g[0], g[1:5]) for i, img in enumerate(gts) for g in np.asarray(img).reshape(-1, 5)]
    dt_anns = [_ann(i, 0, d[5], d[:4], d[4]) for i, img in enumerate(dets) for d in np.asarray(img).reshape(-1, 6)]
    for anns in (gt_anns, dt_anns):
        for k, ann in enumerate(anns):
            ann["id"] = k + 1  # COCOeval records a match as the matched id: 0 would read as "unmatched"
    E = COCOeval(_coco(len(gts), num_classes, gt_anns), _coco(len(gts), num_classes, dt_anns), "bbox")
    E.params.catIds = list(range(1, num_classes + 1))
    E.params.areaRng, E.params.areaRngLbl = E.params.areaRng[:1], E.params.areaRngLbl[:1]
    E.params.maxDets = [max_det]
    _quiet(E.evaluate)
    _quiet(E.accumulate)
    return E


def matching(E: COCOeval) -> Matching:
    """The per-image matching a `coco_eval` result holds, per class, in COCOeval.accumulate's order."""
    if len(E.params.areaRng) != 1:
        raise ValueError("matching() reads a COCOeval of one area range (as coco_eval() makes)")
    n_img, k_cls = len(E.params.imgIds), len(E.params.catIds)
    T = len(E.params.iouThrs)
    scores, image, tp, fp = [], [], [], []
    gt_count = np.zeros((k_cls, n_img), dtype=np.int64)
    for k in range(k_cls):
        evals = [(i, e) for i, e in enumerate(E.evalImgs[k * n_img:(k + 1) * n_img]) if e is not None]
        for i, e in evals:
            gt_count[k, i] = int(np.count_nonzero(e["gtIgnore"] == 0))
        s = np.concatenate([np.asarray(e["dtScores"], dtype=np.float64) for _, e in evals] or [np.zeros(0)])
        img = np.concatenate([np.full(len(e["dtScores"]), i) for i, e in evals] or [np.zeros(0, int)])
        dtm = np.concatenate([e["dtMatches"] for _, e in evals], axis=1) if evals else np.zeros((T, 0))
        dtig = np.concatenate([e["dtIgnore"] for _, e in evals], axis=1) if evals else np.zeros((T, 0))
        order = np.argsort(-s, kind="mergesort")
        matched, ignored = dtm[:, order] != 0, dtig[:, order].astype(bool)
        scores.append(s[order])
        image.append(img[order].astype(np.int64))
        tp.append(matched & ~ignored)
        fp.append(~matched & ~ignored)
    return Matching(scores, image, tp, fp, gt_count, E.eval["precision"][:, :, :, 0, -1],
                    np.asarray(E.params.iouThrs), np.asarray(E.params.recThrs))


def mean_ap(precision: np.ndarray) -> float:
    """COCO's summary over a (T, R, K) (or (R, K)) precision array: the mean of the defined entries, 0 if none."""
    defined = precision[precision > -1]
    return float(np.mean(defined)) if defined.size else 0.0


def _iou_index(m: Matching, iou: float) -> int:
    return int(np.flatnonzero(np.isclose(m.iou_thresholds, iou))[0])


def _precision_recall(m: Matching, k: int | None, conf: float) -> tuple[float, float, int, int]:
    """(precision, recall, true positives, ground truth) at IoU 0.5 of detections scoring >= conf; class k or all."""
    t = _iou_index(m, 0.5)
    classes = range(len(m.tp)) if k is None else [k]
    kept = sum(int((m.scores[c] >= conf).sum()) for c in classes)
    hits = sum(int(m.tp[c][t][m.scores[c] >= conf].sum()) for c in classes)
    n_gt = int(m.gt_count[list(classes)].sum())
    return hits / kept if kept else 0.0, hits / n_gt if n_gt else 0.0, hits, n_gt


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), _PR_DIGITS) for v in values]


def _pr_curve(m: Matching, class_names: list[str]) -> dict[str, Any]:
    """Interpolated precision at COCO's 101 recall points, IoU 0.5: per class (None without ground truth), and
    their mean over the classes that have ground truth."""
    p50 = m.precision[_iou_index(m, 0.5)]  # (R, K)
    defined = p50[0] > -1
    per_class = {name: _rounded(p50[:, k]) if defined[k] else None for k, name in enumerate(class_names)}
    overall = p50[:, defined].mean(axis=1) if defined.any() else np.zeros(len(m.recall_thresholds))
    return {"iou": 0.5, "recall": _rounded(m.recall_thresholds), "all": _rounded(overall), "per_class": per_class}


def detection_metrics(predictions: DetectionPredictions, class_names: list[str],
                      conf_threshold: float = CONF_THRESHOLD) -> dict[str, Any]:
    """mAP@0.5:0.95, mAP@0.5, mAP@0.75, per-class AP, precision/recall at `conf_threshold` (IoU 0.5), PR curves.

    A split without ground truth boxes has mAP 0 (COCO leaves it undefined); a class without ground truth has
    AP None and does not enter the mean, as in pycocotools.
    """
    m = matching(coco_eval(predictions.gts, predictions.dets, len(class_names)))
    t50, t75 = _iou_index(m, 0.5), _iou_index(m, 0.75)
    precision, recall, _, _ = _precision_recall(m, None, conf_threshold)
    per_class = []
    for k, name in enumerate(class_names):
        p, r, _, support = _precision_recall(m, k, conf_threshold)
        defined = bool((m.precision[:, :, k] > -1).any())
        per_class.append({"name": name, "ap": mean_ap(m.precision[:, :, k]) if defined else None,
                          "ap50": mean_ap(m.precision[t50, :, k]) if defined else None,
                          "precision": p, "recall": r, "support": support})
    return {
        "n": len(predictions),
        "map": mean_ap(m.precision), "map50": mean_ap(m.precision[t50]), "map75": mean_ap(m.precision[t75]),
        "precision": precision, "recall": recall, "conf_threshold": conf_threshold,
        "per_class": per_class, "convention": CONVENTION,
        "boxes": int(m.gt_count.sum()), "detections": int(sum(len(np.asarray(d).reshape(-1, 6))
                                                                for d in predictions.dets)),
        "pr_curve": _pr_curve(m, class_names),
    }


def class_ap(m: Matching) -> list[float | None]:
    """AP@0.5:0.95 of each class (None for a class without ground truth)."""
    return [mean_ap(m.precision[:, :, k]) if (m.precision[:, :, k] > -1).any() else None
            for k in range(m.precision.shape[2])]


class ResampledAP:
    """mAP@0.5:0.95 and mAP@0.5 of one model over bootstrap resamples of the test images, without re-matching.

    A resample is a count per image (how often it was drawn); COCO's matching is per image, so a resample's
    PR curve is the original detections weighted by their image's count. Only the points where a true positive
    lands can set interpolated precision, so each curve is evaluated there alone: cumulative true positives by
    a gather, false positives before each by a sparse product (per image, per gap between true positives).
    With every count 1 the result equals pycocotools' accumulate exactly. Ties in score between images are
    broken by image order, as pycocotools does for the original set.
    """

    _MAX_CELLS = 2_000_000  # resamples x precision entries held at once

    def __init__(self, m: Matching):
        from scipy import sparse  # scipy is slow to import; only the gate resamples

        self.m = m
        self.n_images = m.gt_count.shape[1]
        self.t50 = _iou_index(m, 0.5)
        self._curves = []  # per class, per IoU threshold: (image of each TP, sparse FP counts before each TP)
        for k in range(len(m.tp)):
            per_t = []
            for t in range(len(m.iou_thresholds)):
                tp_pos, fp_pos = np.flatnonzero(m.tp[k][t]), np.flatnonzero(m.fp[k][t])
                gap = np.searchsorted(tp_pos, fp_pos)  # how many true positives precede each false positive
                fp_counts = sparse.csr_matrix((np.ones(len(fp_pos)), (gap, m.image[k][fp_pos])),
                                              shape=(len(tp_pos) + 1, self.n_images))
                per_t.append((m.image[k][tp_pos], fp_counts[:len(tp_pos)]))
            self._curves.append(per_t)

    def precision(self, counts: np.ndarray) -> np.ndarray:
        """(B, T, R, K) interpolated precision for image counts (B, images); -1 where a class has no ground truth."""
        counts = np.asarray(counts, dtype=np.float64)
        T, R, K = len(self.m.iou_thresholds), len(self.m.recall_thresholds), len(self._curves)
        out = np.full((len(counts), T, R, K), -1.0)
        npig = counts @ self.m.gt_count.T.astype(np.float64)  # (B, K) ground truth drawn, an exact integer
        for k, per_t in enumerate(self._curves):
            has_gt = npig[:, k] > 0
            if not has_gt.any():
                continue
            for t, (tp_image, fp_counts) in enumerate(per_t):
                out[has_gt, t, :, k] = self._interpolated(counts[has_gt], npig[has_gt, k], tp_image, fp_counts)
        return out

    def _interpolated(self, counts: np.ndarray, npig: np.ndarray, tp_image: np.ndarray, fp_counts) -> np.ndarray:
        """(B, R) precision at the recall thresholds, computed as COCOeval.accumulate does, at true positives."""
        B, thresholds = len(counts), self.m.recall_thresholds
        if len(tp_image) == 0:
            return np.zeros((B, len(thresholds)))
        tp = np.cumsum(counts[:, tp_image], axis=1)
        fp = np.asarray(fp_counts @ counts.T).T.cumsum(axis=1) if fp_counts.nnz else np.zeros_like(tp)
        pr = tp / (fp + tp + np.spacing(1))
        envelope = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
        # First point with recall tp/npig >= threshold: tp is integral, so find the least integer j with
        # fl(j / npig) >= threshold (within 1 of threshold * npig) and search the integral tp rows for it.
        base = np.floor(thresholds[None, :] * npig[:, None])
        need = np.full((B, len(thresholds)), np.inf)
        for d in (2.0, 1.0, 0.0, -1.0):
            j = np.maximum(base + d, 0.0)
            need = np.where(j / npig[:, None] >= thresholds[None, :], np.minimum(need, j), need)
        stride = max(tp[:, -1].max(), npig.max()) + 3.0  # rows shifted apart: one search serves them all
        shift = stride * np.arange(B)[:, None]
        flat = np.searchsorted((tp + shift).ravel(), (need + shift).ravel(), side="left").reshape(B, -1)
        pos = flat - np.arange(B)[:, None] * tp.shape[1]
        found = pos < tp.shape[1]
        return np.where(found, np.take_along_axis(envelope, np.minimum(pos, tp.shape[1] - 1), axis=1), 0.0)

    def maps(self, counts: np.ndarray) -> np.ndarray:
        """(B, 2): mAP@0.5:0.95 and mAP@0.5 of each resample, summarised as pycocotools' summarize does."""
        per_row = max(1, self._MAX_CELLS // max(1, len(self.m.iou_thresholds) * len(self.m.recall_thresholds)
                                                * len(self._curves)))
        out = np.empty((len(counts), 2))
        for start in range(0, len(counts), per_row):
            q = self.precision(counts[start:start + per_row])
            for b, row in enumerate(q, start):
                out[b] = mean_ap(row), mean_ap(row[self.t50])
        return out
