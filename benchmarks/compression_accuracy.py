"""Accuracy cost of compression on digits (32x32): train, prune to 50% MACs, fine-tune with and without
distillation from the unpruned model, and INT8-export; every figure is test accuracy via `edgeres eval`'s path.

Nothing here is timed, so benchmarks/method.py contributes only the record (settings, machine, versions)
and the README block.

Usage: python benchmarks/compression_accuracy.py [--models se_resnet18 simam_resnet18 resnet50] [--workdir runs/acc]
       [--quick] [--table-only]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import method
from edgeres.compress.job import FinetuneConfig, compress_checkpoint
from edgeres.compress.prune import PruneConfig
from edgeres.data import DataConfig
from edgeres.evaluate import evaluate_artifact
from edgeres.export import ExportConfig, export_checkpoint
from edgeres.train.config import TrainConfig
from edgeres.train.loop import train


def _acc(path: Path) -> float:
    return evaluate_artifact(path, out=path.parent / f"{path.name}.eval")[0]["test"]["accuracy"]


NAME = "compression_accuracy"


def study(model: str, root: Path, epochs: int, finetune_epochs: int, img_size: int = 32) -> dict:
    """Train (unless already trained under `root`), prune with and without KD, INT8-export; test accuracies."""
    base = root / model
    t0 = time.perf_counter()
    if not (base / "model.safetensors").exists():
        train(TrainConfig(model=model, data=DataConfig("digits", img_size=img_size), out=str(base), epochs=epochs))
    row = {"model": model, "fp32": _acc(base), "train_s": round(time.perf_counter() - t0, 1)}
    for label, teacher in (("pruned_kd", str(base)), ("pruned_no_kd", None)):
        out = root / f"{model}_{label}"
        if not (out / "model.safetensors").exists():
            compress_checkpoint(base, out, PruneConfig(target="macs", amount=0.5),
                                FinetuneConfig(epochs=finetune_epochs, teacher=teacher))
        meta = json.loads((out / "model.json").read_text())["compression"]
        row[label] = _acc(out)
        row[f"{label}_macs_fraction"] = meta["after"]["macs"] / meta["before"]["macs"]
    exports = root / f"{model}_exports"
    doc = export_checkpoint(base, exports, ExportConfig(formats=("onnx", "openvino"), precisions=("int8",)))
    for a in doc["artifacts"]:
        row[f"{a['backend']}_int8"] = _acc(Path(a["file"]))
    return row


def markdown(result: dict[str, Any]) -> str:
    """The README block of a saved result."""
    lines = ["| model | FP32 | pruned 50% MACs + KD | pruned, no KD | ONNX Runtime INT8 | OpenVINO INT8 |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        cells = [f"{r['fp32'] * 100:.2f}%"] + [
            f"{r[k] * 100:.2f}% ({(r[k] - r['fp32']) * 100:+.2f})" if k in r else "–"
            for k in ("pruned_kd", "pruned_no_kd", "onnxruntime_int8", "openvino_int8")]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + method.footer(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["se_resnet18", "simam_resnet18", "resnet50"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=5)
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--workdir", default="runs/compression-accuracy", help="trained models (reused when present)")
    method.add_output_arguments(ap)
    args = method.quick(ap.parse_args(), models=["test_resnet"], epochs=1, finetune_epochs=1, img_size=16)
    if args.table_only:
        return method.rerender(NAME, args, markdown)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeres-acc-") as tmp:
        root = Path(tmp if args.quick else args.workdir)
        rows = [study(m, root, args.epochs, args.finetune_epochs, args.img_size) for m in args.models]
    result = method.record(NAME, args, start, data=f"digits {args.img_size}x{args.img_size}", rows=rows)
    method.finish(NAME, result, args, markdown)


if __name__ == "__main__":
    main()
