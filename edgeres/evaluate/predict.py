"""Run any Runner over a data split and score it with the model's task: predictions kept, metrics computed,
files written."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgeres.artifacts import write_json
from edgeres.errors import UserInputError
from edgeres.runtime.base import run_any_batch
from edgeres.tasks import Task, get_task


def predict(runner, bundle, split: str = "test", batch_size: int = 64, progress=None) -> Any:
    """The task's predictions of `runner` on a split. A runner with a fixed batch size gets batches of exactly
    that size."""
    task = get_task(runner.meta.task)
    fixed = runner.info.input_shape[0]
    labels, predictions = [], []
    for x, y in bundle.batches(split, fixed or batch_size):
        outputs = run_any_batch(runner, x)
        check_finite(outputs, runner.info.path)
        predictions.append(task.postprocess(outputs))
        labels.append(y)
        if progress is not None:
            progress(len(x))
    if not labels:
        raise UserInputError(f"the {split} split is empty; nothing to evaluate")
    return task.collect(labels, predictions)


def check_finite(outputs: Mapping[str, np.ndarray], path: str) -> None:
    """Refuse NaN or infinite outputs: no metric means anything for them, and argmax would call them class 0."""
    bad = sum(int((~np.isfinite(out)).sum()) for out in outputs.values())
    if bad:
        size = sum(out.size for out in outputs.values())
        raise UserInputError(f"{path}: the model produces NaN or infinite outputs ({bad} of {size} "
                             "values); its weights are probably broken (a diverged training run or a damaged file)")


def check_compatible(meta, bundle) -> None:
    """Refuse data whose classes or channels differ from what the model was trained on."""
    if meta.num_classes != len(bundle.class_names):
        raise UserInputError(f"the model has {meta.num_classes} classes, the data {len(bundle.class_names)} "
                             f"({bundle.class_names[:5]}...); evaluate on the data it was trained on")
    if meta.class_names and list(meta.class_names) != list(bundle.class_names):
        raise UserInputError(f"class names differ: model {meta.class_names[:5]}..., data {bundle.class_names[:5]}...")


def evaluate_runner(runner, bundle, splits: tuple[str, ...] = ("test", "val"), batch_size: int = 64,
                    progress=None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics per split (`{"test": {...}, "val": {...}}`) and the predictions behind them."""
    check_compatible(runner.meta, bundle)
    task = get_task(runner.meta.task)
    metrics, preds = {}, {}
    for split in splits:
        p = predict(runner, bundle, split, batch_size, progress)
        preds[split] = p
        metrics[split] = task.metrics(p, bundle.class_names)
    return task.relate_splits(metrics), preds


def write_metrics(metrics: dict[str, Any], runner_info: dict[str, Any], out_dir: str | Path,
                  class_names: list[str], task: Task, examples: tuple[Any, Any] | None = None,
                  data: dict[str, Any] | None = None) -> Path:
    """Write metrics.json and the task's plots of each split into `out_dir`.

    examples: (bundle, test predictions) to picture (the task decides what, e.g. boxes on test images);
    data: the data configuration measured on, recorded in metrics.json."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out} is a file; metrics.json and the plots go into a folder")
    out.mkdir(parents=True, exist_ok=True)
    task.write_plots(metrics, out, class_names)
    if examples is not None and examples[1] is not None:
        task.write_examples(examples[0], examples[1], out)
    write_json(out / "metrics.json", {"task": task.name, **metrics, "runner": runner_info,
                                      **({"data": data} if data is not None else {})})
    return out / "metrics.json"
