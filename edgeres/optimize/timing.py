"""Engine latency of several exported files, timed side by side in one fresh process.

A search compares candidates measured minutes apart on a machine whose load comes and goes, so each
measurement times the candidate files together with a reference (the dense INT8 file of the same
network) in interleaved rounds: every round gives each file one untimed call and a block of timed
calls, in an order reversed every other round. What the search ranks by is each file's p50 and its
paired ratio to the reference (median over rounds of the ratio of block p50s), which a slow spell of
the machine moves far less than a bare p50.

Run as `python -m edgeres.optimize.timing JOB_JSON`: prints one JSON line (the result, or an error
record that `edgeres.bench.run.worker_result` turns back into an exception).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np


def time_files(paths: list[str | Path], threads: int = 2, rounds: int = 8, block: int = 15,
               warmup: int = 5) -> dict[str, Any]:
    """p50 (ms) of each file and its paired ratio to paths[0], measured in a fresh process."""
    from edgeres.bench.run import worker_result

    job = {"paths": [str(p) for p in paths], "threads": threads, "rounds": rounds, "block": block,
           "warmup": warmup}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run([sys.executable, "-m", "edgeres.optimize.timing", json.dumps(job)],
                         capture_output=True, text=True, env=env)
    return worker_result(res, f"timing {len(paths)} files")


def measure(job: dict[str, Any]) -> dict[str, Any]:
    from edgeres import runtime
    from edgeres.bench.latency import time_calls
    from edgeres.bench.load import LoadMonitor

    runners = [runtime.load(p, threads=job["threads"]) for p in job["paths"]]
    calls = []
    for r in runners:
        shape = [1 if d is None else d for d in r.info.input_shape]
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        calls.append(lambda r=r, x=x: r.run(x))
    for call in calls:
        time_calls(call, warmup=job["warmup"], runs=1)
    blocks: list[list[float]] = [[] for _ in calls]
    with LoadMonitor(job["threads"]) as load:
        for i in range(job["rounds"]):
            order = range(len(calls)) if i % 2 == 0 else reversed(range(len(calls)))
            for k in order:
                blocks[k].append(float(np.median(time_calls(calls[k], warmup=1, runs=job["block"]).samples_ms)))
    reference = np.asarray(blocks[0])
    files = []
    for path, b in zip(job["paths"], blocks):
        b = np.asarray(b)
        files.append({"path": path, "p50_ms": float(np.median(b)),
                      "ratio_to_reference": float(np.median(b / reference)),
                      "block_p50s_ms": [round(v, 4) for v in b]})
    return {"files": files, "rounds": job["rounds"], "block": job["block"], "threads": job["threads"],
            "load": load.result}


def main(argv: list[str]) -> int:
    from edgeres.errors import UserInputError

    try:
        print(json.dumps(measure(json.loads(argv[0]))))
    except UserInputError as e:
        print(json.dumps({"error": "user_input", "message": str(e)}))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it again
        traceback.print_exc()
        print(json.dumps({"error": "crash", "type": type(e).__name__, "message": str(e)}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
