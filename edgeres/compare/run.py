"""Train each variant under the same settings, then measure them alike on the same test split and machine.

A variant whose training finished is reused on a rerun into the same folder (its record says so), and one
interrupted mid-training continues from its last epoch; the measurements are taken afresh every time, since
latency belongs to the machine as it is now.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from edgeres.artifacts import read_json, read_record, write_json
from edgeres.compare.config import CompareConfig, LatencyConfig, class_figures
from edgeres.compare.metrics import ECE_BINS, ImageScorer, task_figures, variant_metrics
from edgeres.errors import UserInputError
from edgeres.train.config import TrainConfig

log = logging.getLogger("edgeres")

SETTINGS_FILE = "settings.json"
TRAINED_FILE = "compare_train.json"  # in each variant's folder: written once its training finished
_NOT_TRAINING = ("out", "resume", "threads")  # TrainConfig fields that do not decide the weights


def compare_models(config: CompareConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train (or reuse) every variant into `config.out`/models/, measure them and write compare.{md,json,html} and
    plots; returns the compare.json document."""
    from edgeres import runtime
    from edgeres.compare.output import write_outputs
    from edgeres.models import model_task
    from edgeres.tasks import get_task

    say = progress or (lambda what: None)
    out = Path(config.out)
    scorer = ImageScorer(config.scoring) if config.scoring.given else None  # a wrong file exits 2 before training
    claim(out, config)
    # One bundle for every variant: the same images, split and preparation, opened once.
    bundle = get_task(model_task(config.models[0])).load_data(config.data)
    training = {}
    for model in config.models:
        say(f"training {model}")
        training[model] = train_variant(config, model, bundle)
    runners = {m: runtime.load(config.variant_dir(m), backend="torch", threads=config.threads)
               for m in config.models}
    say("evaluating")
    variants = [{"model": m, **evaluate_variant(runners[m], bundle, scorer), **training[m]} for m in config.models]
    say("timing")
    latency, load = interleaved_latency(runners, config.latency)
    for v in variants:
        v["latency"] = latency[v["model"]]
        v["p50_ms"] = latency[v["model"]]["p50_ms"]
    first = next(iter(runners.values()))
    task = get_task(first.meta.task)
    # A classifier's document is as it always was; another task's names its task and headline for the report.
    kind = {"ece_bins": ECE_BINS} if class_figures(task) else {
        "task": task.name, "headline": {"key": task.metric, "header": task.report_columns[0],
                                        "scale": task.headline_scale}}
    document = {
        "settings": config.settings(),
        "data": {"source": config.data.source, "img_size": config.data.img_size, "split": "test",
                 "test_images": variants[0]["test_images"], "class_names": list(bundle.class_names)},
        "latency": {"backend": "torch", "device": first.info.device, "threads": first.info.threads, "batch_size": 1,
                    "rounds": config.latency.rounds, "runs_per_round": config.latency.runs,
                    "warmup": config.latency.warmup, "interleaved": True, "load": load},
        **kind,
        **({"image_scores": scorer.summary()} if scorer else {}),
        "variants": variants,
    }
    write_outputs(document, out)
    return document


def claim(out: Path, config: CompareConfig) -> None:
    """Take `out` for this comparison: new or empty, or holding a comparison with the same training settings."""
    settings = json.loads(json.dumps(config.settings(), default=str))
    record = out / SETTINGS_FILE
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out} is a file; compare writes into a folder, choose another --out")
    if record.is_file():
        saved = read_record(record, "it records the settings of the comparison in this folder: remove the folder "
                                    "or choose another --out")
        differ = changed(saved, settings, CompareConfig, set(saved) | set(settings))
        if differ:
            raise UserInputError(f"{out} holds a comparison trained with other settings ({', '.join(differ)} "
                                 f"differ); rerun with the same settings to reuse it, or choose another --out")
        return
    if out.is_dir() and any(out.iterdir()):
        raise UserInputError(f"{out} already holds files and no {SETTINGS_FILE}: compare will not write into a "
                             "folder it did not create; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(record, settings)


def train_variant(config: CompareConfig, model: str, bundle: Any) -> dict[str, Any]:
    """Train `model` into its folder, or reuse the finished training there; returns its training figures."""
    from edgeres.train.loop import train

    directory = config.variant_dir(model)
    if (directory / TRAINED_FILE).is_file():
        _check_same_training(config, model)
        return {**read_json(directory / TRAINED_FILE), "training": "reused"}
    resume = (directory / "last").is_dir() and (directory / "train.json").is_file()
    if directory.exists() and not resume:
        shutil.rmtree(directory)  # half-made by an interrupted comparison, inside a folder compare claimed
    if resume:
        _check_same_training(config, model)
    done = _epochs_done(directory) if resume else 0
    start = time.perf_counter()
    result = train(config.train_config(model, resume=resume), bundle=bundle)
    seconds = [row["seconds"] for row in result.history]
    # A resumed variant's training time: this run's, and the epochs before the interruption as they were timed.
    train_s = time.perf_counter() - start + sum(seconds[:done])
    record = {"train_s": round(train_s, 3), "epoch_s": statistics.fmean(seconds),
              "epochs": len(result.history), "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
              "resumed": resume}
    write_json(directory / TRAINED_FILE, record)
    return {**record, "training": "resumed" if resume else "trained"}


def _epochs_done(directory: Path) -> int:
    """How many epochs an interrupted variant's saved training state holds."""
    from edgeres.train.state import load_state

    state = load_state(directory / "last")
    return 0 if state is None else len(state["history"])


def _check_same_training(config: CompareConfig, model: str) -> None:
    """Refuse to reuse a variant folder whose train.json records other settings than this comparison's."""
    path = config.variant_dir(model) / "train.json"
    saved = read_record(path, "it records how this variant was trained: remove its folder to train it again")
    wanted = json.loads(json.dumps(config.train_config(model).to_dict(), default=str))
    differ = changed(saved, wanted, TrainConfig, set(wanted) - set(_NOT_TRAINING))
    if differ:
        raise UserInputError(f"{path.parent} was trained with other settings ({', '.join(differ)} differ); "
                             "remove that folder or choose another --out")


def changed(saved: dict[str, Any], wanted: dict[str, Any], config: type, keys: set[str]) -> list[str]:
    """The `keys` whose recorded value differs from the wanted one. A setting the record lacks (written by an
    edgeres before that setting existed, e.g. betas and loss) was trained at `config`'s default for it."""
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(config)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    # As the records were written: nested configs as dicts, tuples as lists
    defaults = json.loads(json.dumps({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                                      for k, v in defaults.items()}, default=str))
    return sorted(k for k in keys if saved.get(k, defaults.get(k)) != wanted.get(k, defaults.get(k)))


def evaluate_variant(runner, bundle: Any, scorer: ImageScorer | None = None) -> dict[str, Any]:
    """Test-split metrics (with `scorer`'s LPIPS, FID and KID columns), parameters and MACs of one trained
    model, through the torch Runner."""
    from edgeres.bench.profile import count_macs, count_params
    from edgeres.evaluate.predict import check_compatible, predict
    from edgeres.tasks import get_task

    check_compatible(runner.meta, bundle)
    task = get_task(runner.meta.task)
    predictions = predict(runner, bundle, "test")
    metrics = task.metrics(predictions, bundle.class_names)
    if class_figures(task):
        figures = variant_metrics(metrics, predictions.labels, predictions.probs)
    else:
        figures = task_figures(task, metrics)
    if scorer is not None:
        scored = scorer(predictions)
        figures = {**figures, "metrics": {**figures["metrics"], **scored["metrics"]},
                   "image_scores": scored["image_scores"]}
    return {**figures, "params": count_params(runner.model),
            "macs": count_macs(runner.model, runner.meta.input_shape), "checkpoint": str(runner.info.path)}


def interleaved_latency(runners: dict[str, Any], config: LatencyConfig) -> tuple[dict[str, dict], dict | None]:
    """p50 (and the rest) of each runner at batch 1 over `config.rounds` rounds; each round times every variant
    once, starting one further along each time, so a change in the machine's load reaches all of them alike."""
    from edgeres.bench.latency import Latency, runner_latency
    from edgeres.bench.load import LoadMonitor

    names = list(runners)
    samples: dict[str, list[float]] = {m: [] for m in names}
    threads = next(iter(runners.values())).info.threads
    with LoadMonitor(threads) as monitor:
        for r in range(config.rounds):
            for m in names[r % len(names):] + names[:r % len(names)]:
                # After the other models ran, one untimed call brings this one's weights back into the caches.
                warmup = config.warmup if r == 0 else 1
                samples[m] += runner_latency(runners[m], 1, warmup=warmup, runs=config.runs).samples_ms
    summaries = {m: Latency(s, 1, config.warmup).summary() for m, s in samples.items()}
    return summaries, monitor.result
