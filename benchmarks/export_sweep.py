"""Export every registered variant (full size, 1000 classes, 64x64 input) to ONNX and OpenVINO FP32 and
validate each against PyTorch. Usage: python benchmarks/export_sweep.py [--img-size 64]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeres import runtime
from edgeres.checkpoint import ModelMeta
from edgeres.export.onnx.convert import export_onnx
from edgeres.export.openvino.convert import export_openvino
from edgeres.export.validate import compare_outputs
from edgeres.models import create, list_models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_sweep.json"))
    args = ap.parse_args()
    x = np.random.default_rng(0).standard_normal((4, 3, args.img_size, args.img_size)).astype(np.float32)
    rows = []
    for name in list_models():
        t0 = time.perf_counter()
        model = create(name).eval()
        meta = ModelMeta(arch=name, num_classes=1000, img_size=args.img_size)
        with torch.no_grad():
            reference = model(torch.from_numpy(x)).numpy()
        row = {"model": name}
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(model, meta, Path(tmp) / "m.onnx")
            export_openvino(model, meta, Path(tmp) / "m.xml")
            for backend, file in (("onnxruntime", "m.onnx"), ("openvino", "m.xml")):
                stats = compare_outputs(reference, runtime.load(Path(tmp) / file, precision="fp32")(x))
                row[backend] = {k: stats[k] for k in ("max_abs_diff", "cosine_min", "top1_agreement")}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"{name}: onnx top-1 {row['onnxruntime']['top1_agreement']:.2f} max|d| "
              f"{row['onnxruntime']['max_abs_diff']:.2e}; openvino top-1 {row['openvino']['top1_agreement']:.2f} "
              f"max|d| {row['openvino']['max_abs_diff']:.2e}", flush=True)
    Path(args.out).write_text(json.dumps({"img_size": args.img_size, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
