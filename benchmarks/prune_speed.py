"""Dense vs pruned (50% MACs) ResNet-18 at 224x224, batch 1: PyTorch FP32 and OpenVINO INT8.

All contenders live in one process and are timed with benchmarks/method.py (interleaved rounds, paired
per-round ratios with a bootstrap interval); each speed-up is dense PyTorch's p50 over the contender's,
and the A/A control is a second, identical dense PyTorch model. Random weights (nothing is downloaded);
INT8 calibrates on 64 random-normal images, which sets the speed but says nothing of accuracy (see the
accuracy figures in README.md for that).

Usage: python benchmarks/prune_speed.py [--rounds 20 --runs 200 --max-seconds 240] [--quick] [--table-only]
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import method
from edgeres import runtime
from edgeres.bench.profile import count_macs, count_params
from edgeres.checkpoint import ModelMeta
from edgeres.compress.prune import PruneConfig, prune
from edgeres.export.openvino.convert import export_openvino
from edgeres.export.openvino.quantize import quantize_openvino
from edgeres.models import create

NAME = "prune_speed"
SHAPE = (3, 224, 224)
BASE = "dense torch fp32"
TWIN = "dense torch fp32 (twin)"


def _int8_ir(model: torch.nn.Module, meta: ModelMeta, tmp: Path, name: str) -> Path:
    fp32 = export_openvino(model, meta, tmp / f"{name}.fp32.xml")["path"]
    calib = [np.random.default_rng(i).standard_normal((1, *SHAPE)).astype(np.float32) for i in range(64)]
    quantize_openvino(fp32, calib, tmp / f"{name}.int8.xml")
    return tmp / f"{name}.int8.xml"


def _eager(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode():
            return model(x)
    return call


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Build, prune and quantize the models, time them interleaved; samples, ratios and static figures."""
    torch.manual_seed(0)
    dense = create("resnet18").eval()
    pruned = copy.deepcopy(dense)
    report = prune(pruned, SHAPE, PruneConfig(target="macs", amount=0.5))
    pruned.eval()
    meta = ModelMeta(arch="resnet18", num_classes=1000, img_size=224)
    x = np.random.default_rng(0).standard_normal((1, *SHAPE)).astype(np.float32)
    xt = torch.from_numpy(x)
    ov = {name: runtime.load(_int8_ir(m, meta, tmp, name), threads=args.threads)
          for name, m in (("dense", dense), ("pruned", pruned))}
    fns = {BASE: _eager(dense, xt), "pruned torch fp32": _eager(pruned, xt),
           "dense openvino int8": lambda: ov["dense"](x), "pruned openvino int8": lambda: ov["pruned"](x),
           TWIN: _eager(copy.deepcopy(dense), xt)}
    samples, load = method.timed(fns, args, tied=[[BASE, TWIN]])
    return {
        "macs_fraction": report.macs_fraction, "load": load,
        "params": {"dense": count_params(dense), "pruned": count_params(pruned)},
        "macs": {"dense": count_macs(dense, SHAPE), "pruned": count_macs(pruned, SHAPE)},
        "openvino_precision": {k: v.info.precision for k, v in ov.items()},
        "latency": {name: method.distribution(s) for name, s in samples.items()},
        "speedup_vs_dense_torch": {name: method.compare(samples[BASE], s, args.rounds)
                                   for name, s in samples.items() if name not in (BASE, TWIN)},
        "control": method.control(samples, BASE, TWIN, args.rounds),
    }


def markdown(result: dict[str, Any]) -> str:
    """The README block of a saved result."""
    lines = [f"Pruned to {result['macs_fraction']:.3f} of the MACs "
             f"({result['params']['pruned'] / 1e6:.2f}M of {result['params']['dense'] / 1e6:.2f}M parameters).", "",
             "| model | p50 ms | p90 ms | speed-up vs dense PyTorch FP32, paired by round (95% CI) | pooled p50s "
             "| runs |", "|---|---|---|---|---|---|"]
    for name, lat in result["latency"].items():
        if name == TWIN:
            continue
        speedup = result["speedup_vs_dense_torch"].get(name)
        cells = (f"{method.ci(speedup, '.2f')} | {speedup['ratio_pooled_p50']:.2f}" if speedup
                 else "1.00 (baseline) | 1.00")
        lines.append(f"| {name} | {lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | {cells} | {lat['runs']} |")
    return "\n".join(lines) + "\n\n" + method.footer(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    method.add_arguments(ap, rounds=20, runs=200, warmup=5, max_seconds=240.0)
    args = method.quick(ap.parse_args(), rounds=3, runs=6, warmup=2, max_seconds=15.0)
    if args.table_only:
        return method.rerender(NAME, args, markdown)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        measured = measure(args, Path(tmp))
    result = method.record(NAME, args, start, model="resnet18", weights="random (torch seed 0)",
                           input=[1, *SHAPE], prune="L2, uniform, 50% of MACs", **measured)
    method.finish(NAME, result, args, markdown)


if __name__ == "__main__":
    main()
