"""One measurement in a fresh process, so nothing of another measurement stays in it: prints one JSON line.

The line is the result, or {"error": "user_input", "message": ...} for bad input (the parent raises it
again as UserInputError: one line, exit 2) or {"error": "crash", ...} for anything else (its traceback
goes to stderr). The process's peak memory is the harness's (torch, data, timing); the runtime's own
is measured apart, by edgeres.bench.runtime_memory.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.bench.load import LoadMonitor
from edgeres.bench.runtime_memory import rss_mb
from edgeres.errors import UserInputError


def end_to_end_call(runner, frame: np.ndarray):
    """One camera frame through what `edgeres predict` does: the task's preprocessing (resize or letterbox),
    inference, and its postprocessing (class probabilities, or box decode and NMS) into a prediction."""
    from PIL import Image

    from edgeres.runtime.base import run_any_batch
    from edgeres.tasks import get_task

    task, meta = get_task(runner.meta.task), runner.meta
    names = list(meta.class_names or [str(i) for i in range(meta.num_classes)])
    image = Image.fromarray(frame)

    def call():
        x, context = task.prepare(image, meta)
        return task.describe(run_any_batch(runner, x[None]), [context], names)
    return call


def measure(path: str, batch: int, threads: int, config: dict[str, Any]) -> dict[str, Any]:
    from edgeres import runtime
    from edgeres.bench.latency import runner_latency, time_calls
    from edgeres.bench.profile import count_macs, count_params
    from edgeres.bench.run import artifact_size
    from edgeres.checkpoint import build_model

    runner = runtime.load(path, precision=config["precision"], threads=threads)
    with LoadMonitor(threads) as load:
        lat = runner_latency(runner, batch, config["warmup"], config["runs"], config["budget_s"],
                             min_seconds=config["min_seconds"])
        engine = {**lat.summary(), "samples_ms": lat.samples_ms}
        end_to_end = None
        if config["end_to_end"] and batch == 1 and runner.info.input_shape[0] in (None, 1):
            frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)  # a VGA camera frame
            e2e = time_calls(end_to_end_call(runner, frame), config["warmup"], config["runs"],
                             config["budget_s"], min_seconds=config["min_seconds"])
            end_to_end = {**e2e.summary(), "samples_ms": e2e.samples_ms}
    harness_peak_mb = rss_mb("VmHWM")
    model = build_model(runner.meta)
    entry = {
        "name": _name(Path(path), batch, threads, config), "path": path, "backend": runner.info.backend,
        "precision": runner.info.precision, "threads": threads, "batch_size": batch,
        "input_shape": [batch, *runner.meta.input_shape], "size_bytes": artifact_size(Path(path)),
        "params": count_params(model), "macs": count_macs(model, runner.meta.input_shape),
        "memory": {"harness_peak_mb": round(harness_peak_mb, 1)}, "load": load.result,
        "latency": {"engine": engine, "end_to_end": end_to_end},
        "runner": runner.info.to_dict(), "task": runner.meta.task, "metrics": None,
        "class_names": runner.meta.class_names,
    }
    if config["accuracy"]:
        entry["metrics"] = _test_metrics(runner, config["data"])
    return entry


def _test_metrics(runner, data: str | None) -> dict[str, Any]:
    """The runner's task metrics on the test split."""
    from edgeres.evaluate import evaluate_runner, load_task_data

    metrics, _ = evaluate_runner(runner, load_task_data(runner.meta, data), splits=("test",))
    return metrics["test"]


def _name(path: Path, batch: int, threads: int, config: dict[str, Any]) -> str:
    from edgeres.checkpoint import is_checkpoint

    name = f"{path.name} (torch)" if is_checkpoint(path) else path.name
    if len(config["batch_sizes"]) > 1:
        name += f" b{batch}"
    if len(config["threads"]) > 1:
        name += f" t{threads}"
    return name


def main(job: dict[str, Any]) -> int:
    """Measure one job and print its JSON line; the exit code says which kind of line it is."""
    try:
        answer, code = measure(job["path"], job["batch"], job["threads"], job["config"]), 0
    except UserInputError as e:
        answer, code = {"error": "user_input", "message": str(e)}, 2
    except Exception as e:  # noqa: BLE001 - reported to the parent, which names the artifact and setting
        traceback.print_exc()
        answer, code = {"error": "crash", "type": type(e).__name__, "message": str(e)}, 1
    sys.stdout.write(json.dumps(answer) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
