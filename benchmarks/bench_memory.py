"""Memory figures of `edgeres bench`: a ResNet-18 INT8 IR against a ResNet-50 FP32 IR.

Both IRs are made here from random weights (no download): ResNet-18 quantized by NNCF on the same
pseudo-images runtimes.py uses, ResNet-50 left in FP32 (about 10x the bytes on disk). Each is measured
the way `edgeres bench` measures it: the runtime-only figure from a fresh process that imports only
OpenVINO, loads the IR and runs it, and the harness figure of the measuring process (torch and the
data loaded). The runtime figures must order the models as their sizes do; the harness figure is
nearly the same for both, which is why it is no longer the only one reported.

Usage: python benchmarks/bench_memory.py [--quick] [--table-only]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import method
from edgeres.bench.run import BenchConfig, bench_artifacts
from edgeres.export.openvino.convert import export_openvino
from edgeres.meta import ModelMeta
from edgeres.models import create
from runtimes import CALIBRATION_IMAGES, build_model, export_openvino_pair, pseudo_images

NAME = "bench_memory"


def make_irs(out: Path) -> dict[str, Path]:
    """ResNet-18 INT8 and ResNet-50 FP32 IRs under `out`."""
    model, meta = build_model()
    r18 = export_openvino_pair(model, meta, out / "r18", pseudo_images(CALIBRATION_IMAGES, meta))
    torch.manual_seed(0)
    export_openvino(create("resnet50", num_classes=1000).eval(), ModelMeta(arch="resnet50", num_classes=1000),
                    out / "r50" / "model.xml")
    return {"resnet18 int8 IR": r18["openvino_int8"], "resnet50 fp32 IR": out / "r50" / "model.xml"}


def markdown(result: dict[str, Any]) -> str:
    """The README block of a saved result."""
    lines = ["| artifact | file MB | runtime-only peak MB | model's increment MB | harness peak MB | contended |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        m = r["memory"]
        busy = {True: "YES", False: "no", None: "?"}[r["contended"]]
        lines.append(f"| {r['artifact']} | {r['size_bytes'] / 1e6:.1f} | {m['runtime_peak_mb']:.1f} | "
                     f"{m['runtime_increment_mb']:.1f} | {m['harness_peak_mb']:.1f} | {busy} |")
    return "\n".join(lines) + "\n\n" + method.footer(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    method.add_output_arguments(ap)
    args = method.quick(ap.parse_args(), runs=5)
    if args.table_only:
        return method.rerender(NAME, args, markdown)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeres-bench-memory-") as tmp:
        irs = make_irs(Path(tmp))
        config = BenchConfig(runs=args.runs, warmup=5, budget_s=10, min_seconds=0.5, accuracy=False,
                             end_to_end=False)
        measured = bench_artifacts(list(irs.values()), config)
    rows = [{"artifact": name, "size_bytes": e["size_bytes"], "precision": e["precision"], "memory": e["memory"],
             "contended": (e.get("load") or {}).get("contended")}
            for name, e in zip(irs, measured["artifacts"])]
    result = method.record(NAME, args, start, bench_config=measured["config"], rows=rows)
    method.finish(NAME, result, args, markdown)


if __name__ == "__main__":
    main()
