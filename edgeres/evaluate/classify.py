"""Evaluate any Runner on a data split: predictions kept, metrics computed, files written."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.artifacts import write_json
from edgeres.errors import UserInputError
from edgeres.evaluate.metrics import classification_metrics, softmax
from edgeres.runtime.base import run_any_batch


@dataclasses.dataclass
class Predictions:
    """Labels and class probabilities of one split, in dataset order (the gate pairs them)."""

    labels: np.ndarray
    probs: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def predict(runner, bundle, split: str = "test", batch_size: int = 64, progress=None) -> Predictions:
    """Run `runner` over a split. A runner with a fixed batch size gets batches of exactly that size."""
    fixed = runner.info.input_shape[0]
    labels, probs = [], []
    for x, y in bundle.batches(split, fixed or batch_size):
        out = run_any_batch(runner, x)
        check_finite(out, runner.info.path)
        probs.append(softmax(np.asarray(out, dtype=np.float64)))
        labels.append(y)
        if progress is not None:
            progress(len(x))
    if not labels:
        raise UserInputError(f"the {split} split is empty; nothing to evaluate")
    return Predictions(np.concatenate(labels), np.concatenate(probs))


def check_finite(outputs: np.ndarray, path: str) -> None:
    """Refuse NaN or infinite outputs: no metric means anything for them, and argmax would call them class 0."""
    bad = ~np.isfinite(outputs)
    if bad.any():
        raise UserInputError(f"{path}: the model produces NaN or infinite outputs ({int(bad.sum())} of {bad.size} "
                             "values); its weights are probably broken (a diverged training run or a damaged file)")


def check_compatible(meta, bundle) -> None:
    """Refuse data whose classes or channels differ from what the model was trained on."""
    if meta.num_classes != len(bundle.class_names):
        raise UserInputError(f"the model has {meta.num_classes} classes, the data {len(bundle.class_names)} "
                             f"({bundle.class_names[:5]}...); evaluate on the data it was trained on")
    if meta.class_names and list(meta.class_names) != list(bundle.class_names):
        raise UserInputError(f"class names differ: model {meta.class_names[:5]}..., data {bundle.class_names[:5]}...")


def evaluate_runner(runner, bundle, splits: tuple[str, ...] = ("test", "val"), batch_size: int = 64,
                    progress=None) -> tuple[dict[str, Any], dict[str, Predictions]]:
    """Metrics per split (`{"test": {...}, "val": {...}}`) and the predictions behind them."""
    check_compatible(runner.meta, bundle)
    metrics, preds = {}, {}
    for split in splits:
        p = predict(runner, bundle, split, batch_size, progress)
        preds[split] = p
        metrics[split] = classification_metrics(p.labels, p.probs, bundle.class_names)
    return metrics, preds


def write_metrics(metrics: dict[str, Any], runner_info: dict[str, Any], out_dir: str | Path,
                  class_names: list[str]) -> Path:
    """Write metrics.json and a confusion-matrix PNG per split into `out_dir`."""
    from edgeres.report.plots import plot_confusion

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out} is a file; metrics.json and the confusion plots go into a folder")
    out.mkdir(parents=True, exist_ok=True)
    for split, m in metrics.items():
        plot_confusion(m["confusion"], class_names, out / f"confusion_{split}.png", title=f"Confusion ({split})")
    write_json(out / "metrics.json", {**metrics, "runner": runner_info})
    return out / "metrics.json"
