"""`edgeres optimize`: the fastest artifact within an accuracy budget, found by measuring candidates.

The search, in four phases, all inside `out/work/` and recorded step by step in `out/search.json`
(a killed search resumes from its last finished step; the time already spent counts against the budget):

1. probe: the baseline pruned to each kept-MACs fraction with each channel rounding, exported to the
   backend's INT8 and timed together with the dense INT8 file (the hand path) in one interleaved run.
   Latency depends on the structure, not the weights, so this settles which rounding the runtime's
   kernels favour at each fraction and, for `--target-ms`, which fraction meets the target (interpolated
   and probed again). Beside each fraction's fastest uniform structure, a latency-aware one: channels
   ranked across layers by importance per unit of latency on the device's roofline (per layer: compute
   or memory bound, plus overhead; `host` fitted to this CPU's measured latencies) down to the same
   estimated latency; the two are timed side by side. Where the device is not this machine, latency is
   the device profile's roofline estimate of the exported file instead of a measurement.
2. successive halving: every (structure, importance, distillation) candidate is pruned from the baseline
   and fine-tuned a few epochs (BatchNorm statistics re-estimated afterwards); judged on the val split;
   the better share is pruned and fine-tuned again with `eta` times the epochs, from the baseline, so the
   finalist's recipe is one prune stage.
3. quantization: each finalist exported to INT8 in several ways (the exporter's default first), each
   file's val accuracy measured through its Runner, all timed together with the dense INT8 file.
4. gate: the test split decides only now (the trainer writes every candidate's test figures into its
   folder, as it does for any run; the search never reads them). The files that meet the constraints on val, in rank order, go
   through `edgeres check`'s paired gate against the baseline; the first that passes is published.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from edgeres.artifacts import read_json, write_json
from edgeres.checkpoint import checkpoint_dir, checkpoint_sha256, load_checkpoint
from edgeres.errors import UserInputError
from edgeres.optimize.space import (BACKENDS, Candidate, Quantization, Structure, macs_for_latency, quantizations,
                                    rank, validate_grid)

log = logging.getLogger("edgeres")
STATE_FILE = "search.json"


@dataclasses.dataclass(frozen=True)
class OptimizeConfig:
    max_drop: float = 1.0                 # accuracy points against the FP32 baseline (val in the search, test at the gate)
    target_ms: float | None = None        # engine p50 at batch 1 the artifact must meet
    backend: str = "openvino"             # openvino | onnxruntime | tensorrt
    device: str | None = None             # a device profile: latency estimated on it instead of measured here
    budget_minutes: float = 20.0
    macs: tuple[float, ...] = (0.4, 0.25, 0.15, 0.1)
    round_to: tuple[int, ...] = (8, 16, 32)
    importances: tuple[str, ...] = ("l2", "taylor")
    distill: tuple[bool, ...] = (True,)
    allocations: tuple[str, ...] = ("uniform", "latency")  # how channels are shared out over layers
    first_epochs: int = 3                 # fine-tuning epochs of the first rung
    eta: int = 2                          # each rung keeps 1/eta of the candidates and trains eta times longer
    rungs: int = 3
    finalists: int = 2
    lr: float = 1e-3
    batch_size: int = 64
    amp: bool | str = "auto"
    threads: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserInputError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.backend == "tensorrt" and self.device in (None, "host"):
            raise UserInputError("a TensorRT engine is built and timed on an NVIDIA GPU, which this machine lacks: "
                                 "give --device with a Jetson profile to search by its latency estimate")
        if not 0 <= self.max_drop < 100:
            raise UserInputError(f"max_drop is in accuracy points (0-100), got {self.max_drop}")
        if self.target_ms is not None and not self.target_ms > 0:
            raise UserInputError(f"target_ms must be a positive number of milliseconds, got {self.target_ms}")
        if not self.budget_minutes > 0:
            raise UserInputError(f"budget_minutes must be positive, got {self.budget_minutes}")
        validate_grid(self.macs, self.round_to, self.importances, self.allocations)
        for name, least in (("first_epochs", 1), ("eta", 2), ("rungs", 1), ("finalists", 1), ("threads", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UserInputError(f"{name} must be an integer >= {least}, got {value!r}")

    @property
    def measured_here(self) -> bool:
        return self.device in (None, "host")


class _State:
    """search.json: the settings, time spent, and every finished step's record, by key."""

    def __init__(self, out: Path, config: OptimizeConfig, baseline: Path):
        self.path = out / STATE_FILE
        # The budget may change between runs (a resumed search given more time); nothing else may.
        kept = {k: v for k, v in dataclasses.asdict(config).items() if k != "budget_minutes"}
        settings = {"config": kept, "baseline": str(Path(baseline).resolve()),
                    "baseline_sha256": checkpoint_sha256(baseline)}
        if self.path.exists():
            self.data = read_json(self.path)
            old = {k: self.data.get(k) for k in settings}
            if _jsonable(old) != _jsonable(settings):
                raise UserInputError(f"{out} holds a search with other settings or another baseline; resume it "
                                     "with the same options or choose another --out")
            log.info("resuming the search in %s: %d steps done, %.1f of %.1f minutes spent", out,
                     len(self.data["steps"]), self.data["seconds"] / 60, config.budget_minutes)
        else:
            self.data = {**settings, "seconds": 0.0, "steps": {}, "result": None}
        self.started = time.monotonic() - self.data["seconds"]

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def get(self, key: str) -> dict[str, Any] | None:
        return self.data["steps"].get(key)

    def put(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        self.data["steps"][key] = record
        self.save()
        return record

    def save(self) -> None:
        self.data["seconds"] = self.elapsed
        write_json(self.path, self.data)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


class Search:
    """One search: its baseline, work folder, state and the helpers each phase shares."""

    def __init__(self, baseline: str | Path, out: str | Path, config: OptimizeConfig,
                 progress: Callable[[str], None] | None = None):
        self.baseline = checkpoint_dir(baseline)
        self.out, self.config = Path(out), config
        self.work = self.out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.state = _State(self.out, config, self.baseline)
        self.progress = progress or (lambda message: log.info("%s", message))
        _, self.meta = load_checkpoint(self.baseline)
        if not self.meta.data:
            raise UserInputError(f"{self.baseline} records no training data; the search fine-tunes and measures on it")
        metrics = read_json(self.baseline / "metrics.json") if (self.baseline / "metrics.json").exists() else None
        if not metrics or "val" not in metrics:
            raise UserInputError(f"{self.baseline} has no metrics.json with a val split: train it with edgeres "
                                 "train (which writes one) before optimizing")
        from edgeres.tasks import get_task

        self.task = get_task(self.meta.task)
        self.metric = self.task.metric
        self.baseline_metrics = metrics
        self.baseline_val = self.task.headline(metrics["val"])
        self.format = BACKENDS[config.backend]
        self.dense: dict[str, Any] = {}           # the dense INT8 file's record (the hand path)
        self.dense_latency_ms: float | None = None  # its p50 in the latest timing run
        self.all_probes: list[dict[str, Any]] = []
        from edgeres.deploy.estimate import pruning_roofline

        # Latency-aware pruning costs layers on this device's roofline (`host`: fitted to this CPU's
        # measured latencies); an unknown --device fails here, before minutes of work. The numbers are kept
        # in search.json: `host` measures its bandwidth when loaded, and a resumed search must prune the
        # structures it probed, not slightly different ones.
        roofline = pruning_roofline("host" if config.measured_here else config.device)
        self.roofline = self.state.data.setdefault("roofline", roofline)

    # ------------------------------------------------------------ budget and steps

    @property
    def budget_s(self) -> float:
        return self.config.budget_minutes * 60

    def left(self) -> float:
        return self.budget_s - self.state.elapsed

    def say(self, message: str) -> None:
        e = self.state.elapsed
        self.progress(f"[{int(e // 60):02d}:{int(e % 60):02d} of {self.config.budget_minutes:g} min] {message}")

    def step(self, key: str, run: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run one step into work/<key> unless search.json records it done; a folder of a step that was
        killed (no record) is removed and the step runs again."""
        done = self.state.get(key)
        target = self.work / key
        if done is not None and target.exists():
            return done
        shutil.rmtree(target, ignore_errors=True)
        start = time.monotonic()
        record = run(target)
        return self.state.put(key, {**record, "seconds": round(time.monotonic() - start, 2)})

    # ------------------------------------------------------------ building blocks

    def export_int8(self, ckpt: Path, out: Path, quant: Quantization, validate_size: int = 64) -> dict[str, Any]:
        from edgeres.export import ExportConfig, export_checkpoint

        fields = quant.export_fields()
        if self.config.backend != "openvino":
            fields["max_drop"] = None  # NNCF's accuracy control is OpenVINO's
        cfg = ExportConfig(formats=(self.format,), precisions=("int8",), dynamic_batch=False,
                           validate_size=validate_size, **fields)
        doc = export_checkpoint(ckpt, out, cfg)
        entry = doc["artifacts"][0] if doc["artifacts"] else None
        if entry is None:
            reason = doc["failed"][0].get("error") or "; ".join(doc["failed"][0]["validation"]["failures"])
            return {"file": None, "val": None, "error": reason}
        file = entry["file"] if self.format != "tensorrt" else str(Path(entry["file"]) / "model.int8.onnx")
        return {"file": file, "val": entry["validation"].get(f"val_{self.metric}"), "bytes": entry["bytes"]}

    def latencies(self, files: list[str]) -> dict[str, dict[str, float]]:
        """p50 (ms) of each file (and of the dense INT8 file itself) and its ratio to the dense INT8 file:
        timed together here, or estimated on the device profile."""
        dense = self.dense["file"]
        if not self.config.measured_here:
            from edgeres.deploy.estimate import estimate

            ref = estimate(dense, self.config.device, batch=1).total_ms
            return {f: {"latency_ms": (ms := estimate(f, self.config.device, batch=1).total_ms),
                        "ratio_to_dense": ms / ref, "how": f"estimate on {self.config.device}"}
                    for f in [dense, *files]}
        from edgeres.optimize.timing import time_files

        timed = time_files([dense, *files], threads=self.config.threads)
        return {t["path"]: {"latency_ms": t["p50_ms"], "ratio_to_dense": t["ratio_to_reference"],
                            "how": f"measured, {self.config.threads} threads, interleaved with the dense INT8 file"}
                for t in timed["files"]}

    def prune_config(self, st: Structure, importance: str = "l2"):
        from edgeres.compress.prune import PruneConfig

        if st.allocation == "latency":
            return PruneConfig(target="latency", amount=st.amount, importance=importance, round_to=st.round_to,
                               global_pruning=True, roofline=self.roofline)
        return PruneConfig(target="macs", amount=st.macs, importance=importance, round_to=st.round_to)

    def prune(self, cand: Candidate, out: Path) -> dict[str, Any]:
        from edgeres.compress.job import FinetuneConfig, compress_checkpoint

        c = self.config
        prune_config = self.prune_config(cand.structure, cand.importance)
        finetune = FinetuneConfig(epochs=cand.epochs, lr=c.lr, batch_size=c.batch_size, seed=c.seed, amp=c.amp,
                                  teacher=str(self.baseline) if cand.distill else None, alpha=0.3)
        summary = compress_checkpoint(self.baseline, out, prune_config, finetune,
                                      source_metrics={"test": self.baseline_metrics["test"]})
        # The trainer also scores the test split into metrics.json; the search reads only val from it.
        metrics = read_json(out / "metrics.json")
        return {"kind": "train", "candidate": _candidate_dict(cand), "checkpoint": str(out),
                "val": self.task.headline(metrics["val"]), "macs_fraction": summary["prune"]["macs_fraction"],
                "params": summary["after"]["params"], "macs": summary["after"]["macs"]}


def _candidate_dict(cand: Candidate) -> dict[str, Any]:
    return {**dataclasses.asdict(cand), "key": cand.key, "label": cand.label()}


__all__ = ["Candidate", "OptimizeConfig", "Quantization", "STATE_FILE", "Search", "Structure", "macs_for_latency",
           "quantizations", "rank"]
