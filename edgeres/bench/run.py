"""`edgeres bench`: latency, size, memory and accuracy of artifacts, each measured in its own process."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from edgeres.artifacts import package_versions, write_json
from edgeres.bench.runtime_memory import measure_runtime_memory
from edgeres.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1,)
    threads: tuple[int, ...] = (2,)
    warmup: int = 20
    runs: int = 200
    budget_s: float | None = 20.0    # stop timing one configuration after this long (>= 5 runs kept)
    min_seconds: float = 3.0         # and time for at least this long, however fast the model
    end_to_end: bool = True          # also time a 640x480 frame through preprocessing, inference, postprocessing
    accuracy: bool = True            # evaluate on the test split under the same runner settings
    precision: str | None = None     # ask every runtime for this precision (e.g. fp32); default: its own
    data: str | None = None

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "threads"):
            values = getattr(self, name)
            if not values or any((not isinstance(v, int)) or v < 1 for v in values):
                raise UserInputError(f"{name} must be positive integers, got {values!r}")
        if self.runs < 1 or self.warmup < 0:
            raise UserInputError(f"runs must be >= 1 and warmup >= 0, got {self.runs}, {self.warmup}")
        # A budget of 0 s or less would time only the 5 runs always kept and record a meaningless limit.
        if self.budget_s is not None and not (_is_seconds(self.budget_s) and self.budget_s > 0):
            raise UserInputError(f"--budget (budget_s) must be a number of seconds > 0, got {self.budget_s!r}")
        if not (_is_seconds(self.min_seconds) and self.min_seconds >= 0):
            raise UserInputError(f"--min-seconds (min_seconds) must be a number of seconds >= 0, "
                                 f"got {self.min_seconds!r}")


def _is_seconds(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# The ISA extensions that decide which int8/bf16 kernels a runtime can use: a figure means little without them.
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_info() -> tuple[str, list[str]]:
    """The CPU model name and which of ISA_FLAGS it has (from /proc/cpuinfo; the platform's name elsewhere)."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), [f for f in ISA_FLAGS if f in flags]


def environment() -> dict[str, Any]:
    """The machine and software a measurement belongs to."""
    versions = package_versions()
    cpu, isa = cpu_info()
    return {"cpu": cpu, "isa": isa, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def artifact_size(path: Path) -> int:
    """Bytes on disk of what a target needs: a checkpoint's weights, an IR's .xml + .bin, a file."""
    from edgeres.checkpoint import WEIGHTS_FILE, is_checkpoint

    if is_checkpoint(path):
        return (path / WEIGHTS_FILE).stat().st_size
    if path.suffix == ".xml":
        return path.stat().st_size + path.with_suffix(".bin").stat().st_size
    return path.stat().st_size


def bench_artifacts(paths: list[str | Path], config: BenchConfig = BenchConfig(), baseline: str | None = None,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every artifact at every (batch, threads); one fresh process per artifact and setting."""
    from edgeres.runtime import detect_backend

    entries = []
    for p in map(Path, paths):
        detect_backend(p)  # fail fast, before minutes of measuring, on a path nothing can run
        for threads in config.threads:
            for batch in config.batch_sizes:
                if progress:
                    progress(f"{p.name} batch {batch} threads {threads}")
                entries.append(_measure_in_subprocess(p, batch, threads, config))
    names = [e["name"] for e in entries]
    if baseline is not None and baseline not in names:
        raise UserInputError(f"baseline {baseline!r} is not among the artifacts {names}")
    return {"environment": environment(), "config": dataclasses.asdict(config), "artifacts": entries,
            "baseline": baseline or (names[0] if names else None), "gate": None}


def _measure_in_subprocess(path: Path, batch: int, threads: int, config: BenchConfig) -> dict[str, Any]:
    """Time one setting in a fresh worker, then the runtime's own memory in a second, runtime-only process."""
    job = {"path": str(path), "batch": batch, "threads": threads, "config": dataclasses.asdict(config)}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run([sys.executable, "-m", "edgeres.bench.worker", json.dumps(job)], capture_output=True,
                         text=True, env=env)
    entry = worker_result(res, f"{path} at batch {batch}, threads {threads}")
    hint = (entry.get("runner") or {}).get("extra", {}).get("inference_precision_hint")
    runtime = measure_runtime_memory(path, entry["backend"], entry["input_shape"], threads,
                                     {"INFERENCE_PRECISION_HINT": hint} if hint else None)
    entry["memory"] = {**(runtime or {}), **entry["memory"]}
    return entry


def worker_result(res: subprocess.CompletedProcess, what: str) -> dict[str, Any]:
    """The worker's result; its bad-input error raised again as UserInputError, anything else as RuntimeError."""
    lines = (res.stdout or "").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        answer = None
    if isinstance(answer, dict) and answer.get("error") == "user_input":
        raise UserInputError(str(answer.get("message") or "bad input (the worker gave no message)"))
    if isinstance(answer, dict) and answer.get("error") == "crash":
        raise RuntimeError(f"measuring {what} failed: {answer['type']}: {answer['message']}")
    if res.returncode != 0 or not isinstance(answer, dict):
        cause = (f"was killed by signal {-res.returncode} (out of memory?)" if res.returncode < 0
                 else f"exited with code {res.returncode}")
        tail = (res.stderr or "").strip().splitlines()[-1:]
        raise RuntimeError(f"measuring {what} failed: the worker {cause}" + (f"; {tail[0]}" if tail else ""))
    return answer


def check_out(out_dir: str | Path) -> Path:
    """Refuse an --out that is a file (call it before measuring); the folder is made when results are written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; expected a folder for results.json and the report")
    return out


def write_results(results: dict[str, Any], out_dir: str | Path) -> Path:
    out = check_out(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_json(out / "results.json", results)
