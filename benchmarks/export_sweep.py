"""Export every registered variant (full size, 1000 classes, 64x64 input) to ONNX and OpenVINO FP32 and
validate each against PyTorch. Nothing here is timed beyond wall seconds per variant, so benchmarks/method.py
contributes the record (settings, machine, versions) and the README block.

Usage: python benchmarks/export_sweep.py [--img-size 64] [--quick] [--table-only]
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
from edgeres import runtime
from edgeres.checkpoint import ModelMeta
from edgeres.export.onnx.convert import export_onnx
from edgeres.export.openvino.convert import export_openvino
from edgeres.export.validate import compare_outputs
from edgeres.models import create, list_models

NAME = "export_sweep"


def sweep_one(name: str, x: np.ndarray) -> dict[str, Any]:
    """One variant exported both ways, each compared with PyTorch on the same batch."""
    t0 = time.perf_counter()
    model = create(name).eval()
    meta = ModelMeta(arch=name, num_classes=1000, img_size=x.shape[-1])
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    row: dict[str, Any] = {"model": name}
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model, meta, Path(tmp) / "m.onnx")
        export_openvino(model, meta, Path(tmp) / "m.xml")
        for backend, file in (("onnxruntime", "m.onnx"), ("openvino", "m.xml")):
            stats = compare_outputs(reference, runtime.load(Path(tmp) / file, precision="fp32")(x))
            row[backend] = {k: stats[k] for k in ("max_abs_diff", "cosine_min", "top1_agreement")}
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def markdown(result: dict[str, Any]) -> str:
    """The README block of a saved result."""
    lines = ["| model | ONNX top-1 agreement | ONNX max abs diff | OpenVINO top-1 agreement | OpenVINO max abs diff |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        o, v = r["onnxruntime"], r["openvino"]
        lines.append(f"| {r['model']} | {o['top1_agreement']:.2f} | {o['max_abs_diff']:.1e} | "
                     f"{v['top1_agreement']:.2f} | {v['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n\n" + method.footer(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--models", nargs="*", help="variants to export (default: every registered one)")
    method.add_output_arguments(ap)
    args = method.quick(ap.parse_args(), img_size=32, models=["test_resnet", "test_se_resnet"])
    if args.table_only:
        return method.rerender(NAME, args, markdown)
    start = time.perf_counter()
    x = np.random.default_rng(0).standard_normal((4, 3, args.img_size, args.img_size)).astype(np.float32)
    rows = []
    for name in args.models or list_models():
        rows.append(sweep_one(name, x))
        print(f"{name}: onnx top-1 {rows[-1]['onnxruntime']['top1_agreement']:.2f}, openvino top-1 "
              f"{rows[-1]['openvino']['top1_agreement']:.2f}", flush=True)
    result = method.record(NAME, args, start, input=list(x.shape), rows=rows)
    method.finish(NAME, result, args, markdown)


if __name__ == "__main__":
    main()
