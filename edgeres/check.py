"""`edgeres check`: evaluate a baseline and a candidate on the same test images and run the gate. It sits
above `evaluate` and `bench` (it uses both, and the bench worker uses `evaluate`).

The gate only means something when the candidate was made from the baseline (exported, pruned, quantized
from it): lineage is read from the sha256 records every edgeres artifact carries, and an unrelated pair is
refused unless the caller says it is intended.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from edgeres import runtime
from edgeres.artifacts import EXPORT_RECORD, read_json
from edgeres.bench.latency import runner_latency
from edgeres.bench.run import artifact_size
from edgeres.checkpoint import checkpoint_sha256, is_checkpoint, load_meta
from edgeres.errors import UserInputError
from edgeres.evaluate import load_task_data
from edgeres.evaluate.gate import GateConfig, GateResult, check
from edgeres.evaluate.predict import check_compatible, predict
from edgeres.tasks import get_task

log = logging.getLogger("edgeres")


def _recorded(path: Path, runner: Any) -> tuple[str | None, str | None]:
    """(the weights sha256 the artifact holds, its parent checkpoint's sha256), as far as they are recorded.

    A checkpoint is identified by its weights file; an export by the checkpoint it was exported from.
    """
    if is_checkpoint(path):
        return checkpoint_sha256(path), runner.meta.parent_sha256
    return runner.info.extra.get("export_source_sha256"), runner.meta.parent_sha256


def _nearby_checkpoints(paths: tuple[Path, ...]) -> dict[str, str | None]:
    """{weights sha256: parent sha256} of checkpoints beside or above `paths`, to follow lineage through."""
    folders: set[Path] = set()
    for p in paths:
        p = p.resolve()
        record = p.parent / EXPORT_RECORD
        doc = read_json(record) if p.is_file() and record.is_file() else None
        source = doc.get("source") if isinstance(doc, dict) else None
        if isinstance(source, str):
            folders.add(Path(source).resolve())
        here = p if p.is_dir() else p.parent
        for up in (here, *list(here.parents)[:2]):
            folders.add(up)
            with contextlib.suppress(OSError):  # an unreadable folder holds nothing we can use
                folders.update(c for c in up.iterdir() if c.is_dir())
    found = {}
    for folder in sorted(folders):
        if is_checkpoint(folder) and folder.is_dir():
            try:
                found[checkpoint_sha256(folder)] = load_meta(folder).parent_sha256
            except UserInputError:
                continue  # a broken checkpoint nearby cannot vouch for anything
    return found


def unrelated_reason(baseline: str | Path, candidate: str | Path, base: Any, cand: Any) -> str | None:
    """Why `candidate` cannot be shown to descend from `baseline`, or None when it does."""
    identity = {_recorded(Path(baseline), base)[0]} - {None}
    ancestry = set(_recorded(Path(candidate), cand)) - {None}
    parents = {} if identity & ancestry else _nearby_checkpoints((Path(candidate), Path(baseline)))
    frontier = set(ancestry)
    while frontier:  # follow parent_sha256 through the checkpoints found nearby
        frontier = {parents[s] for s in frontier if parents.get(s)} - ancestry
        ancestry |= frontier
    if identity and identity & ancestry:
        return None
    what = f"weights sha256 {next(iter(identity))[:12]}" if identity else "no recorded weights sha256"
    return (f"{candidate} does not descend from {baseline}: the baseline has {what}, which is not among the "
            f"candidate's own or recorded source checkpoints ({', '.join(sorted(s[:12] for s in ancestry)) or 'none'})"
            "; a gate between unrelated models measures nothing")


def check_outputs(**outputs: str | Path | None) -> None:
    """Refuse report paths the gate could not write, before minutes of evaluating both models.

    outputs: {option name: path or None}, e.g. junit=..., json=...; a path must not be a folder, and its
    nearest existing parent must be a folder this process can write into (missing folders are made).
    """
    for option, value in outputs.items():
        if value is None:
            continue
        path, flag = Path(value), f"--{option.replace('_', '-')}"
        if path.is_dir():
            raise UserInputError(f"{flag} {path} is a folder; expected a file path for the {option} report")
        parent = next(p for p in (path.absolute().parent, *path.absolute().parents) if p.exists())
        if not parent.is_dir():
            raise UserInputError(f"{flag} {path}: {parent} is a file, so the report cannot be written beneath it")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserInputError(f"{flag} {path}: the folder {parent} is not writable; choose another path")


def check_artifacts(baseline: str | Path, candidate: str | Path, config: GateConfig, data: str | None = None,
                    threads: int | None = None, allow_unrelated: bool = False) -> GateResult:
    """Gate `candidate` against `baseline`: paired predictions on the baseline's test split.

    allow_unrelated: gate a candidate that does not descend from the baseline, with a warning, instead of
    refusing it.
    """
    base = runtime.load(baseline, threads=threads)
    cand = runtime.load(candidate, threads=threads)
    if cand.meta.task != base.meta.task:
        raise UserInputError(f"the baseline is a {base.meta.task} model, the candidate a {cand.meta.task} one; "
                             "the gate compares two models of one task")
    if list(base.meta.class_names or []) != list(cand.meta.class_names or []):
        raise UserInputError(f"baseline and candidate classify different classes: {base.meta.class_names} vs "
                             f"{cand.meta.class_names}")
    bundle = load_task_data(base.meta, data)
    check_compatible(cand.meta, bundle)
    if cand.meta.input_shape != base.meta.input_shape:
        raise UserInputError(f"input shapes differ: baseline {base.meta.input_shape}, candidate "
                             f"{cand.meta.input_shape}; the gate compares models on the same images")
    unrelated = unrelated_reason(baseline, candidate, base, cand)
    if unrelated and not allow_unrelated:
        raise UserInputError(f"{unrelated}. Pass --allow-unrelated (allow_unrelated=True) to gate them anyway")
    latency = None
    if config.max_latency_ms is not None:
        latency = runner_latency(cand, 1, warmup=10, runs=100, budget_s=10).summary()["p50_ms"]
    size = artifact_size(Path(candidate)) / 1e6 if config.max_size_mb is not None else None
    drift = None
    if config.max_explanation_drift is not None:
        from edgeres.explain import explanation_drift

        drift = explanation_drift(baseline, candidate, images=bundle, n=config.explanation_images).to_dict()
    result = check(predict(base, bundle), predict(cand, bundle), bundle.class_names, config,
                   candidate_latency_ms=latency, candidate_size_mb=size, task=get_task(base.meta.task),
                   explanation_drift=drift)
    if unrelated:
        log.warning("%s (allowed by --allow-unrelated)", unrelated)
        result.warnings.append(f"{unrelated} (allowed by --allow-unrelated)")
    return result
