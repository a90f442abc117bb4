"""edgeres's OpenVINO p50 against OpenVINO's own benchmark_app on the same IR (ResNet-18, batch 1).

For an fp32 and an NNCF INT8 IR, alternates `benchmark_app` (latency hint, sync API, one request) with
edgeres's `runner_latency` on an OpenVINO Runner, each for the same time, a few times over; reports both
p50s and edgeres/benchmark_app. Both sides use the same threads and the same inference precision: the
Runner reports the precision it executes and benchmark_app is given that one with -infer_precision.

benchmark_app refuses -nthreads together with -hint latency (a rule of its command line, not of
OpenVINO), so the thread count reaches it as INFERENCE_NUM_THREADS through -load_config. It also treats a
3-channel 4-D input as an image and feeds it as u8 (a Convert inside the graph) unless told -ip f32.

Two differences remain by construction, both against edgeres: `-shape` makes benchmark_app compile the
dynamic-batch IR as a static batch-1 model, while the Runner compiles the IR as exported (dynamic batch);
and benchmark_app reports the request's own C++ timer, while runner_latency times the Python call
(input binding and the output copy included).

On a shared machine the load swings from one few-second spell to the next, so the figure judged is the
median of the per-repeat ratios (each from two back-to-back runs); the ratio of the two sides' median p50s
is reported too. More, shorter repeats pair better than a few long ones.

Usage: python benchmarks/benchmark_app_check.py [--threads 2] [--seconds 5] [--repeats 12] [--quick] [--table-only]
       (--seconds 15 --repeats 3 is the plain `benchmark_app -t 15` comparison, fine on a quiet machine)
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import edgeres.runtime
from edgeres.bench.latency import runner_latency
import method
from edgeres.bench.load import LoadMonitor
from runtimes import CALIBRATION_IMAGES, CALIBRATION_NOTE, build_model, export_openvino_pair, pseudo_images

NAME = "benchmark_app"
AGREEMENT_LIMIT = 0.10
# What the Runner is asked for per IR: fp32 pinned to f32; INT8 leaves the float layers to the plugin default.
REQUESTED = {"openvino_fp32": "fp32", "openvino_int8": None}


def benchmark_app_path() -> str:
    """The benchmark_app next to this Python (the openvino wheel's console script), else the one on PATH."""
    beside = Path(sys.executable).with_name("benchmark_app")
    found = str(beside) if beside.exists() else shutil.which("benchmark_app")
    if not found:
        raise SystemExit("benchmark_app not found: install openvino (it ships the console script)")
    return found


def run_benchmark_app(xml: Path, threads: int, precision_hint: str, seconds: int, folder: Path) -> dict[str, Any]:
    """One benchmark_app run; its median latency read from the CSV report, plus what it compiled."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "threads.json"
    config.write_text(json.dumps({"CPU": {"INFERENCE_NUM_THREADS": str(threads)}}))
    cmd = [benchmark_app_path(), "-m", str(xml), "-d", "CPU", "-hint", "latency", "-load_config", str(config),
           "-t", str(seconds), "-shape", "[1,3,224,224]", "-ip", "f32", "-infer_precision", precision_hint,
           "-latency_percentile", "50", "-report_type", "no_counters", "-report_folder", str(folder),
           "-dump_config", str(folder / "config_set.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark_app failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    report = _csv_report(folder / "benchmark_report.csv")
    compiled = dict(re.findall(r"\[ INFO \]   (INFERENCE_NUM_THREADS|INFERENCE_PRECISION_HINT|PERFORMANCE_HINT|"
                               r"NUM_STREAMS|ENABLE_CPU_PINNING): (.+)", proc.stdout))
    median = re.search(r"Median:\s+([\d.]+) ms", proc.stdout)
    return {"p50_ms": float(report["latency (ms)"]), "stdout_median_ms": float(median.group(1)) if median else None,
            "iterations": int(report["total number of iterations"]), "api": report.get("API"),
            "requests": report.get("number of parallel infer requests"), "compiled": compiled,
            "command": " ".join(cmd[1:])}


def _csv_report(path: Path) -> dict[str, str]:
    """benchmark_report.csv is `key;value` lines grouped under section titles: flatten it."""
    with path.open(newline="") as f:
        return {row[0]: row[1] for row in csv.reader(f, delimiter=";") if len(row) >= 2}


def check_ir(name: str, xml: Path, threads: int, seconds: int, repeats: int, folder: Path) -> dict[str, Any]:
    """Alternate benchmark_app and edgeres `repeats` times on one IR (order flipped each time)."""
    runner = edgeres.runtime.load(xml, "openvino", REQUESTED[name], threads)
    hint = runner.info.extra["inference_precision_hint"]
    runner_latency(runner, warmup=10, runs=10)  # first-call allocations out of the way
    app_runs, edgeres_runs = [], []
    for i in range(repeats):
        def app() -> None:
            app_runs.append(run_benchmark_app(xml, threads, hint, seconds, folder / f"{name}-{i}"))

        def ours() -> None:
            edgeres_runs.append(runner_latency(runner, warmup=5, runs=1_000_000, budget_s=seconds).summary())
        for step in ((app, ours) if i % 2 == 0 else (ours, app)):
            step()
        print(f"  {name} #{i + 1}: benchmark_app {app_runs[-1]['p50_ms']:.2f} ms, "
              f"edgeres {edgeres_runs[-1]['p50_ms']:.2f} ms", flush=True)
    app_p50 = statistics.median(r["p50_ms"] for r in app_runs)
    ours_p50 = statistics.median(r["p50_ms"] for r in edgeres_runs)
    per_repeat = [e["p50_ms"] / a["p50_ms"] for a, e in zip(app_runs, edgeres_runs)]
    ratio = method.paired(per_repeat)
    paired = ratio["ratio_p50"]
    return {
        "ir": name, "runner_precision": runner.info.precision, "inference_precision_hint": hint,
        "runner_threads": runner.info.threads, "runner_performance_hint": runner.info.extra["performance_hint"],
        "benchmark_app_p50_ms": app_p50, "edgeres_p50_ms": ours_p50, "ratio_of_medians": ours_p50 / app_p50,
        "ratio_paired_median": paired, "ratio_paired_ci95": ratio["ratio_p50_ci95"], "ratio_per_repeat": per_repeat,
        "within_limit": abs(paired - 1) <= AGREEMENT_LIMIT,
        "benchmark_app_runs": app_runs, "edgeres_runs": edgeres_runs,
    }


def markdown(result: dict[str, Any]) -> str:
    """The README block of a saved result."""
    lines = ["| IR | precision executed (both) | benchmark_app p50 ms | edgeres p50 ms | edgeres / benchmark_app: "
             "median of paired repeats (95% CI) | ratio of medians | paired range |", "|---|---|---|---|---|---|---|"]
    for r in result["irs"]:
        per = r["ratio_per_repeat"]
        lo, hi = r.get("ratio_paired_ci95") or (min(per), max(per))
        lines.append(f"| {r['ir']} | {r['runner_precision']} (hint {r['inference_precision_hint']}) | "
                     f"{r['benchmark_app_p50_ms']:.2f} | {r['edgeres_p50_ms']:.2f} | "
                     f"{r['ratio_paired_median']:.3f} ({lo:.3f}-{hi:.3f}) | {r['ratio_of_medians']:.3f} | "
                     f"{min(per):.2f}-{max(per):.2f} |")
    verdict = "yes" if result["all_within_limit"] else "NO"
    return ("\n".join(lines) + "\n\n" + method.footer(result)
            + f"\n    within {result['agreement_limit']:.0%}: {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=5, help="duration of each benchmark_app / edgeres run")
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--workdir", help="keep the IRs and benchmark_app reports here (default: a temporary folder)")
    method.add_output_arguments(ap)
    args = method.quick(ap.parse_args(), seconds=1, repeats=2)
    if args.table_only:
        return method.rerender(NAME, args, markdown)
    start = time.perf_counter()
    model, meta = build_model()
    with tempfile.TemporaryDirectory(prefix="edgeres-bapp-") as tmp, LoadMonitor(args.threads) as load:
        work = Path(args.workdir or tmp)
        print(f"exporting resnet18 (random weights) to {work} ...", flush=True)
        paths = export_openvino_pair(model, meta, work, pseudo_images(CALIBRATION_IMAGES, meta))
        rows = [check_ir(name, paths[name], args.threads, args.seconds, args.repeats, work / "reports")
                for name in REQUESTED]
    result = method.record(
        NAME, args, start, model="resnet18", weights="random (torch seed 0)", input=[1, 3, 224, 224],
        calibration=CALIBRATION_NOTE, agreement_limit=AGREEMENT_LIMIT,
        edgeres_side="edgeres.bench.latency.runner_latency (Runner.run, no input check), IR kept dynamic-batch",
        benchmark_app_side="latency hint, sync API, 1 request, -shape [1,3,224,224] (static), -ip f32, "
                           "random input, INFERENCE_NUM_THREADS via -load_config",
        load=load.result, irs=rows, all_within_limit=all(r["within_limit"] for r in rows))
    method.finish(NAME, result, args, markdown)


if __name__ == "__main__":
    main()
