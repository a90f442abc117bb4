"""Classification metrics from labels and predicted probabilities (scikit-learn underneath)."""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix, precision_recall_curve,
                             precision_recall_fscore_support, roc_auc_score, roc_curve)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _auc(y_true: np.ndarray, probs: np.ndarray, num_classes: int) -> float | None:
    """Macro one-vs-rest ROC AUC; None when a class is absent from `y_true` (AUC is undefined then)."""
    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if num_classes == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    if len(present) < num_classes:
        return None
    return float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=list(range(num_classes))))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro F1, one-vs-rest AUC, per-class precision/recall/F1/support and the confusion matrix."""
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    y_pred = probs.argmax(axis=1)
    labels = list(range(k))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(np.mean(f1)),
        "auc": _auc(y_true, probs, k),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        **({"binary": binary_curves(y_true, probs[:, 1], class_names[1])} if k == 2 else {}),
    }


def binary_curves(y_true: np.ndarray, score: np.ndarray, positive: str) -> dict[str, Any] | None:
    """ROC and precision-recall curves of a two-class split, with their areas; None without both classes.

    The ROC keeps every threshold, so an operating point chosen on another split can be read off exactly."""
    if len(np.unique(y_true)) < 2:
        return None
    fpr, tpr, thresholds = roc_curve(y_true, score, drop_intermediate=False)
    precision, recall, _ = precision_recall_curve(y_true, score)
    return {"positive": positive, "positives": int(y_true.sum()), "negatives": int((1 - y_true).sum()),
            "roc_auc": float(roc_auc_score(y_true, score)), "pr_auc": float(average_precision_score(y_true, score)),
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                    # roc_curve's first threshold is +inf (nothing called positive): JSON holds no inf
                    "thresholds": np.minimum(thresholds, np.nextafter(1.0, 2.0)).tolist()},
            "pr": {"precision": precision.tolist(), "recall": recall.tolist()}}


def operating_point(curves: dict[str, Any], threshold: float) -> dict[str, float]:
    """Sensitivity, specificity and accuracy of a split when `score >= threshold` calls the positive class."""
    roc = curves["roc"]
    at = int(np.flatnonzero(np.asarray(roc["thresholds"]) >= threshold)[-1])  # thresholds fall along the curve
    tpr, fpr = roc["tpr"][at], roc["fpr"][at]
    pos, neg = curves["positives"], curves["negatives"]
    return {"threshold": float(threshold), "sensitivity": float(tpr), "specificity": float(1.0 - fpr),
            "accuracy": float((tpr * pos + (1.0 - fpr) * neg) / (pos + neg))}


def choose_threshold(curves: dict[str, Any]) -> float:
    """The threshold of the ROC point with the largest Youden's J (sensitivity + specificity - 1)."""
    roc = curves["roc"]
    j = np.asarray(roc["tpr"]) - np.asarray(roc["fpr"])
    return float(np.asarray(roc["thresholds"])[int(np.argmax(j))])


def threshold_on_val(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each split's operating point at the threshold chosen on val (when there are two classes and a val split)."""
    val = metrics.get("val", {}).get("binary")
    if not val:
        return metrics
    threshold = choose_threshold(val)
    for m in metrics.values():
        if m.get("binary"):
            m["binary"]["operating_point"] = {**operating_point(m["binary"], threshold), "chosen_on": "val"}
    return metrics
