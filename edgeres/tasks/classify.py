"""Classification: one logit per class. Top-1 decides, accuracy is the headline, cross-entropy the loss."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from edgeres.errors import UserInputError
from edgeres.plots import plot_confusion
from edgeres.tasks import classify_predict
from edgeres.tasks.base import ClassDelta, Criterion, GateEvidence, LossConfig, MetricDelta, Paired, Task
from edgeres.tasks.classify_compare import (QAT_TOLERANCE, TOLERANCES, ClassifierOutputs, Tolerance, compare_outputs,
                                            judge, logits)
from edgeres.tasks.classify_metrics import classification_metrics, softmax, threshold_on_val

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class Predictions:
    """Labels and class probabilities of one split, in dataset order (the gate pairs them)."""

    labels: np.ndarray
    probs: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


class Classification(Task):
    """Image classification over `class_names`."""

    name = "classification"
    metric = "accuracy"
    summary_keys = ("accuracy", "macro_f1", "auc")
    report_columns = ("accuracy %", "Δ acc (points)")

    def load_data(self, config: Any) -> Any:
        """A DataBundle: a built-in set or an image folder (labelled boxes are refused: they train detectors)."""
        from edgeres.data import load_data  # the data package imports torch
        from edgeres.data.detect import is_detection_source

        if is_detection_source(config.source):
            raise UserInputError(f"{config.source} holds labelled boxes (detection data); a classifier trains on "
                                 "class folders, digits or shapes. Train a detector on it instead, e.g. "
                                 "--model yolo_resnet18")
        return load_data(config)

    # torch is imported by the two loss methods alone: the report and readers of exported files use this
    # task where torch may not be installed, and training has torch loaded already.
    def criterion(self, bundle: Any, device: Any = "cpu", *, model: Any = None, label_smoothing: float = 0.0,
                  class_weighted: bool = False, loss: LossConfig | None = None) -> Criterion:
        """Cross-entropy with label smoothing and (class_weighted) inverse-frequency class weights on `device`."""
        self.refuse_loss_options(loss)
        from torch import nn

        from edgeres.data import class_weights

        weight = class_weights(bundle.labels("train"), len(bundle.class_names)).to(device) if class_weighted else None
        ce = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        return lambda outputs, targets, images: ce(outputs, targets)

    def loss_sum(self, outputs: "torch.Tensor", targets: "torch.Tensor", model: Any = None) -> "torch.Tensor":
        """Un-weighted cross-entropy, summed over the batch."""
        import torch.nn.functional as F

        return F.cross_entropy(outputs, targets, reduction="sum")

    def batch_score(self, outputs: "torch.Tensor", targets: "torch.Tensor") -> float:
        """How many samples' top-1 class is right."""
        return int((outputs.argmax(1) == targets).sum())

    def postprocess(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The "logits" output to class probabilities (float64, so near-ties rank as the logits do)."""
        return softmax(np.asarray(logits(outputs), dtype=np.float64))

    def collect(self, labels: list[np.ndarray], predictions: list[np.ndarray]) -> Predictions:
        return Predictions(np.concatenate(labels), np.concatenate(predictions))

    def metrics(self, predictions: Predictions, class_names: list[str]) -> dict[str, Any]:
        return classification_metrics(predictions.labels, predictions.probs, class_names)

    def relate_splits(self, metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Two classes: every split's sensitivity and specificity at the threshold chosen on val (Youden's J)."""
        return threshold_on_val(metrics)

    def write_plots(self, metrics: dict[str, dict[str, Any]], out: Path, class_names: list[str]) -> list[Path]:
        """A confusion matrix per split; with two classes, ROC and precision-recall curves too."""
        from edgeres.tasks.classify_plots import plot_binary_curves

        written = [plot_confusion(m["confusion"], class_names, out / f"confusion_{split}.png",
                                  title=f"Confusion ({split})") for split, m in metrics.items()]
        return written + [plot_binary_curves(m["binary"], out / f"roc_pr_{split}.png", split)
                          for split, m in metrics.items() if m.get("binary")]

    def soft_loss(self, student: "torch.Tensor", teacher: "torch.Tensor", temperature: float) -> "torch.Tensor":
        """Hinton's KD: KL divergence of the temperature-softened class distributions."""
        from edgeres.tasks.classify_losses import kd_loss

        return kd_loss(student, teacher, temperature)

    def prepare(self, image: Any, meta: Any) -> tuple[np.ndarray, None]:
        return classify_predict.prepare(image, meta)

    def describe(self, outputs: Mapping[str, np.ndarray], contexts: list[Any], class_names: list[str]) -> list[dict]:
        return classify_predict.describe(outputs, contexts, class_names)

    def draw(self, image: Any, prediction: dict[str, Any]) -> Any:
        return classify_predict.draw(image, prediction)

    def compare(self, reference: ClassifierOutputs, candidate: ClassifierOutputs) -> dict[str, Any]:
        return compare_outputs(reference, candidate)

    def deploy_fields(self, output_names: list[str]) -> dict[str, Any]:
        return {"input": {"resize": "resize"}, "postprocess": {"top_k": classify_predict.TOP_K}}

    def tolerance(self, precision: str, *, simulated: bool = False) -> Tolerance:
        return QAT_TOLERANCE if simulated else TOLERANCES[precision]

    def judge(self, stats: dict[str, Any], tolerance: Tolerance) -> list[str]:
        return judge(stats, tolerance)

    def paired(self, baseline: Predictions, candidate: Predictions, class_names: list[str]) -> Paired:
        """Per-image correctness of both models, after refusing inputs that are not paired."""
        k = len(class_names)
        if k < 2:
            raise UserInputError(f"class_names must name at least 2 classes, got {class_names!r}")
        for who, p in (("baseline", baseline), ("candidate", candidate)):
            probs = np.asarray(p.probs)
            if probs.ndim != 2 or probs.shape[1] != k or probs.shape[0] != len(p.labels):
                raise UserInputError(f"{who} probabilities have shape {probs.shape}; expected "
                                     f"({len(p.labels)}, {k}): one row per label, one column per class")
        labels = _paired_labels(baseline.labels, candidate.labels)
        if labels.min() < 0 or labels.max() >= k:
            raise UserInputError(f"labels must lie in 0..{k - 1} (one per class name), "
                                 f"found {labels.min()}..{labels.max()}")
        return Paired(labels, baseline.predicted == labels, candidate.predicted == labels)

    def gate_evidence(self, baseline: Predictions, candidate: Predictions, class_names: list[str]) -> GateEvidence:
        """Accuracy change with McNemar's exact test on the images the models disagree on; per-class recall."""
        paired = self.paired(baseline, candidate, class_names)
        right_b, right_c = paired.baseline, paired.candidate
        n = len(paired.labels)
        b = int((right_b & ~right_c).sum())
        c = int((~right_b & right_c).sum())
        p = mcnemar_exact(b, c)
        diff = right_c.astype(np.int8) - right_b.astype(np.int8)
        accuracy = MetricDelta("accuracy", "accuracy", float(right_b.mean()), float(right_c.mean()),
                               100.0 * (int(right_c.sum()) - int(right_b.sum())) / n, test="McNemar", p_value=p,
                               detail=f"{b} images newly wrong, {c} newly right")
        return GateEvidence(
            n, [accuracy], lambda idx: (diff[idx].sum(axis=1, dtype=np.int64) * (100.0 / n))[:, None],
            _per_class_recall(paired, class_names), "recall", "images", constant=not diff.any(),
            legacy={"baseline_accuracy": accuracy.baseline, "candidate_accuracy": accuracy.candidate,
                    "mcnemar_b": b, "mcnemar_c": c, "mcnemar_p": p})

    def table_columns(self, metrics: dict[str, Any]) -> list[tuple[str, Any]]:
        return [("accuracy", metrics["accuracy"]), ("macro F1", metrics["macro_f1"]), ("AUC", metrics["auc"])]


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of b successes in b + c trials at p = 1/2."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest  # scipy is slow to import; only the gate needs it

    return float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)


def _per_class_recall(paired: Paired, class_names: list[str]) -> list[ClassDelta]:
    out = []
    for i, name in enumerate(class_names):
        mask = paired.labels == i
        support = int(mask.sum())
        if support == 0:
            out.append(ClassDelta(name, 0, None, None, None))
            continue
        rb, rc = float(paired.baseline[mask].mean()), float(paired.candidate[mask].mean())
        out.append(ClassDelta(name, support, rb, rc, 100.0 * (rc - rb)))
    return out


def _paired_labels(baseline: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """The shared labels of two evaluations, refused unless both saw the same images in the same order."""
    labels = np.asarray(baseline)
    if len(labels) == 0:
        raise UserInputError("no test images: the gate needs predictions on at least one image")
    if len(labels) != len(candidate):
        raise UserInputError(f"baseline has {len(labels)} predictions, candidate {len(candidate)}; "
                             "both must be evaluated on the same test images")
    if not np.array_equal(labels, np.asarray(candidate)):
        mismatch = int((labels != np.asarray(candidate)).sum())
        raise UserInputError(f"labels differ at {mismatch} of {len(labels)} positions; both models must be "
                             "evaluated on the same test images in the same order")
    return labels
