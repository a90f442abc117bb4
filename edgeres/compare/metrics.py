"""What the comparison takes from a model's task metrics: for a classifier, its metrics plus precision-recall AUC
and calibration error; for another task, the columns its own tables show, and for image outputs LPIPS, FID and
KID when the user gives their weight files."""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import label_binarize

from edgeres.errors import UserInputError

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


#: (header, key of image2image_fid.image_scores) of the columns the user's weight files add, in this order
IMAGE_COLUMNS = (("LPIPS", "lpips"), ("FID", "fid"), ("KID", "kid_mean"))


class ImageScorer:
    """LPIPS, FID and KID of each variant's test outputs against the targets (lower is nearer), on networks read
    once from the user's files (`CompareConfig.scoring`); the test inputs, the same for every variant, are scored
    once, for scale."""

    def __init__(self, scoring: Any) -> None:
        from edgeres.tasks.image2image_fid import scoring_networks  # imports torch: only when scores are asked for

        self.network, self.lpips = scoring_networks(scoring.inception_weights, scoring.fid_features,
                                                    scoring.lpips_weights)
        self.inputs: dict[str, Any] | None = None

    def __call__(self, predictions: Any) -> dict[str, Any]:
        """{"metrics": the table's columns, "image_scores": every score} of one variant's predictions."""
        from edgeres.tasks.image2image_fid import image_scores

        if not all(hasattr(predictions, k) for k in ("outputs", "inputs", "targets")):
            raise UserInputError("LPIPS, FID and KID score a model's output images; this model outputs none")
        if self.inputs is None:
            self.inputs = image_scores(predictions.inputs, predictions.targets, self.network, self.lpips)
        scores = image_scores(predictions.outputs, predictions.targets, self.network, self.lpips)
        return {"metrics": {h: scores[k] for h, k in IMAGE_COLUMNS if k in scores}, "image_scores": scores}

    def summary(self) -> dict[str, Any]:
        """What compare.json records of the networks, and the inputs' scores."""
        return {"columns": [h for h, k in IMAGE_COLUMNS if k in (self.inputs or {})],
                "lpips_network": self.lpips.label if self.lpips else None,
                "feature_network": self.network.label if self.network else None,
                "comparable_with_published": self.network.comparable if self.network else None,
                "inputs": self.inputs}
