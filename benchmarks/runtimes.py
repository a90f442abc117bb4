"""Runner overhead: each edgeres Runner against the raw runtime call it wraps (ResNet-18, 224x224, batch 1).

Backends: PyTorch eager (TorchRunner vs `model(x)` under inference_mode), ONNX Runtime fp32 and INT8 QDQ
(vs `InferenceSession.run`), OpenVINO fp32 (INFERENCE_PRECISION_HINT f32), plugin-default precision and
INT8 from NNCF (vs `InferRequest.infer` on a model compiled with the same config). The Runner side goes
through `runner(batch)`, input check included, because that is what users call.

Every contender lives in this one process. Timing runs in rounds: each round gives every contender one
untimed call and a block of timed calls, in an order reversed every other round, so the load from other
processes on a shared machine hits all of them alike. The figure that matters is the Runner/raw p50
ratio within a backend, taken per round (blocks that ran back to back) and then the median over rounds:
on a machine whose load comes and goes, pooled p50s depend on which spells each side happened to hit
(they are reported too). A control pair, two identical raw ONNX Runtime INT8 sessions, shows how far apart
two contenders that run the same code land here: a Runner/raw ratio inside that spread is no overhead.
Weights are random (seed 0): latency does not depend on their values.

Usage: python benchmarks/runtimes.py [--threads 2] [--runs 200] [--rounds 40] [--max-seconds 180] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import edgeres.runtime
from edgeres.bench.latency import Latency, time_calls
from edgeres.checkpoint import ModelMeta, save_checkpoint
from edgeres.data.builtin import SHAPE_KINDS, render_shape
from edgeres.models import create

RESULTS = Path(__file__).parent / "results"
ARCH = "resnet18"
CALIBRATION_IMAGES = 32
CALIBRATION_NOTE = (f"{CALIBRATION_IMAGES} fixed pseudo-images: edgeres.data.builtin.render_shape lesion-like "
                    f"scenes (kinds cycled, numpy seed 0), normalised with the ImageNet mean/std")
OVERHEAD_LIMIT = 1.03
CONTROL = "ONNX Runtime INT8 QDQ"  # backend whose raw call gets a twin session as the A/A control


@dataclasses.dataclass
class Pair:
    """One backend: its edgeres Runner and the raw runtime call it wraps, on the same file and settings."""

    name: str
    runner: Any
    raw: Callable[[], Any]
    raw_desc: str
    raw_settings: dict[str, Any]


# ---------------------------------------------------------------- machine and artifacts

def machine_info() -> dict[str, Any]:
    """CPU model, cores, the ISA flags that decide int8/bf16 kernels, and the load while measuring."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {"cpu": model, "logical_cpus": os.cpu_count(), "isa": [f for f in wanted if f in flags],
            "loadavg_1_5_15": [round(v, 2) for v in os.getloadavg()], "platform": platform.platform()}


def versions() -> dict[str, str]:
    """Versions of everything that can change a latency figure."""
    import onnx
    import onnxruntime
    import openvino

    out = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
           "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "openvino": openvino.get_version()}
    try:
        import nncf

        out["nncf"] = nncf.__version__
    except ImportError:
        pass
    return out


def pseudo_images(n: int, meta: ModelMeta, seed: int = 0) -> np.ndarray:
    """`n` deterministic synthetic photos (NCHW float32, normalised): closer to real activations than noise."""
    rng = np.random.default_rng(seed)
    images = np.stack([render_shape(SHAPE_KINDS[i % len(SHAPE_KINDS)], meta.img_size, rng) for i in range(n)])
    images = (images - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)


def build_model(seed: int = 0) -> tuple[torch.nn.Module, ModelMeta]:
    """ResNet-18 with random weights (no download), in eval mode, and its metadata."""
    torch.manual_seed(seed)
    return create(ARCH, num_classes=1000).eval(), ModelMeta(arch=ARCH, num_classes=1000)


def export_openvino_pair(model: torch.nn.Module, meta: ModelMeta, out: Path,
                         calibration: np.ndarray) -> dict[str, Path]:
    """fp32 IR and its NNCF INT8 version under `out`."""
    from edgeres.export.openvino.convert import export_openvino
    from edgeres.export.openvino.quantize import quantize_openvino

    export_openvino(model, meta, out / "model.xml")
    quantize_openvino(out / "model.xml", [calibration], out / "model.int8.xml")
    return {"openvino_fp32": out / "model.xml", "openvino_int8": out / "model.int8.xml"}


def build_artifacts(model: torch.nn.Module, meta: ModelMeta, out: Path, calibration: np.ndarray) -> dict[str, Path]:
    """Checkpoint, ONNX fp32 + INT8 QDQ, OpenVINO fp32 + INT8, all from the same weights."""
    from edgeres.export.onnx.convert import export_onnx
    from edgeres.export.onnx.quantize import quantize_onnx

    paths = {"checkpoint": save_checkpoint(model, meta, out / "checkpoint")}
    export_onnx(model, meta, out / "model.onnx")
    quantize_onnx(out / "model.onnx", out / "model.int8.onnx", [calibration], mode="cpu")
    paths.update(onnx_fp32=out / "model.onnx", onnx_int8=out / "model.int8.onnx")
    paths.update(export_openvino_pair(model, meta, out, calibration))
    return paths


# ---------------------------------------------------------------- contenders

def raw_torch(model: torch.nn.Module, batch: np.ndarray) -> Callable[[], Any]:
    x = torch.from_numpy(batch)

    def call() -> Any:
        with torch.inference_mode():
            return model(x)
    return call


def raw_onnxruntime(path: Path, threads: int, batch: np.ndarray) -> tuple[Callable[[], Any], dict[str, Any]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda: session.run(None, {name: batch})), {"intra_op_num_threads": threads, "inter_op_num_threads": 1}


def raw_openvino(path: Path, config: dict[str, Any], batch: np.ndarray) -> tuple[Callable[[], Any], dict[str, Any]]:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    actual = {k: str(compiled.get_property(k)) for k in
              ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "ENABLE_CPU_PINNING")}
    actual["INFERENCE_PRECISION_HINT"] = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return (lambda: request.infer({0: batch})), {"config": dict(config), "compiled": actual}


def make_pairs(model: torch.nn.Module, paths: dict[str, Path], threads: int, batch: np.ndarray) -> list[Pair]:
    """The six backends, each as (Runner, raw call) on the same file with the same settings."""
    load = edgeres.runtime.load
    pairs = [Pair("PyTorch eager", load(paths["checkpoint"], "torch", None, threads), raw_torch(model, batch),
                  "model(x) under torch.inference_mode()", {"torch.get_num_threads": threads})]
    for label, key in (("ONNX Runtime", "onnx_fp32"), ("ONNX Runtime INT8 QDQ", "onnx_int8")):
        raw, settings = raw_onnxruntime(paths[key], threads, batch)
        pairs.append(Pair(label, load(paths[key], "onnxruntime", None, threads), raw,
                          "InferenceSession.run(None, {input: x})", settings))
    latency = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    for label, key, precision, config in (
            ("OpenVINO fp32 (hint f32)", "openvino_fp32", "fp32", {**latency, "INFERENCE_PRECISION_HINT": "f32"}),
            ("OpenVINO default precision", "openvino_fp32", None, latency),
            ("OpenVINO INT8 (NNCF)", "openvino_int8", None, latency)):
        raw, settings = raw_openvino(paths[key], config, batch)
        pairs.append(Pair(label, load(paths[key], "openvino", precision, threads), raw,
                          "InferRequest.infer({0: x}) on compile_model(xml, 'CPU', config)", settings))
    torch.set_num_threads(threads)  # TorchRunner sets it too; the raw model shares the process-wide pool
    return pairs


def contenders(pairs: list[Pair], batch: np.ndarray, twin: Callable[[], Any]) -> dict[str, Callable[[], Any]]:
    """Calls by name, in timing order: each Runner beside its raw call, the control twin beside its raw."""
    fns: dict[str, Callable[[], Any]] = {}
    for p in pairs:
        fns[f"{p.name}|runner"] = lambda r=p.runner: r(batch)
        fns[f"{p.name}|raw"] = p.raw
        if p.name == CONTROL:
            fns["control|twin"] = twin
    return fns


# ---------------------------------------------------------------- timing

def interleaved(fns: dict[str, Callable[[], Any]], runs: dict[str, int], rounds: int) -> dict[str, list[float]]:
    """Samples (ms) per contender, timed in `rounds` rounds of one untimed call plus a block of timed calls."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            block = -(-runs[name] // rounds)
            samples[name] += time_calls(fns[name], warmup=1, runs=block).samples_ms
    return samples


def plan_runs(fns: dict[str, Callable[[], Any]], pairs: list[Pair], runs: int, warmup: int, rounds: int,
              max_seconds: float) -> dict[str, int]:
    """Warm every contender up, then give each backend as many runs (<= `runs`, >= 30) as fit the budget."""
    estimate = {name: float(np.median(time_calls(fn, warmup=1, runs=max(warmup - 1, 1)).samples_ms)) / 1000
                for name, fn in fns.items()}
    share = max_seconds / len(fns)
    planned = {}
    for pair in pairs:
        slowest = max(estimate[f"{pair.name}|runner"], estimate[f"{pair.name}|raw"])
        n = int(min(runs, max(30, share / slowest - rounds)))  # a round's untimed call counts too
        planned[f"{pair.name}|runner"] = planned[f"{pair.name}|raw"] = n
    planned["control|twin"] = planned[f"{CONTROL}|raw"]
    return planned


def check_input_us(runner: Any, batch: np.ndarray, calls: int = 2000) -> float:
    """Microseconds per call of the Runner's input check alone (what `__call__` adds to `run`)."""
    t0 = time.perf_counter()
    for _ in range(calls):
        runner.check_input(batch)
    return (time.perf_counter() - t0) / calls * 1e6


def round_ratios(num: list[float], den: list[float], rounds: int) -> np.ndarray:
    """Per round, the ratio of the two contenders' block p50s. Their blocks ran back to back, so a slow
    spell of the machine lands on both sides of a ratio; pooled p50s mix spells instead."""
    a, b = np.array_split(np.asarray(num), rounds), np.array_split(np.asarray(den), rounds)
    return np.asarray([np.median(x) / np.median(y) for x, y in zip(a, b)])


def compare(num: list[float], den: list[float], rounds: int, draws: int = 4000) -> dict[str, Any]:
    """Paired p50 ratio (median over rounds) with a 95% bootstrap interval over rounds, and the pooled ratio."""
    per_round = round_ratios(num, den, rounds)
    boot = np.median(np.random.default_rng(0).choice(per_round, (draws, len(per_round))), axis=1)
    return {"ratio_p50": float(np.median(per_round)),
            "ratio_p50_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "ratio_pooled_p50": float(np.median(num) / np.median(den))}


def summarize(pairs: list[Pair], samples: dict[str, list[float]], batch: np.ndarray, warmup: int,
              rounds: int) -> list[dict]:
    rows = []
    for pair in pairs:
        runner_s, raw_s = samples[f"{pair.name}|runner"], samples[f"{pair.name}|raw"]
        runner_sum, raw_sum = Latency(runner_s, 1, warmup).summary(), Latency(raw_s, 1, warmup).summary()
        rows.append({
            "backend": pair.name, "precision": pair.runner.info.precision,
            "runner": {"call": "runner(batch)  (Runner.__call__: check_input + run)", **runner_sum,
                       "info": pair.runner.info.to_dict(), "samples_ms": [round(s, 3) for s in runner_s]},
            "raw": {"call": pair.raw_desc, "settings": pair.raw_settings, **raw_sum,
                    "samples_ms": [round(s, 3) for s in raw_s]},
            **compare(runner_s, raw_s, rounds),
            "check_input_us": check_input_us(pair.runner, batch),
        })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| backend | precision executed | Runner p50 / p90 / p99 ms | raw p50 / p90 / p99 ms | "
             "Runner/raw p50, paired by round (95% CI) | pooled p50s | input check | runs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b, (lo, hi) = r["runner"], r["raw"], r["ratio_p50_ci95"]
        lines.append(f"| {r['backend']} | {r['precision']} | {_pcts(a)} | {_pcts(b)} | {r['ratio_p50']:.3f} "
                     f"({lo:.3f}-{hi:.3f}) | {r['ratio_pooled_p50']:.3f} | {r['check_input_us']:.1f} µs "
                     f"| {a['runs']} |")
    return "\n".join(lines)


def _pcts(summary: dict[str, Any]) -> str:
    return f"{summary['p50_ms']:.2f} / {summary['p90_ms']:.2f} / {summary['p99_ms']:.2f}"


def measure(args: argparse.Namespace, work: Path) -> tuple[list[dict], dict[str, Any]]:
    """Export, pair up, time interleaved; the per-backend rows and the A/A control."""
    model, meta = build_model()
    batch = pseudo_images(1, meta, seed=1)
    print(f"exporting {ARCH} (random weights) to {work} ...", flush=True)
    paths = build_artifacts(model, meta, work, pseudo_images(CALIBRATION_IMAGES, meta))
    pairs = make_pairs(model, paths, args.threads, batch)
    fns = contenders(pairs, batch, raw_onnxruntime(paths["onnx_int8"], args.threads, batch)[0])
    runs = plan_runs(fns, pairs, args.runs, args.warmup, args.rounds, args.max_seconds)
    print(f"timing {len(fns)} contenders in {args.rounds} interleaved rounds ...", flush=True)
    samples = interleaved(fns, runs, args.rounds)
    rows = summarize(pairs, samples, batch, args.warmup, args.rounds)
    control = compare(samples[f"{CONTROL}|raw"], samples["control|twin"], args.rounds)
    return rows, {"what": f"{CONTROL}: raw session / an identical second raw session (A/A)", **control}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200, help="timed runs per contender (fewer if over budget)")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=180.0, help="time budget of the timed phase")
    ap.add_argument("--workdir", help="keep the exported models here (default: a temporary folder)")
    ap.add_argument("--out", default=str(RESULTS / "runtimes.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="edgeres-bench-") as tmp:
        rows, control = measure(args, Path(args.workdir or tmp))
    machine = machine_info()
    machine["loadavg_before"] = [round(v, 2) for v in load_before]
    result = {
        "benchmark": "runtimes", "model": ARCH, "weights": "random (torch seed 0)", "input": [1, 3, 224, 224],
        "input_data": "one pseudo-image (render_shape, seed 1), normalised", "threads": args.threads,
        "calibration": CALIBRATION_NOTE, "rounds": args.rounds, "warmup": args.warmup,
        "overhead_limit": OVERHEAD_LIMIT,
        "ratio_definitions": "ratio_p50: median over rounds of (Runner block p50 / raw block p50); "
                             "ratio_p50_ci95: bootstrap over rounds; ratio_pooled_p50: p50 / p50 of all samples",
        "machine": machine, "versions": versions(), "backends": rows, "control": control,
        "over_limit": [r["backend"] for r in rows if r["ratio_p50"] > OVERHEAD_LIMIT],
        "over_limit_beyond_noise": [r["backend"] for r in rows if r["ratio_p50_ci95"][0] > OVERHEAD_LIMIT],
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(markdown(rows))
    lo, hi = control["ratio_p50_ci95"]
    print(f"\nA/A control ({CONTROL}, raw / identical raw session): paired p50 ratio {control['ratio_p50']:.3f} "
          f"({lo:.3f}-{hi:.3f}), pooled {control['ratio_pooled_p50']:.3f}")
    print(f"{ARCH} 224x224, batch 1, {args.threads} threads, {machine['cpu']}; "
          f"load average {machine['loadavg_before'][0]} -> {machine['loadavg_1_5_15'][0]}; "
          f"{result['wall_seconds']} s\nRunner/raw p50 over {OVERHEAD_LIMIT:.2f}: {result['over_limit'] or 'none'}; "
          f"with the whole 95% interval over it: {result['over_limit_beyond_noise'] or 'none'}")


if __name__ == "__main__":
    main()
