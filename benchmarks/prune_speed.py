"""Dense vs pruned (50% MACs) ResNet-18 at 224x224, batch 1, 2 threads: PyTorch FP32 and OpenVINO INT8.

All four models are timed in one process, interleaved round by round; figures are ratios to dense PyTorch.
Random weights (nothing is downloaded); INT8 calibrates on 64 random-normal images, which sets the speed
but says nothing of accuracy (see the accuracy figures in README.md for that).
Usage: python benchmarks/prune_speed.py [--rounds 5 --runs 40]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeres import runtime
from edgeres.bench.profile import count_macs, count_params
from edgeres.bench.run import cpu_model
from edgeres.checkpoint import ModelMeta
from edgeres.compress.prune import PruneConfig, prune
from edgeres.export.openvino.convert import export_openvino
from edgeres.export.openvino.quantize import quantize_openvino
from edgeres.models import create

SHAPE = (3, 224, 224)


def _int8_ir(model, meta, tmp: Path, name: str) -> Path:
    fp32 = export_openvino(model, meta, tmp / f"{name}.fp32.xml")["path"]
    calib = [np.random.default_rng(i).standard_normal((1, *SHAPE)).astype(np.float32) for i in range(64)]
    quantize_openvino(fp32, calib, tmp / f"{name}.int8.xml")
    return tmp / f"{name}.int8.xml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=40, help="timed calls per model per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "prune_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = create("resnet18").eval()
    pruned = create("resnet18").eval()
    report = prune(pruned, SHAPE, PruneConfig(target="macs", amount=0.5))
    pruned.eval()
    meta = ModelMeta(arch="resnet18", num_classes=1000, img_size=224)
    x = np.random.default_rng(0).standard_normal((1, *SHAPE)).astype(np.float32)
    xt = torch.from_numpy(x)
    with tempfile.TemporaryDirectory() as tmp:
        ov = {name: runtime.load(_int8_ir(m, meta, Path(tmp), name), threads=args.threads)
              for name, m in (("dense", dense), ("pruned", pruned))}
        contenders = {
            "dense torch fp32": lambda: dense(xt),
            "pruned torch fp32": lambda: pruned(xt),
            "dense openvino int8": lambda: ov["dense"](x),
            "pruned openvino int8": lambda: ov["pruned"](x),
        }
        samples: dict[str, list[float]] = {k: [] for k in contenders}
        with torch.inference_mode():
            for fn in contenders.values():
                for _ in range(5):
                    fn()
            for r in range(args.rounds):
                for name in (list(contenders) if r % 2 == 0 else list(reversed(contenders))):
                    for _ in range(args.runs):
                        t0 = time.perf_counter()
                        contenders[name]()
                        samples[name].append((time.perf_counter() - t0) * 1000)
        precision = {k: v.info.precision for k, v in ov.items()}
    p50 = {k: statistics.median(v) for k, v in samples.items()}
    base = p50["dense torch fp32"]
    result = {
        "benchmark": "prune_speed", "model": "resnet18", "input": [1, *SHAPE], "threads": args.threads,
        "cpu": cpu_model(), "runs_per_model": args.rounds * args.runs,
        "params": {"dense": count_params(dense), "pruned": count_params(pruned)},
        "macs": {"dense": count_macs(dense, SHAPE), "pruned": count_macs(pruned, SHAPE)},
        "macs_fraction": report.macs_fraction, "openvino_precision": precision,
        "p50_ms": p50, "p90_ms": {k: float(np.percentile(v, 90)) for k, v in samples.items()},
        "speedup_vs_dense_torch": {k: base / v for k, v in p50.items()},
        "torch": torch.__version__,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"ResNet-18 224x224 batch 1, {args.threads} threads, {result['cpu']}; pruned to "
          f"{report.macs_fraction:.3f} of MACs\n")
    print("| model | p50 ms | p90 ms | speed-up vs dense PyTorch FP32 |\n|---|---|---|---|")
    for k in contenders:
        print(f"| {k} | {p50[k]:.2f} | {result['p90_ms'][k]:.2f} | {result['speedup_vs_dense_torch'][k]:.2f}x |")


if __name__ == "__main__":
    main()
