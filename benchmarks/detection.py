"""Detection on shapes-det (issue 9's figures): train yolo_resnet18 within a time budget, export it (ONNX Runtime and
OpenVINO, FP32 and INT8), prune it to half the MACs with distillation, INT8-export the pruned model; every mAP is
COCO mAP on the test split through `edgeres eval`'s path. Then time one 640x480 frame end to end (letterbox,
inference, box decode, NMS: what `edgeres predict` does) for the unpruned PyTorch FP32 model against the pruned
OpenVINO INT8 model, interleaved in one process, as a paired ratio with an A/A control.

Usage: python benchmarks/detection.py [--model yolo_resnet18] [--img-size 256] [--epochs 36] [--no-amp]
       [--workdir runs/detection] [--quick] [--table-only]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import method
from edgeres import runtime
from edgeres.artifacts import read_json
from edgeres.bench.worker import end_to_end_call
from edgeres.compress.job import FinetuneConfig, compress_checkpoint
from edgeres.compress.prune import PruneConfig
from edgeres.data import DataConfig
from edgeres.data.detect.shapes_det import render_scene
from edgeres.evaluate import evaluate_artifact
from edgeres.export import ExportConfig, export_checkpoint
from edgeres.train.config import TrainConfig
from edgeres.train.loop import train

NAME = "detection"
FRAME = (480, 640)  # a VGA camera frame, height x width


def _metrics(path: Path) -> dict[str, Any]:
    test = evaluate_artifact(path, out=path.parent / f"{Path(path).name}.eval")[0]["test"]
    return {"map": test["map"], "map50": test["map50"]}


def _frame(seed: int = 1) -> np.ndarray:
    """A shapes-det scene drawn at 640 px and cropped to 640x480, so NMS sees real objects."""
    pixels, _, _ = render_scene(FRAME[1], np.random.default_rng(seed))
    return np.ascontiguousarray(pixels[: FRAME[0]])


def accuracy_study(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Train (unless trained under `root`), export, prune with distillation, export the pruned model; test mAPs."""
    data = DataConfig("shapes-det", img_size=args.img_size, detect_images=args.images)
    base = root / "base"
    if not (base / "model.safetensors").exists():
        train(TrainConfig(model=args.model, data=data, out=str(base), epochs=args.epochs, batch_size=16, lr=2e-3,
                          threads=args.threads, amp=args.amp))
    train_s = round(sum(h["seconds"] for h in read_json(base / "history.json")), 1)  # the epochs, as trained
    rows = {"pytorch_fp32": _metrics(base)}
    exports = export_checkpoint(base, root / "base_exports", ExportConfig(
        formats=("onnx", "openvino"), precisions=("fp32", "int8"), calib_size=128, dynamic_batch=False))
    for a in exports["artifacts"]:
        rows[f"{a['backend']}_{a['precision']}"] = _metrics(Path(a["file"]))
    pruned = root / "pruned"
    if not (pruned / "model.safetensors").exists():
        compress_checkpoint(base, pruned, PruneConfig(target="macs", amount=0.5, round_to=args.round_to),
                            FinetuneConfig(epochs=args.finetune_epochs, lr=1e-3, teacher=str(base), amp=args.amp))
    macs = read_json(pruned / "model.json")["compression"]
    rows["pruned_kd_pytorch_fp32"] = {**_metrics(pruned),
                                      "macs_fraction": macs["after"]["macs"] / macs["before"]["macs"]}
    pruned_exports = export_checkpoint(pruned, root / "pruned_exports", ExportConfig(
        formats=("openvino",), precisions=("int8",), calib_size=128, dynamic_batch=False))
    ir = Path(pruned_exports["artifacts"][0]["file"])
    rows["pruned_kd_openvino_int8"] = _metrics(ir)
    return {"train_s": train_s, "rows": rows, "base": str(base), "pruned_ir": str(ir)}


def speed_study(args: argparse.Namespace, base: str, pruned_ir: str) -> dict[str, Any]:
    """End-to-end p50 of one frame: unpruned PyTorch FP32 against pruned OpenVINO INT8, interleaved."""
    frame = _frame()
    contenders = {
        "pytorch_fp32": end_to_end_call(runtime.load(base, threads=args.threads), frame),
        "pruned_openvino_int8": end_to_end_call(runtime.load(pruned_ir, threads=args.threads), frame),
        "pruned_openvino_int8_twin": end_to_end_call(runtime.load(pruned_ir, threads=args.threads), frame),
    }
    samples, load = method.timed(contenders, args, tied=[["pruned_openvino_int8", "pruned_openvino_int8_twin"]])
    return {"samples": {k: method.distribution(v) for k, v in samples.items()}, "load": load,
            "speedup": method.compare(samples["pytorch_fp32"], samples["pruned_openvino_int8"], args.rounds),
            "control": method.control(samples, "pruned_openvino_int8", "pruned_openvino_int8_twin", args.rounds)}


def markdown(result: dict[str, Any]) -> str:
    """The README block of a saved result."""
    rows, base = result["rows"], result["rows"]["pytorch_fp32"]
    lines = [f"{result['data']}; `{result['settings']['model']}` trained {result['settings']['epochs']} epochs"
             f"{' under bf16 autocast' if result['settings'].get('amp') else ''} in {result['train_s']} s.", "",
             "| artifact | mAP@0.5:0.95 | Δ vs PyTorch (points) | mAP@0.5 |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['map'] * 100:.2f} | {(r['map'] - base['map']) * 100:+.2f} | "
                     f"{r['map50'] * 100:.2f} |")
    s = result["samples"]
    lines += ["", "End to end, one 640x480 frame (letterbox, inference, decode, NMS), batch 1, "
                  f"{result['settings']['threads']} threads:", "",
              "| contender | p50 ms | p90 ms | runs |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['p50_ms']:.2f} | {v['p90_ms']:.2f} | {v['runs']} |" for k, v in s.items()]
    lines += ["", f"Speed-up of the pruned OpenVINO INT8 model over unpruned PyTorch FP32 (paired p50 ratio, 95% CI): "
                  f"**{method.ci(result['speedup'], '.2f')}**, pooled {result['speedup']['ratio_pooled_p50']:.2f}."]
    return "\n".join(lines) + "\n\n" + method.footer(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolo_resnet18")
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--images", type=int, default=600, help="shapes-det scenes")
    ap.add_argument("--epochs", type=int, default=36, help="36 bf16 epochs fit the 20-minute budget on a 2-core "
                                                            "AVX-512 BF16 CPU")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                    help="train and fine-tune under bf16 autocast where the CPU has native bf16 (edgeres train --amp)")
    ap.add_argument("--finetune-epochs", type=int, default=30)
    ap.add_argument("--round-to", type=int, default=8, help="pruned channel counts are multiples of this")
    ap.add_argument("--workdir", default="runs/detection", help="trained models (reused when present)")
    method.add_arguments(ap, rounds=10, runs=200, warmup=10, max_seconds=120)
    args = method.quick(ap.parse_args(), model="test_yolo", img_size=64, images=60, epochs=1, finetune_epochs=1,
                        round_to=1, rounds=3, runs=12, max_seconds=10)
    if args.table_only:
        return method.rerender(NAME, args, markdown)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeres-det-") as tmp:
        root = Path(tmp if args.quick else args.workdir)
        accuracy = accuracy_study(args, root)
        speed = speed_study(args, accuracy["base"], accuracy["pruned_ir"])
    result = method.record(NAME, args, start, data=f"shapes-det {args.img_size}x{args.img_size}, {args.images} scenes",
                           **{k: v for k, v in accuracy.items() if k not in ("base", "pruned_ir")}, **speed)
    method.finish(NAME, result, args, markdown)


if __name__ == "__main__":
    main()
