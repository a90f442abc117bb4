"""Accuracy cost of compression on digits (32x32): train, prune to 50% MACs, fine-tune with and without
distillation from the unpruned model, and INT8-export; every figure is test accuracy via `edgeres eval`'s path.

Usage: python benchmarks/compression_accuracy.py [--models se_resnet18 simam_resnet18 resnet50] [--out runs/acc]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgeres.compress.job import FinetuneConfig, compress_checkpoint
from edgeres.compress.prune import PruneConfig
from edgeres.data import DataConfig
from edgeres.evaluate import evaluate_artifact
from edgeres.export import ExportConfig, export_checkpoint
from edgeres.train.config import TrainConfig
from edgeres.train.loop import train


def _acc(path: Path) -> float:
    return evaluate_artifact(path, out=path.parent / f"{path.name}.eval")[0]["test"]["accuracy"]


def study(model: str, root: Path, epochs: int, finetune_epochs: int) -> dict:
    base = root / model
    t0 = time.perf_counter()
    if not (base / "model.safetensors").exists():
        train(TrainConfig(model=model, data=DataConfig("digits", img_size=32), out=str(base), epochs=epochs))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["se_resnet18", "simam_resnet18", "resnet50"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=5)
    ap.add_argument("--out", default="runs/compression-accuracy")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "compression_accuracy.json"))
    args = ap.parse_args()
    rows = [study(m, Path(args.out), args.epochs, args.finetune_epochs) for m in args.models]
    Path(args.results).write_text(json.dumps(rows, indent=2) + "\n")
    print("| model | FP32 | pruned 50% MACs + KD | pruned, no KD | ONNX Runtime INT8 | OpenVINO INT8 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r['fp32'] * 100:.2f}%"] + [
            f"{r[k] * 100:.2f}% ({(r[k] - r['fp32']) * 100:+.2f})" if k in r else "–"
            for k in ("pruned_kd", "pruned_no_kd", "onnxruntime_int8", "openvino_int8")]
        print(f"| {r['model']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
