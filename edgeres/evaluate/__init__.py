"""Evaluation: the metrics of any artifact (its task's), measured under its own runtime on its own test split."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from edgeres.meta import checkpoint_dir, is_checkpoint
from edgeres.data import DataConfig
from edgeres.errors import UserInputError
from edgeres.evaluate.predict import evaluate_runner, predict, write_metrics
from edgeres.tasks import get_task


def data_config_for(meta, data: str | None = None) -> DataConfig:
    """The data an artifact was trained on (from its metadata), or `data` at the artifact's input size."""
    if data is not None and not data.strip():
        raise UserInputError("data (--data) is empty; give a built-in data set name or an image folder, or leave "
                             "it out to use the data the model was trained on")
    if meta.data:
        cfg = DataConfig.from_dict(meta.data)
        return dataclasses.replace(cfg, source=data) if data else cfg
    if not data:
        raise UserInputError("this model records no training data; pass --data (a built-in name or a folder)")
    return DataConfig(source=data, img_size=meta.img_size, in_chans=meta.in_chans)


def load_task_data(meta, data: str | None = None) -> Any:
    """The data of `data_config_for(meta, data)`, opened the way the model's task reads it."""
    return get_task(meta.task).load_data(data_config_for(meta, data))


def default_eval_dir(path: str | Path, other_data: str | None = None) -> Path:
    """Checkpoints keep their metrics inside; an exported file gets `<name>.eval/` beside it. Metrics on other data
    than the model's own (`other_data`) get a folder of their own, `eval-<data>/` inside a checkpoint and
    `<name>.eval-<data>/` beside a file, so the run's own metrics.json stays the run's."""
    p = Path(path)
    suffix = f"-{_slug(other_data)}" if other_data else ""
    if is_checkpoint(p):
        return checkpoint_dir(p) / f"eval{suffix}" if suffix else checkpoint_dir(p)
    return p.parent / f"{p.name}.eval{suffix}"


def _slug(data: str) -> str:
    """A folder-name part for a data set name or path: its last component, [A-Za-z0-9._-] only."""
    name = Path(data.rstrip("/\\")).name or "data"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "data"


def evaluate_artifact(path: str | Path, data: str | None = None, out: str | Path | None = None,
                      backend: str | None = None, precision: str | None = None, threads: int | None = None,
                      batch_size: int = 64, progress=None) -> tuple[dict[str, Any], Path]:
    """Evaluate a checkpoint or exported file on its test and val splits; write metrics.json (which records the
    data) and plots."""
    from edgeres import runtime

    runner = runtime.load(path, backend=backend, precision=precision, threads=threads)
    config = data_config_for(runner.meta, data)  # recorded in metrics.json, so not load_task_data
    task = get_task(runner.meta.task)
    bundle = task.load_data(config)
    other = data if data and data != (runner.meta.data or {}).get("source") else None
    metrics, predictions = evaluate_runner(runner, bundle, batch_size=batch_size, progress=progress)
    written = write_metrics(metrics, runner.info.to_dict(), out or default_eval_dir(path, other), bundle.class_names,
                            task, examples=(bundle, predictions.get("test")), data=config.to_dict())
    return metrics, written


__all__ = ["data_config_for", "evaluate_artifact", "load_task_data", "evaluate_runner", "predict", "write_metrics"]
