"""Peak memory of the inference runtime alone: a fresh process that imports only the runtime, loads the
artifact, runs the benchmark batch a few times and reports its resident memory before loading and at peak.

The measuring worker's own peak holds torch, the test data and the harness (~750 MB for any artifact), so
it says nothing about what a device needs. This file runs as a script in Python's isolated mode (`-I`: no
script folder, no working directory, no PYTHONPATH on sys.path) and imports nothing from edgeres at module
level, so an ONNX or OpenVINO measurement carries no torch; `imported` in its answer lets a caller check.
A checkpoint's runtime is torch itself: that case imports edgeres's torch Runner.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

CALLS = 5  # the first call sizes the runtime's arenas; a few more show they do not grow
BACKENDS = ("onnxruntime", "openvino", "torch")


def measure_runtime_memory(path: str | Path, backend: str, input_shape: list[int], threads: int,
                           openvino_config: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Run the probe in a fresh isolated process; None for a backend it cannot host (e.g. TensorRT)."""
    if backend not in BACKENDS:
        return None
    job = {"path": str(path), "backend": backend, "input_shape": list(input_shape), "threads": threads,
           "openvino_config": openvino_config or {}, "import_root": str(Path(__file__).resolve().parents[2])}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run([sys.executable, "-I", __file__, json.dumps(job)], capture_output=True, text=True, env=env)
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        tail = (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1]
        raise RuntimeError(f"measuring the runtime memory of {path} ({backend}) failed: {tail}")
    return json.loads(lines[-1])


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MB; ru_maxrss where /proc is missing.

    VmHWM belongs to this process's own address space. ru_maxrss does not: Linux carries the parent's
    high-water mark across fork/vfork + exec, so a worker started by a 1.3 GB process reported 1.3 GB
    for any model.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


def _import_runtime(job: dict[str, Any]) -> Any:
    if job["backend"] == "onnxruntime":
        import onnxruntime

        return onnxruntime
    if job["backend"] == "openvino":
        import openvino

        return openvino
    sys.path.insert(0, job["import_root"])  # isolated mode left edgeres out; torch checkpoints need its loader
    from edgeres.runtime import load

    return load


def _open(job: dict[str, Any], runtime: Any) -> tuple[Callable[[Any], Any], Any]:
    """A call running one batch, and the input dtype the artifact takes."""
    import numpy as np

    threads = job["threads"]
    if job["backend"] == "onnxruntime":
        options = runtime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        session = runtime.InferenceSession(job["path"], options, providers=["CPUExecutionProvider"])
        graph_input = session.get_inputs()[0]
        dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32
        return (lambda x: session.run(None, {graph_input.name: x})), dtype
    if job["backend"] == "openvino":
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, **job["openvino_config"]}
        request = runtime.Core().compile_model(job["path"], "CPU", config).create_infer_request()
        return (lambda x: request.infer({0: x}, share_inputs=True)), np.float32
    runner = runtime(job["path"], "torch", None, threads)
    return runner.run, np.float32


def main(job: dict[str, Any]) -> dict[str, Any]:
    """Import the runtime, note the resident memory, load and run the artifact, note the peak."""
    runtime = _import_runtime(job)
    import numpy as np

    baseline = rss_mb("VmRSS")
    run, dtype = _open(job, runtime)
    batch = np.random.default_rng(0).standard_normal(job["input_shape"], dtype=np.float32).astype(dtype)
    for _ in range(CALLS):
        run(batch)
    peak = rss_mb("VmHWM")
    return {"runtime_baseline_mb": round(baseline, 1), "runtime_peak_mb": round(peak, 1),
            "runtime_increment_mb": round(peak - baseline, 1), "calls": CALLS,
            "imported": {name: name in sys.modules for name in ("torch", "edgeres", "onnxruntime", "openvino")}}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(main(json.loads(sys.argv[1]))) + "\n")
