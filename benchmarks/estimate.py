"""Calibrate the roofline latency estimate (edgeres.deploy.estimate) and check it against measured p50s.

Artifacts: zoo models with random weights (latency does not depend on their values) at sizes that keep the
run short, each exported to OpenVINO IR in fp32 and INT8 (NNCF, calibrated on pseudo-images). Each artifact
is timed by `edgeres bench`'s worker in a fresh process (edgeres.bench.run.bench_artifacts: warm-up, then
timed engine calls on a fixed random batch of one), with the fp32 inference hint, so float layers run fp32
and not the bf16 the CPU plugin picks by default on this CPU: the estimate's fp32 peak is what they use.
The whole set is measured `--repeats` times, in reverse order every other pass; an artifact's measured
figure is the median of its per-process p50s.

Fit: edgeres.deploy.estimate.fit_efficiency against the `--device` profile (default `host`, this machine):
least squares on log(estimate / measured); compute efficiency per precision, memory efficiency and
per-layer overhead shared (see the module's docstring). The headline is leave-one-out: for each artifact,
fit on all the others and estimate the held-out one; the in-sample error (one fit on all) is reported beside
it. Target: median absolute error <= 25%. The fitted factors are printed as the YAML `efficiency:` block of
a device profile.

Usage: python benchmarks/estimate.py [--threads 2] [--repeats 2] [--runs 200] [--workdir DIR] [--device host]
       [--quick] [--table-only]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import method
from runtimes import pseudo_images

NAME = "estimate"
TARGET_PCT = 25.0
CALIBRATION_IMAGES = 16
# (model, input size): plain, bottleneck, SE and SimAM attention, a detector, and one model at two sizes.
MODELS = (("resnet18", 224), ("resnet18", 112), ("resnet50", 160), ("se_resnet18", 224),
          ("simam_resnet18", 160), ("yolo_resnet18", 320))
QUICK_MODELS = (("test_resnet", 64), ("test_se_resnet", 64), ("test_simam_resnet", 64), ("test_yolo", 96))


def export_pair(name: str, size: int, out: Path, calibration_images: int) -> dict[str, Path]:
    """fp32 IR and its NNCF INT8 version of zoo model `name` (random weights, torch seed 0) at `size`."""
    from edgeres.checkpoint import ModelMeta
    from edgeres.export.openvino.convert import export_openvino
    from edgeres.export.openvino.quantize import quantize_openvino
    from edgeres.models import create, model_task

    torch.manual_seed(0)
    task = model_task(name)
    num_classes = 80 if task == "detection" else 1000
    model = create(name, num_classes=num_classes).eval()
    meta = ModelMeta(arch=name, num_classes=num_classes, img_size=size, task=task)
    out.mkdir(parents=True, exist_ok=True)
    export_openvino(model, meta, out / "model.xml")
    quantize_openvino(out / "model.xml", [pseudo_images(calibration_images, meta)], out / "model.int8.xml",
                      subset_size=calibration_images)
    return {"fp32": out / "model.xml", "int8": out / "model.int8.xml"}


def measure(paths: list[Path], args: argparse.Namespace) -> list[list[dict[str, Any]]]:
    """Per artifact, its bench entry from each pass (one fresh process per artifact and pass)."""
    from edgeres.bench.run import BenchConfig, bench_artifacts

    config = BenchConfig(threads=(args.threads,), warmup=args.warmup, runs=args.runs, budget_s=args.budget,
                         min_seconds=args.min_seconds, end_to_end=False, accuracy=False, precision="fp32")
    entries: list[list[dict[str, Any]]] = [[] for _ in paths]
    for r in range(args.repeats):
        order = list(range(len(paths)))[::(-1 if r % 2 else 1)]
        print(f"pass {r + 1}/{args.repeats}: timing {len(paths)} artifacts, one process each ...", flush=True)
        results = bench_artifacts([paths[i] for i in order], config)
        for i, entry in zip(order, results["artifacts"]):
            entries[i].append(entry)
    return entries


def evaluate(costs: list, measured: list[float], device: Any) -> dict[str, Any]:
    """Fit on all (in-sample) and leave-one-out; the estimates, errors and factors."""
    from edgeres.deploy.estimate import fit_efficiency, roofline

    def predict(i: int, factors: dict) -> float:
        return roofline(costs[i], device, efficiency=factors).total_ms

    factors = fit_efficiency(costs, measured, device)
    in_sample = [predict(i, factors) for i in range(len(costs))]
    loo, loo_factors = [], []
    for i in range(len(costs)):
        rest = [j for j in range(len(costs)) if j != i]
        held_out = fit_efficiency([costs[j] for j in rest], [measured[j] for j in rest], device)
        loo.append(predict(i, held_out))
        loo_factors.append({p: e.model_dump() for p, e in held_out.items()})
    return {"factors": factors, "in_sample": in_sample, "loo": loo, "loo_factors": loo_factors}


def error_pct(estimate: float, measured: float) -> float:
    return 100.0 * (estimate - measured) / measured


def yaml_block(factors: dict, cpu: str, device: str) -> str:
    """The fitted factors as a device profile's `efficiency:` block."""
    lines = [f"efficiency:  # fitted by benchmarks/estimate.py on {cpu} against the `{device}` profile's peaks "
             "and bandwidth (OpenVINO CPU plugin, batch 1)"]
    lines += [f"  {p}: {{compute: {e.compute:.4g}, memory: {e.memory:.4g}, overhead_us: {e.overhead_us:.4g}}}"
              for p, e in sorted(factors.items())]
    return "\n".join(lines)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from edgeres.deploy.devices import load_device
    from edgeres.deploy.estimate import graph_cost

    device = load_device(args.device)  # fail before minutes of exporting on a bad name
    models = QUICK_MODELS if args.quick else MODELS
    artifacts = []
    for name, size in models:
        print(f"exporting {name} at {size}x{size} (fp32 and INT8 IR) to {work} ...", flush=True)
        pair = export_pair(name, size, work / f"{name}-{size}", CALIBRATION_IMAGES if not args.quick else 4)
        artifacts += [{"model": name, "img_size": size, "exported": p, "path": path} for p, path in pair.items()]
    entries = measure([a["path"] for a in artifacts], args)
    costs = [graph_cost(a["path"]) for a in artifacts]
    measured = [float(np.median([e["latency"]["engine"]["p50_ms"] for e in es])) for es in entries]
    fit = evaluate(costs, measured, device)
    rows = []
    for a, es, cost, m, ins, loo in zip(artifacts, entries, costs, measured, fit["in_sample"], fit["loo"]):
        rows.append({
            "model": a["model"], "img_size": a["img_size"], "path": str(a["path"]), "exported": a["exported"],
            "precision_executed": es[0]["precision"], "graph_macs": cost.macs, "torch_macs": es[0]["macs"],
            "bytes_moved": cost.bytes, "layers": len(cost.layers),
            "layer_precisions": sorted({layer.precision for layer in cost.layers}),
            "measured_p50_ms": m, "p50_ms_per_pass": [e["latency"]["engine"]["p50_ms"] for e in es],
            "samples_ms": [[round(s, 4) for s in e["latency"]["engine"]["samples_ms"]] for e in es],
            "contended": [(e.get("load") or {}).get("contended") for e in es],
            "estimate_in_sample_ms": ins, "error_in_sample_pct": error_pct(ins, m),
            "estimate_loo_ms": loo, "error_loo_pct": error_pct(loo, m),
        })
    loo_mape = float(np.median([abs(r["error_loo_pct"]) for r in rows]))
    cpu = method.machine_info()["cpu"]
    profile = device.model_dump(include={"name", "compute", "memory", "cpu", "notes"})
    return {"device": args.device, "profile": profile, "models": [list(m) for m in models], "artifacts": rows,
            "factors": {p: e.model_dump() for p, e in fit["factors"].items()}, "loo_factors": fit["loo_factors"],
            "median_abs_error_loo_pct": loo_mape,
            "median_abs_error_in_sample_pct": float(np.median([abs(r["error_in_sample_pct"]) for r in rows])),
            "target_pct": TARGET_PCT, "passed": loo_mape <= TARGET_PCT,
            "yaml": yaml_block(fit["factors"], cpu, args.device)}


def markdown(result: dict[str, Any]) -> str:
    """The README block: per artifact measured vs estimated, the errors, the factors as YAML."""
    lines = ["| model | input | precision executed | GMACs | MB moved (estimate) | measured p50 ms | "
             "estimate ms, leave-one-out | error | estimate ms, in-sample | error |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["artifacts"]:
        lines.append(f"| {r['model']} | {r['img_size']} | {r['precision_executed']} | {r['graph_macs'] / 1e9:.3f} "
                     f"| {r['bytes_moved'] / 1e6:.1f} | {r['measured_p50_ms']:.3f} | {r['estimate_loo_ms']:.3f} "
                     f"| {r['error_loo_pct']:+.1f}% | {r['estimate_in_sample_ms']:.3f} "
                     f"| {r['error_in_sample_pct']:+.1f}% |")
    verdict = "meets" if result["passed"] else "MISSES"
    peaks = ", ".join(f"{p} {v:g}" for engine in result["profile"]["compute"].values() for p, v in engine.items())
    contended = [f"{r['model']} {r['img_size']} {r['precision_executed']}" for r in result["artifacts"]
                 if any(r["contended"])]
    lines += ["", f"Median absolute error: **{result['median_abs_error_loo_pct']:.1f}% leave-one-out** (headline; "
                  f"{verdict} the {result['target_pct']:.0f}% target), {result['median_abs_error_in_sample_pct']:.1f}% "
                  f"in-sample. Estimates against the `{result['device']}` profile (peaks {peaks} TOPS, "
                  f"{result['profile']['memory']['bandwidth_gbps']} GB/s); measured p50 = median over "
                  f"{result['settings']['repeats']} fresh processes per artifact"
                  f"{'; contended while timing: ' + ', '.join(contended) if contended else ''}.", "",
              "```yaml", result["yaml"], "```", "", method.footer(result)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes per artifact (median of their p50s)")
    ap.add_argument("--runs", type=int, default=200, help="timed calls per process (at least)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed calls per process")
    ap.add_argument("--min-seconds", type=float, default=3.0, help="time each process for at least this long")
    ap.add_argument("--budget", type=float, default=20.0, help="stop timing a process after this long")
    ap.add_argument("--device", default="host", help="profile whose peaks and bandwidth the factors refer to")
    ap.add_argument("--workdir", help="keep the exported models here (default: a temporary folder)")
    method.add_output_arguments(ap)
    args = method.quick(ap.parse_args(), repeats=1, runs=20, warmup=3, min_seconds=0.3, budget=3.0)
    if args.table_only:
        return method.rerender(NAME, args, markdown)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeres-estimate-") as tmp:
        fields = run(args, Path(args.workdir or tmp))
    result = method.record(NAME, args, start, weights="random (torch seed 0)", backend="openvino (CPU plugin)",
                           calibration=f"{CALIBRATION_IMAGES} pseudo-images (runtimes.pseudo_images, seed 0)",
                           **fields)
    print(result["yaml"])
    method.finish(NAME, result, args, markdown)


if __name__ == "__main__":
    main()
