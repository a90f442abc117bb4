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

The timing method (rounds, paired ratios, bootstrap interval, A/A control, what is saved) is
benchmarks/method.py's, shared by every script here.

Usage: python benchmarks/runtimes.py [--threads 2] [--runs 200] [--rounds 40] [--max-seconds 180] [--workdir DIR]
       [--quick] [--table-only]
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import edgeres.runtime
import method
from edgeres.bench.latency import Latency
from edgeres.checkpoint import ModelMeta, save_checkpoint
from edgeres.data.builtin import SHAPE_KINDS, render_shape
from edgeres.models import create

NAME = "runtimes"
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


# ---------------------------------------------------------------- artifacts

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

def check_input_us(runner: Any, batch: np.ndarray, calls: int = 2000) -> float:
    """Microseconds per call of the Runner's input check alone (what `__call__` adds to `run`)."""
    t0 = time.perf_counter()
    for _ in range(calls):
        runner.check_input(batch)
    return (time.perf_counter() - t0) / calls * 1e6


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
            **method.compare(runner_s, raw_s, rounds),
            "check_input_us": check_input_us(pair.runner, batch),
        })
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The README block of a saved result: the table, then machine, load and A/A control."""
    lines = ["| backend | precision executed | Runner p50 / p90 / p99 ms | raw p50 / p90 / p99 ms | "
             "Runner/raw p50, paired by round (95% CI) | pooled p50s | input check | runs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["backends"]:
        a, b = r["runner"], r["raw"]
        lines.append(f"| {r['backend']} | {r['precision']} | {_pcts(a)} | {_pcts(b)} | {method.ci(r)} "
                     f"| {r['ratio_pooled_p50']:.3f} | {r['check_input_us']:.1f} µs | {a['runs']} |")
    limit = result["overhead_limit"]
    return ("\n".join(lines) + "\n\n" + method.footer(result)
            + f"\n    Runner/raw p50 over {limit:.2f}: {result['over_limit'] or 'none'}; with the whole 95% interval "
              f"over it: {result['over_limit_beyond_noise'] or 'none'}")


def _pcts(summary: dict[str, Any]) -> str:
    return f"{summary['p50_ms']:.2f} / {summary['p90_ms']:.2f} / {summary['p99_ms']:.2f}"


def measure(args: argparse.Namespace, work: Path) -> tuple[list[dict], dict[str, Any], dict[str, Any]]:
    """Export, pair up, time interleaved; the per-backend rows, the A/A control and the load while timing."""
    model, meta = build_model()
    batch = pseudo_images(1, meta, seed=1)
    print(f"exporting {ARCH} (random weights) to {work} ...", flush=True)
    paths = build_artifacts(model, meta, work, pseudo_images(CALIBRATION_IMAGES, meta))
    pairs = make_pairs(model, paths, args.threads, batch)
    fns = contenders(pairs, batch, raw_onnxruntime(paths["onnx_int8"], args.threads, batch)[0])
    tied = [[f"{p.name}|runner", f"{p.name}|raw"] + (["control|twin"] if p.name == CONTROL else []) for p in pairs]
    print(f"timing {len(fns)} contenders in {args.rounds} interleaved rounds ...", flush=True)
    samples, load = method.timed(fns, args, tied)
    rows = summarize(pairs, samples, batch, args.warmup, args.rounds)
    control = method.control(samples, f"{CONTROL}|raw", "control|twin", args.rounds)
    return rows, control, load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    method.add_arguments(ap, rounds=40, runs=200, warmup=10, max_seconds=180.0)
    ap.add_argument("--workdir", help="keep the exported models here (default: a temporary folder)")
    args = method.quick(ap.parse_args(), rounds=4, runs=8, warmup=2, max_seconds=20.0)
    if args.table_only:
        return method.rerender(NAME, args, markdown)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeres-bench-") as tmp:
        rows, control, load = measure(args, Path(args.workdir or tmp))
    result = method.record(
        NAME, args, start, model=ARCH, weights="random (torch seed 0)", input=[1, 3, 224, 224],
        input_data="one pseudo-image (render_shape, seed 1), normalised", calibration=CALIBRATION_NOTE,
        overhead_limit=OVERHEAD_LIMIT, load=load, backends=rows, control=control,
        over_limit=[r["backend"] for r in rows if r["ratio_p50"] > OVERHEAD_LIMIT],
        over_limit_beyond_noise=[r["backend"] for r in rows if r["ratio_p50_ci95"][0] > OVERHEAD_LIMIT])
    method.finish(NAME, result, args, markdown)


if __name__ == "__main__":
    main()
