"""What the comparison takes from a model's task metrics: for a classifier, its metrics plus precision-recall AUC
and calibration error; for another task, the columns its own tables show."""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import label_binarize

ECE_BINS = 15


def pr_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Average precision (the area under the precision-recall curve), macro one-vs-rest over the classes;
    None when a class is absent from `labels` (its precision-recall curve is undefined then)."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    if len(np.unique(labels)) < k:
        return None
    if k == 2:
        return float(average_precision_score(labels, probs[:, 1]))
    return float(average_precision_score(label_binarize(labels, classes=list(range(k))), probs, average="macro"))


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-1 confidence: |accuracy - mean confidence| per equal-width bin ((m-1)/M, m/M], weighted by
    the share of samples in the bin (Guo et al., 2017)."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for b in np.unique(which):
        members = which == b
        ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def variant_metrics(task_metrics: dict[str, Any], labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """The comparison's figures of one model on the test split: the task's own metrics plus PR AUC and ECE."""
    return {"test_images": task_metrics["n"], "accuracy": task_metrics["accuracy"],
            "macro_f1": task_metrics["macro_f1"], "roc_auc": task_metrics["auc"], "pr_auc": pr_auc(labels, probs),
            "ece": expected_calibration_error(labels, probs),
            "per_class_recall": {name: c["recall"] for name, c in task_metrics["per_class"].items()}}


def task_figures(task: Any, task_metrics: dict[str, Any]) -> dict[str, Any]:
    """The comparison's figures of a model whose task is not a classifier's: the `compare_columns` of its
    `table_columns` (header -> value), in that order, and its headline metric."""
    columns = dict(task.table_columns(task_metrics))
    return {"test_images": task_metrics.get("n"), "metrics": {h: columns[h] for h in task.compare_columns},
            "headline": task.headline(task_metrics)}
