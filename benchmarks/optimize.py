"""`edgeres optimize` against the hand path: the chosen artifact's speed-up and test accuracy, per runtime.

Issue 13's figures. A ResNet-18 is trained on scikit-learn's digits (real handwritten digits) at 128x128
with a 30/20/50 split, so the baseline is below 100% and the 899 test images resolve 0.11 points. Then,
for OpenVINO and ONNX Runtime, `edgeres optimize --max-drop 1 --budget-minutes 20` searches; the
ONNX Runtime search is killed (SIGKILL) part-way and started again, to show a killed search resumes and
still keeps its budget. An impossible `--target-ms` shows the exit 1. Finally, in one process, the
dense INT8 file of each runtime (the hand path: the exporter's defaults) and the file each search chose
are timed in interleaved rounds (benchmarks/method.py) and scored on the test split through their Runners.

    python benchmarks/optimize.py            # ~50 min on 2 cores
    python benchmarks/optimize.py --table-only
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import method

NAME = "optimize"
ROOT = Path(__file__).resolve().parent.parent
EDGERES = [sys.executable, "-m", "edgeres.cli"]


def _run(cmd: list[str], log: Path, kill_after: float | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    with log.open("a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            code = proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = "killed"
    return {"cmd": " ".join(cmd[2:]), "exit": code, "seconds": round(time.perf_counter() - start, 1)}


def _train(base: Path, log: Path) -> dict[str, Any]:
    if (base / "metrics.json").exists():
        return {"reused": str(base)}
    return _run([*EDGERES, "train", "-m", "resnet18", "-d", "digits", "--img-size", "128", "--epochs", "8",
                 "--split", "0.3,0.2,0.5", "--amp", "--out", str(base)], log)


def _search(base: Path, out: Path, backend: str, budget: float, log: Path, kill_after: float | None) -> dict[str, Any]:
    """One search (killed once after `kill_after` s, then resumed); its record is kept beside it, so a rerun
    of this script that only re-times reuses it instead of searching again."""
    saved = out.with_name(f"search-{backend}.json")
    if saved.exists():
        return json.loads(saved.read_text())
    record = _search_now(base, out, backend, budget, log, kill_after)
    saved.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _search_now(base: Path, out: Path, backend: str, budget: float, log: Path,
                kill_after: float | None) -> dict[str, Any]:
    cmd = [*EDGERES, "optimize", str(base), "--out", str(out), "--backend", backend, "--max-drop", "1",
           "--budget-minutes", str(budget)]
    runs = []
    if kill_after is not None:
        runs.append(_run(cmd, log, kill_after))
        state = json.loads((out / "search.json").read_text())
        runs[-1]["steps_done_when_killed"] = len(state["steps"])
    runs.append(_run(cmd, log))
    state = json.loads((out / "search.json").read_text())
    result = json.loads((out / "optimize.json").read_text()) if (out / "optimize.json").exists() else None
    return {"runs": runs, "search_minutes": round(state["seconds"] / 60, 2), "budget_minutes": budget,
            "result": result}


def _impossible(base: Path, out: Path, log: Path) -> dict[str, Any]:
    run = _run([*EDGERES, "optimize", str(base), "--out", str(out), "--target-ms", "0.01", "--macs", "0.1",
                "--round-to", "16"], log)
    lines = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    return {**run, "message": lines[-1] if lines else None}


def _time_and_score(args: argparse.Namespace, base: Path, files: dict[str, str]) -> dict[str, Any]:
    """Each runtime's two files (and an A/A twin of its dense file) timed in their own interleaved run: ONNX
    Runtime's worker threads spin after a call, and an OpenVINO call right after one ran 1.8x slower here
    (1.74 -> 3.12 ms), so the runtimes never alternate with each other."""
    import numpy as np

    from edgeres import runtime
    from edgeres.evaluate import load_task_data
    from edgeres.evaluate.predict import evaluate_runner

    latency, speedup, control, loads, test = {}, {}, {}, {}, {}
    bundle = None
    for b in ("openvino", "onnxruntime"):
        dense, optimized, twin = f"dense {b} int8", f"optimized {b} int8", f"dense {b} int8 (twin)"
        runners = {dense: runtime.load(files[dense], threads=args.threads),
                   optimized: runtime.load(files[optimized], threads=args.threads),
                   twin: runtime.load(files[dense], threads=args.threads)}
        x = np.random.default_rng(0).standard_normal((1, *runners[dense].meta.input_shape)).astype(np.float32)
        fns = {name: (lambda r=r: r.run(x)) for name, r in runners.items()}
        samples, loads[b] = method.timed(fns, args, tied=[[dense, optimized, twin]])
        latency.update({n: method.distribution(v) for n, v in samples.items()})
        speedup[b] = method.compare(samples[dense], samples[optimized], args.rounds)
        control[b] = method.control(samples, dense, twin, args.rounds)
        bundle = bundle or load_task_data(runners[dense].meta)
        for name in (dense, optimized):
            test[name] = evaluate_runner(runners[name], bundle, splits=("test",))[0]["test"]["accuracy"]
    test["fp32 baseline (pytorch)"] = evaluate_runner(runtime.load(base, backend="torch"), bundle,
                                                      splits=("test",))[0]["test"]["accuracy"]
    worst = max(loads.values(), key=lambda load: (load or {}).get("other_cores") or 0)
    return {"load": worst, "loads": loads, "latency": latency, "speedup": speedup, "controls": control,
            "test_accuracy": test, "test_n": len(bundle.dataset("test"))}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    base = Path(args.base) if args.base else work / "base"
    trained = _train(base, log)
    searches = {"openvino": _search(base, work / "openvino", "openvino", args.budget, log, None),
                "onnxruntime": _search(base, work / "onnxruntime", "onnxruntime", args.budget, log, args.kill_after)}
    impossible = _impossible(base, work / "impossible", log)
    files = {}
    for backend, s in searches.items():
        r = s["result"] or {}
        files[f"dense {backend} int8"] = r["dense"]["file"]
        if not r.get("chosen"):
            raise SystemExit(f"the {backend} search chose nothing: {r.get('failure')}")
        files[f"optimized {backend} int8"] = r["published"]["file"]
    return {"baseline": str(base), "train": trained, "searches": searches, "impossible": impossible,
            "files": files, **_time_and_score(args, base, files)}


def markdown(result: dict[str, Any]) -> str:
    acc, base = result["test_accuracy"], result["test_accuracy"]["fp32 baseline (pytorch)"]
    lines = [f"ResNet-18, digits at 128x128 (train 540 / val 359 / test {result['test_n']}), FP32 baseline test "
             f"accuracy {base * 100:.2f}%.", "",
             "| runtime | chosen by `edgeres optimize` | search min (budget) | dense INT8 p50 ms | chosen p50 ms | "
             "speed-up, paired (95% CI) | test acc. dense INT8 | test acc. chosen | chosen vs FP32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for b in ("openvino", "onnxruntime"):
        s, sp = result["searches"][b], result["speedup"][b]
        chosen = s["result"]["chosen"]
        d, o = f"dense {b} int8", f"optimized {b} int8"
        lines.append(f"| {b} | {chosen['label']} | {s['search_minutes']:.1f} ({s['budget_minutes']:g}) | "
                     f"{result['latency'][d]['p50_ms']:.3f} | {result['latency'][o]['p50_ms']:.3f} | "
                     f"**{method.ci(sp, '.2f')}** | {acc[d] * 100:.2f}% | {acc[o] * 100:.2f}% | "
                     f"**{(acc[o] - base) * 100:+.2f}** |")
    ort = result["searches"]["onnxruntime"]["runs"]
    if len(ort) > 1:
        lines += ["", f"Resume: the ONNX Runtime search was killed (SIGKILL) after {ort[0]['seconds']:.0f} s with "
                      f"{ort[0]['steps_done_when_killed']} steps recorded; started again, it finished "
                      f"(exit {ort[1]['exit']}) in {ort[1]['seconds']:.0f} s more, "
                      f"{result['searches']['onnxruntime']['search_minutes']:.1f} search minutes in all."]
    imp = result["impossible"]
    lines += ["", f"Impossible target (`--target-ms 0.01`): exit {imp['exit']} after {imp['seconds']:.0f} s: "
                  f"`{imp['message']}`"]
    for b, c in result["controls"].items():
        lines.append(f"\nA/A control, {b} (its dense file against an identical twin, same run): paired p50 ratio "
                     f"{method.ci(c)}, pooled {c['ratio_pooled_p50']:.3f}.")
    return "\n".join(lines) + "\n\n" + method.footer(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    method.add_arguments(ap, rounds=20, runs=300, warmup=10, max_seconds=120.0)
    ap.add_argument("--work", default=str(ROOT / "runs" / "optimize"), help="folder for the runs")
    ap.add_argument("--base", help="a trained baseline to reuse (default: train one into WORK/base)")
    ap.add_argument("--budget", type=float, default=20.0, help="each search's --budget-minutes")
    ap.add_argument("--kill-after", type=float, default=300.0, help="seconds before the ONNX Runtime search is killed")
    args = method.quick(ap.parse_args(), rounds=3, runs=6, warmup=2, max_seconds=15.0)
    if args.table_only:
        return method.rerender(NAME, args, markdown)
    start = time.perf_counter()
    result = method.record(NAME, args, start, **measure(args))
    method.finish(NAME, result, args, markdown)


if __name__ == "__main__":
    main()
