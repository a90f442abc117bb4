"""`edgeres run`: a recipe's stages into one run directory, skipping stages whose inputs are unchanged."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from edgeres.artifacts import package_versions, read_json, read_record, sha256_file, write_json
from edgeres.errors import CheckFailed, UserInputError
from edgeres.recipe import Recipe

log = logging.getLogger("edgeres")

STAGES = ("train", "prune", "export", "bench", "explain", "check", "report", "compare")
# Stages that read the data but feed no later stage: their key follows the data alone, so changing them
# invalidates nothing else and changing train does not retrain their variants.
_SIDE_STAGES = {"compare"}
# Stages that continue, rather than redo, what an interrupted run of the same key left behind.
_RESUMABLE: dict[str, Callable[[Path], bool]] = {"train": lambda d: (d / "last").is_dir(), "compare": Path.is_dir}
MANIFEST = "manifest.json"
_NOT_HASHED = {"last"}  # training's resume state: intermediate, large, rewritten every epoch


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _outputs(directory: Path) -> dict[str, str]:
    files = (p for p in sorted(directory.rglob("*")) if p.is_file()
             and not (set(p.relative_to(directory).parts) & _NOT_HASHED))
    return {str(p.relative_to(directory)): sha256_file(p) for p in files}


class Manifest:
    """manifest.json: per stage its input key, outputs with sha256, config, versions and wall time."""

    def __init__(self, run: Path):
        self.path = run / MANIFEST
        self.data = _read_manifest(self.path) if self.path.is_file() else {"stages": {}}

    def wrote(self, stage: str) -> bool:
        """Whether an edgeres run in this directory started writing `stage`'s folder."""
        return stage in self.data["stages"]

    def save(self) -> None:
        write_json(self.path, self.data)

    def is_current(self, stage: str, key: str, directory: Path) -> bool:
        rec = self.data["stages"].get(stage)
        return bool(rec and rec.get("key") == key and rec.get("status") == "done" and directory.is_dir()
                    and _outputs(directory) == rec.get("outputs"))

    def was_started(self, stage: str, key: str) -> bool:
        rec = self.data["stages"].get(stage)
        return bool(rec and rec.get("key") == key and rec.get("status") == "started")

    def record(self, stage: str, **fields: Any) -> None:
        self.data["stages"][stage] = {**self.data["stages"].get(stage, {}), **fields}
        self.save()


def _read_manifest(path: Path) -> dict[str, Any]:
    data = read_record(path, "it is the record of what this run wrote: remove the run directory or choose "
                             "another --out")
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise UserInputError(f"{path} is not an edgeres manifest (no 'stages' mapping); choose another --out")
    return data


def _claim(root: Path) -> Manifest:
    """The run directory's manifest; a folder that holds files but no manifest is someone else's: refused."""
    if root.exists() and not root.is_dir():
        raise UserInputError(f"run directory {root} is a file; choose another --out")
    if root.is_dir() and not (root / MANIFEST).is_file() and any(root.iterdir()):
        raise UserInputError(f"{root} already holds files and no edgeres {MANIFEST}: edgeres will not write "
                             "into (or delete from) a folder it did not create; choose another --out or name")
    root.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(root)
    manifest.save()  # from now on the folder is marked as a run directory
    return manifest


def _clear_stage(manifest: Manifest, stage: str, directory: Path) -> None:
    """Remove a stage's earlier output, but only when the manifest says an edgeres run wrote it."""
    if manifest.wrote(stage) and directory.is_dir() and not directory.is_symlink():
        shutil.rmtree(directory)  # stale: made from other inputs, or half-made by an interrupted run
    elif manifest.wrote(stage):
        directory.unlink()
    elif directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
    else:
        raise UserInputError(f"{directory} exists but {manifest.path} does not record it as written by this run; "
                             "edgeres will not delete it: move it away or choose another --out")


class _Run:
    """Paths of one run directory and what earlier stages produced."""

    def __init__(self, recipe: Recipe, root: Path):
        self.recipe, self.root = recipe, root
        self.dirs = {s: root / ("pruned" if s == "prune" else s) for s in STAGES}

    @property
    def model_dir(self) -> Path:
        return self.dirs["prune"] if self.recipe.prune else self.dirs["train"]

    def data_config(self):
        from edgeres.data import DataConfig

        return DataConfig(**self.recipe.data.model_dump())


def _stage_train(run: _Run, resume: bool) -> None:
    from edgeres.train.config import TrainConfig
    from edgeres.train.loop import train

    t = run.recipe.train
    freeze = t.freeze
    if freeze and not t.weights:
        # Freezing keeps what a weight file taught; with no file the frozen layers would stay random.
        log.warning("train: no weights given (--weights FILE), so freeze: %s is not applied; every layer trains",
                    freeze)
        freeze = None
    train(TrainConfig(model=t.model, data=run.data_config(), out=str(run.dirs["train"]), weights=t.weights,
                      seed=run.recipe.seed, resume=resume, **{**t.training_settings(), "freeze": freeze}))


def _stage_prune(run: _Run, resume: bool) -> None:
    from edgeres.compress.job import FinetuneConfig, compress_checkpoint
    from edgeres.compress.prune import PruneConfig

    p = run.recipe.prune
    given = {k: v for k, v in (("macs", p.macs), ("params", p.params), ("latency", p.latency),
                               ("sparsity", p.sparsity)) if v is not None}
    if len(given) != 1:
        raise UserInputError(f"prune: give exactly one of macs, params, latency or sparsity, got "
                             f"{sorted(given) or 'none'}")
    ft = FinetuneConfig(epochs=p.finetune_epochs, lr=p.lr, teacher=str(run.dirs["train"]) if p.distill else None,
                        temperature=p.temperature, alpha=p.alpha, seed=run.recipe.seed, device=p.device, amp=p.amp)
    if p.sparsity is not None:
        compress_checkpoint(run.dirs["train"], run.dirs["prune"], None, ft, sparsity=p.sparsity)
        return
    (target, amount), = given.items()
    roofline = None
    if target == "latency":
        from edgeres.deploy.estimate import pruning_roofline

        roofline = dict(p.roofline) if p.roofline else pruning_roofline(p.latency_device)
    config = PruneConfig(target=target, amount=amount, importance=p.importance, global_pruning=p.global_pruning,
                         round_to=p.round_to, steps=p.steps, roofline=roofline)
    compress_checkpoint(run.dirs["train"], run.dirs["prune"], config, ft)


def _stage_export(run: _Run, resume: bool) -> None:
    from edgeres.export import ExportConfig, export_checkpoint

    e = run.recipe.export
    doc = export_checkpoint(run.model_dir, run.dirs["export"],
                            ExportConfig(formats=tuple(e.to), precisions=tuple(e.precisions),
                                         calib_size=e.calib_size, max_drop=e.max_drop,
                                         dynamic_batch=e.dynamic_batch, nms=e.nms, max_det=e.max_det,
                                         nms_iou=e.nms_iou, nms_conf=e.nms_conf, int8_preset=e.int8_preset,
                                         int8_per_channel=e.int8_per_channel, int8_method=e.int8_method))
    if not doc["artifacts"]:
        raise CheckFailed(f"every export failed validation; see {run.dirs['export'] / 'export.json'}")


def _bench_paths(run: _Run) -> list[Path]:
    paths = [run.dirs["train"]] + ([run.dirs["prune"]] if run.recipe.prune else [])
    if run.recipe.export:
        doc = read_json(run.dirs["export"] / "export.json")
        paths += [Path(a["file"]) for a in doc["artifacts"] if a["backend"] != "tensorrt"]
    return paths


def _stage_bench(run: _Run, resume: bool) -> None:
    from edgeres.bench.run import BenchConfig, bench_artifacts, write_results

    b = run.recipe.bench
    config = BenchConfig(batch_sizes=tuple(b.batch_sizes), threads=tuple(b.threads), runs=b.runs, warmup=b.warmup,
                         budget_s=b.budget_s, min_seconds=b.min_seconds)
    write_results(bench_artifacts(_bench_paths(run), config), run.dirs["bench"])


def pick_candidate(results: dict[str, Any], choice: str) -> dict[str, Any]:
    """The artifact the gate judges: the fastest (INT8) one at p50, or one named."""
    arts = results["artifacts"]
    if choice in ("fastest-int8", "fastest"):
        pool = [a for a in arts if choice == "fastest" or "int8" in a["precision"]]
        if not pool:
            raise UserInputError(f"check.candidate={choice!r} but no artifact qualifies")
        return min(pool, key=lambda a: a["latency"]["engine"]["p50_ms"] / a["batch_size"])
    named = [a for a in arts if a["name"] == choice or Path(a["path"]).name == choice]
    if not named:
        raise UserInputError(f"check.candidate={choice!r} is none of {[a['name'] for a in arts]}")
    return named[0]


def _stage_check(run: _Run, resume: bool) -> None:
    from edgeres.check import check_artifacts
    from edgeres.evaluate.gate import GateConfig, write_junit

    c = run.recipe.check
    results = read_json(run.dirs["bench"] / "results.json") if run.recipe.bench else None
    if results is None:
        raise UserInputError("the check stage needs a bench stage to pick its candidate from")
    cand = pick_candidate(results, c.candidate)
    config = GateConfig(max_drop=c.max_drop, max_class_drop=c.max_class_drop, max_latency_ms=c.max_latency_ms,
                        max_size_mb=c.max_size_mb, max_explanation_drift=c.max_explanation_drift,
                        explanation_images=c.explanation_images)
    result = check_artifacts(run.dirs["train"], cand["path"], config)
    out = run.dirs["check"]
    out.mkdir(parents=True, exist_ok=True)
    write_junit(result, out / "junit.xml")
    write_json(out / "gate.json", {"baseline": str(run.dirs["train"]), "candidate": cand["path"],
                                   "candidate_name": cand["name"], **result.to_dict()})


def _stage_compare(run: _Run, resume: bool) -> None:
    from edgeres.compare import CompareConfig, ImageScoring, LatencyConfig, compare_models
    from edgeres.data import DataConfig

    c = run.recipe.compare
    data = c.data or run.recipe.data
    compare_models(CompareConfig(models=tuple(c.models), data=DataConfig(**data.model_dump()),
                                 out=str(run.dirs["compare"]), weights=c.weights, seed=run.recipe.seed,
                                 threads=c.threads, **c.training_settings(),
                                 latency=LatencyConfig(rounds=c.rounds, runs=c.runs),
                                 scoring=ImageScoring(c.lpips_weights, c.inception_weights, c.fid_features)))


def _stage_explain(run: _Run, resume: bool) -> None:
    from edgeres.checkpoint import load_meta
    from edgeres.evaluate import load_task_data
    from edgeres.explain import explanation_drifts, gradcam_panel

    e, baseline, out = run.recipe.explain, run.dirs["train"], run.dirs["explain"]
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"baseline": f"{run.recipe.train.model} (trained)", "panel": None, "drift": []}
    if e.panel_images:
        doc["panel"] = gradcam_panel(baseline, out / "gradcam_panel.png", n=e.panel_images)
    paths = _bench_paths(run)[1:]  # every artifact made from the trained model
    if e.drift_images and paths:
        names = _artifact_names(run)
        bundle = load_task_data(load_meta(baseline))
        drifts = explanation_drifts(baseline, paths, images=bundle, n=e.drift_images, window=e.window,
                                    stride=e.stride)
        doc["drift"] = [{"name": names.get(str(path), path.name), **drift.to_dict()}
                        for path, drift in zip(paths, drifts)]
    write_json(out / "explanations.json", doc)


def _artifact_names(run: _Run) -> dict[str, str]:
    """{path: the name bench gave it}, so the report's tables name an artifact alike."""
    if not run.recipe.bench:
        return {}
    return {a["path"]: a["name"] for a in read_json(run.dirs["bench"] / "results.json")["artifacts"]}


def _stage_report(run: _Run, resume: bool) -> None:
    from edgeres.report.render import render_report

    results = read_json(run.dirs["bench"] / "results.json")
    if run.recipe.check:
        results["gate"] = read_json(run.dirs["check"] / "gate.json")
    train = run.dirs["train"]
    metrics = read_json(train / "metrics.json")
    results["evaluation"] = {"name": f"{run.recipe.train.model} (trained)", "task": metrics.get("task"),
                             "metrics": metrics["test"],
                             "plots": [str(train / f) for f in ("confusion_test.png", "roc_pr_test.png")]}
    from edgeres.models.registry import scale_reference

    reference = scale_reference(run.recipe.train.model)
    if reference:
        results["evaluation"]["reference"] = {"name": reference[0], "params": reference[1]}
    if run.recipe.explain:
        explanations = read_json(run.dirs["explain"] / "explanations.json")
        if explanations.get("panel"):
            explanations["panel"] = str(run.dirs["explain"] / "gradcam_panel.png")
        results["explanations"] = explanations
    render_report(results, run.dirs["report"])


_RUNNERS: dict[str, Callable[[_Run, bool], None]] = {
    "train": _stage_train, "prune": _stage_prune, "export": _stage_export, "bench": _stage_bench,
    "explain": _stage_explain, "check": _stage_check, "report": _stage_report, "compare": _stage_compare,
}


def run_recipe(recipe: Recipe, out: str | Path | None = None, force: bool = False,
               on_stage: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Run `recipe`'s stages in order into `out`; returns {stage: "ran"|"skipped"} and the gate verdict."""
    from edgeres import __version__

    root = Path(out or recipe.out or Path("runs") / recipe.name)
    manifest = _claim(root)
    write_json(root / "recipe.json", recipe.model_dump())
    run = _Run(recipe, root)
    upstream = _digest({"data": recipe.data.model_dump() if recipe.data else None, "seed": recipe.seed,
                        "edgeres": __version__})
    data_key = upstream
    done: dict[str, str] = {}
    for stage in STAGES:
        cfg = getattr(recipe, stage)
        if cfg is None:
            continue
        key = _digest({"stage": stage, "config": cfg.model_dump(),
                       "upstream": data_key if stage in _SIDE_STAGES else upstream})
        if stage not in _SIDE_STAGES:
            upstream = key
        directory = run.dirs[stage]
        if not force and manifest.is_current(stage, key, directory):
            done[stage] = "skipped"
            if on_stage:
                on_stage(stage, "unchanged, skipped")
            continue
        resume = stage in _RESUMABLE and manifest.was_started(stage, key) and _RESUMABLE[stage](directory)
        if directory.exists() and not resume:
            _clear_stage(manifest, stage, directory)
        if on_stage:
            on_stage(stage, "resuming" if resume else "running")
        start = time.perf_counter()
        manifest.record(stage, key=key, status="started", config=cfg.model_dump(),
                        started=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        _RUNNERS[stage](run, resume)
        manifest.record(stage, status="done", outputs=_outputs(directory), wall_s=round(time.perf_counter() - start, 2),
                        versions=package_versions())
        done[stage] = "resumed" if resume else "ran"
    gate = read_json(run.dirs["check"] / "gate.json") if recipe.check else None
    return {"run": str(root), "stages": done, "passed": None if gate is None else gate["passed"], "gate": gate}
