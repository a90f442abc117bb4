"""The `edgeres` command: each subcommand parses, calls one library function, prints a summary."""
from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import NoReturn, Optional

import typer

from edgeres.compare.commands import register as register_compare_commands
from edgeres.deploy.commands import register as register_deploy_commands
from edgeres.optimize.commands import register as register_optimize_commands
from edgeres.train.options import ADVERSARIAL, BETAS, LOSS, PERCEPTUAL, PERCEPTUAL_WEIGHTS, loss_fields
from edgeres.explain.commands import register as register_explain_commands
from edgeres.errors import (EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_INTERNAL_ERROR, CheckFailed, UserInputError,
                            os_error_as_user_input)
from edgeres.meta import DEFAULT_TASK, MAX_IMG_SIZE, MAX_NUM_CLASSES, MIN_IMG_SIZE
from edgeres.ui import console, csv_values, fail, int_values, print_table, progress_bar, setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, compress, export and measure ResNet-family models for edge devices.")


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug output, including third-party "
                                                                      "libraries' progress (NNCF)."),
             ) -> None:
    setup_logging(verbose)


def _split(text: Optional[str]) -> Optional[tuple[float, float, float]]:
    if text is None:
        return None
    try:
        parts = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserInputError(f"--split takes three fractions like 0.8,0.1,0.1, got {text!r}") from None
    if len(parts) != 3:
        raise UserInputError(f"--split takes three fractions (train,val,test), got {len(parts)}")
    return parts  # type: ignore[return-value]


@app.command("models")
def models_cmd(
    pattern: Optional[str] = typer.Argument(None, help="Shell-style filter, e.g. '*se*'."),
    img_size: int = typer.Option(224, min=MIN_IMG_SIZE, max=MAX_IMG_SIZE, help="Input size at which MACs are counted."),
    num_classes: int = typer.Option(1000, min=1, max=MAX_NUM_CLASSES,
                                    help="Classes for the parameter count (1000 as ImageNet; 80 compares detectors "
                                         "with COCO models)."),
) -> None:
    """List model variants with their task, parameters and MACs (detectors beside a published reference)."""
    import torch

    from edgeres.bench.profile import count_macs, count_params
    from edgeres.models import create, list_models

    names = list_models(pattern)
    if not names:
        raise UserInputError(f"no model matches {pattern!r}; `edgeres models` lists them all")
    rows, references = [], set()
    with progress_bar("counting", total=len(names)) as advance:
        for name in names:
            with torch.device("meta"):  # shapes only: no memory or initialisation, even at 4096 px
                m = create(name, num_classes=num_classes)
                rows.append((name, m.task, count_params(m), count_macs(m, (3, img_size, img_size)) / 1e6))
            references.add(getattr(m, "scale_reference", None))
            advance(1)
    # Published models for scale, with their own class count (not this table's).
    rows += [(ref, "", params, None) for ref, params in sorted(r for r in references if r)]
    print_table(f"models at {img_size}x{img_size}, {num_classes} classes", ["name", "task", "params", "MMACs"], rows)


@app.command("train")
def train_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Variant name (see `edgeres models`)."),
    data: str = typer.Option(..., "--data", "-d", help="'digits', 'shapes', 'shapes-det', an image folder, "
                                                       "a YOLO data.yaml or folder, or a COCO json."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory for the checkpoint and metrics."),
    epochs: int = typer.Option(10, help="Training epochs."),
    img_size: int = typer.Option(64, help="Input images are resized to this square size."),
    batch_size: int = typer.Option(64, help="Images per step (per process under torchrun)."),
    lr: float = typer.Option(1e-3, help="Peak learning rate."),
    optimizer: str = typer.Option("adamw", help="adamw, adam or sgd."),
    scheduler: str = typer.Option("cosine", help="cosine, plateau or none."),
    patience: int = typer.Option(0, help="Early stop after this many epochs without val-loss gain (0: off)."),
    balance: str = typer.Option("none", help="Class imbalance: none, loss (weighted) or sampler."),
    betas: Optional[str] = BETAS,
    loss: str = LOSS,
    perceptual: float = PERCEPTUAL,
    perceptual_weights: Optional[Path] = PERCEPTUAL_WEIGHTS,
    adversarial: float = ADVERSARIAL,
    weights: Optional[Path] = typer.Option(None, help="Local weights to start from (torchvision/timm/edgeres)."),
    freeze: Optional[str] = typer.Option(None, help="Freeze stages up to and including this one, e.g. layer3."),
    in_chans: Optional[int] = typer.Option(None, help="Input channels (default: the data's own)."),
    split: Optional[str] = typer.Option(None, help="train,val,test fractions for a folder without splits."),
    classes: Optional[str] = typer.Option(None, help="Only these class folders (comma-separated, in this order); "
                                                     "the others are not read."),
    augment: bool = typer.Option(True, help="Augment the training split."),
    skip_bad: bool = typer.Option(False, help="Skip unreadable images (and count them) instead of failing."),
    pairs: Optional[str] = typer.Option(None, help="Image-to-image pairs made from the data: denoise, inpaint, "
                                                   "sr2 or sr4 (default: input/ and target/ folders, else denoise)."),
    sigma: float = typer.Option(0.1, help="Image-to-image denoise: the noise's std in image range [0, 1]."),
    seed: int = typer.Option(0, help="Seed for splits, initialisation and shuffling."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out from its last epoch."),
    device: str = typer.Option("auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N."),
    amp: bool = typer.Option(False, help="Mixed precision: bf16 or fp16 on a GPU, bf16 on a CPU with native bf16."),
) -> None:
    """Train a classifier, a detector or an image-to-image model (the model decides); the best checkpoint and its
    test metrics go to --out."""
    from edgeres.data import DataConfig
    from edgeres.train.config import TrainConfig
    from edgeres.train.loop import train

    data_cfg = DataConfig(source=data, img_size=img_size, in_chans=in_chans, split=_split(split), seed=seed,
                          augment=augment, skip_bad=skip_bad, classes=csv_values(classes, "--classes") if classes else None,
                          pairs=pairs, sigma=sigma)
    cfg = TrainConfig(model=model, data=data_cfg, out=str(out), epochs=epochs, batch_size=batch_size, lr=lr,
                      optimizer=optimizer, scheduler=scheduler, patience=patience, balance=balance,
                      **loss_fields(betas, loss, perceptual, perceptual_weights, adversarial),
                      weights=str(weights) if weights else None, freeze=freeze, seed=seed, threads=threads,
                      resume=resume, device=device, amp=amp)
    result = train(cfg)
    if result.metrics:
        written = sorted(p.name for p in Path(out).iterdir() if p.is_file() and not p.name.startswith("."))
        _metrics_table(f"{model} -> {out}", result.metrics, _task_of_metrics(Path(out) / "metrics.json"))
        _print_operating_point(result.metrics)
        console.print(f"best epoch {result.best_epoch}; wrote {', '.join(written)} in {out}")


def _print_operating_point(metrics: dict) -> None:
    """Two classes: test sensitivity and specificity at the threshold chosen on val."""
    point = (metrics.get("test", {}).get("binary") or {}).get("operating_point")
    if point:
        positive = metrics["test"]["binary"]["positive"]
        console.print(f"threshold {point['threshold']:.3f} on P({positive}), chosen on val (Youden's J): test "
                      f"sensitivity {point['sensitivity']:.1%}, specificity {point['specificity']:.1%}, "
                      f"accuracy {point['accuracy']:.1%}")


def _task_of_metrics(path: Path) -> str:
    from edgeres.artifacts import read_json

    return read_json(path).get("task") or DEFAULT_TASK  # written before tasks existed: a classifier


def _metrics_table(title: str, metrics: dict, task_name: str) -> None:
    """One row per split of the task's table columns (accuracy, macro F1, AUC; or mAP, precision, recall)."""
    from edgeres.tasks import get_task

    task = get_task(task_name)
    headers = [h for h, _ in task.table_columns(next(iter(metrics.values())))]
    rows = [(split, m["n"], *[v for _, v in task.table_columns(m)]) for split, m in metrics.items()]
    print_table(title, ["split", "images", *headers], rows)


@app.command("eval")
def eval_cmd(
    path: Path = typer.Argument(..., help="A checkpoint directory or an exported .onnx/.xml/.engine file."),
    data: Optional[str] = typer.Option(None, help="Data to evaluate on (default: what the model was trained on)."),
    out: Optional[Path] = typer.Option(None, help="Where metrics.json goes (default: beside the artifact, or "
                                                  "in an eval-<data> folder there for other --data)."),
    backend: Optional[str] = typer.Option(None, help="torch, onnxruntime, openvino or tensorrt (default: by file)."),
    precision: Optional[str] = typer.Option(None, help="Ask the runtime for a precision, e.g. fp32."),
    threads: Optional[int] = typer.Option(None, help="Inference threads."),
    batch_size: int = typer.Option(64, help="Images per inference call."),
) -> None:
    """Measure an artifact on its test and val splits: accuracy, per-class metrics, AUC and a confusion matrix
    for a classifier; COCO mAP, per-class AP, precision/recall and a PR curve for a detector."""
    from edgeres.evaluate import evaluate_artifact

    metrics, written = evaluate_artifact(path, data=data, out=out, backend=backend, precision=precision,
                                         threads=threads, batch_size=batch_size)
    _metrics_table(str(path), metrics, _task_of_metrics(written))
    console.print(f"wrote {written}")


@app.command("fid")
def fid_cmd(
    path: Path = typer.Argument(..., help="An image-to-image checkpoint or exported file."),
    inception_weights: Optional[Path] = typer.Option(None, help="torch-fidelity's Inception-v3 weight file "
                                                                 "(weights-inception-2015-12-05-6726825d.pth)."),
    fid_features: Optional[Path] = typer.Option(None, help="Or: an edgeres classification checkpoint whose pooled "
                                                           "features stand in (not comparable with published FID)."),
    lpips_weights: Optional[Path] = typer.Option(None, help="LPIPS too (or alone): torchvision's backbone file, "
                                                            "alexnet-owt-7be5be79.pth, vgg16-397923af.pth or "
                                                            "squeezenet1_1-b8a52dc0.pth."),
    data: Optional[str] = typer.Option(None, help="Data to score on (default: what the model was trained on)."),
    split: str = typer.Option("test", help="Split to score."),
    kid_subset_size: int = typer.Option(1000, help="KID subset size (smaller test sets use all their images)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the scores as JSON here."),
) -> None:
    """FID and KID (given --inception-weights or --fid-features) and LPIPS (given --lpips-weights; lower is
    nearer) of an image-to-image model's outputs (and, for scale, its inputs) against the targets."""
    from edgeres.artifacts import write_json
    from edgeres.tasks.image2image_fid import score_artifact, scoring_networks

    network, lpips = scoring_networks(inception_weights, fid_features, lpips_weights)
    scores = score_artifact(path, network, data=data, split=split, kid_subset_size=kid_subset_size, lpips=lpips)
    columns = ([("FID", "fid"), ("KID", "kid_mean"), ("KID std", "kid_std"), ("KID subset", "kid_subset_size")]
               if network else []) + ([("LPIPS", "lpips")] if lpips else []) + [("images", "images")]
    rows = [(name, *[scores[name][key] for _, key in columns]) for name in ("output", "input")]
    labels = "; ".join(n.label for n in (network, lpips) if n is not None)
    print_table(f"{path} on {split}: {labels}", ["images vs targets", *[h for h, _ in columns]], rows)
    if json_out:
        write_json(json_out, scores)


@app.command("predict")
def predict_cmd(
    artifact: Path = typer.Argument(..., help="A checkpoint directory or an exported .onnx/.xml/.engine file."),
    images: Path = typer.Argument(..., help="An image file or a folder of images (searched at any depth)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the annotated images and predictions.json."),
    backend: Optional[str] = typer.Option(None, help="torch, onnxruntime, openvino or tensorrt (default: by file)."),
    precision: Optional[str] = typer.Option(None, help="Ask the runtime for a precision, e.g. fp32."),
    threads: Optional[int] = typer.Option(None, help="Inference threads."),
    batch_size: int = typer.Option(16, help="Images per inference call."),
    skip_bad: bool = typer.Option(False, help="Record unreadable images in the JSON and go on."),
) -> None:
    """Run an artifact on your images: annotated copies (classes or boxes) and one predictions.json."""
    from edgeres.predict import PREDICTIONS_FILE, find_images, predict_images

    total = len(find_images(images)[1])
    with progress_bar("predicting", total=total) as advance:
        doc = predict_images(artifact, images, out, backend=backend, precision=precision, threads=threads,
                             batch_size=batch_size, skip_bad=skip_bad, progress=advance)
    skipped = f"; skipped {len(doc['skipped'])} unreadable" if doc["skipped"] else ""
    console.print(f"{doc['images']} image(s) predicted{skipped}; wrote annotated images and "
                  f"{Path(out) / PREDICTIONS_FILE}")


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory to export."),
    to: str = typer.Option("onnx,openvino", help="Formats: onnx, openvino, tensorrt (comma-separated)."),
    precision: str = typer.Option("fp32", help="Precisions: fp32, fp16, int8 (comma-separated)."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default: CHECKPOINT/exports)."),
    calib_data: Optional[str] = typer.Option(None, help="Calibration data (default: the checkpoint's own)."),
    calib_size: int = typer.Option(300, help="Training-split images used to calibrate int8."),
    max_drop: Optional[float] = typer.Option(None, help="OpenVINO int8: keep sensitive layers in float "
                                                        "until accuracy drops at most this many points."),
    opset: int = typer.Option(17, help="ONNX opset."),
    dynamic_batch: bool = typer.Option(True, help="Dynamic batch dimension (else batch 1)."),
    attention_float: bool = typer.Option(True, help="Keep SE gates / SimAM energy / softmax in float in int8."),
    nms: bool = typer.Option(False, help="Detectors: NMS inside the graph (output 'detections', N x max_det x 6); "
                                         "TensorRT uses the EfficientNMS plugin."),
    max_det: int = typer.Option(100, help="With --nms: detections kept per image."),
    nms_iou: float = typer.Option(0.6, help="With --nms: IoU above which boxes of one class are suppressed."),
    nms_conf: float = typer.Option(0.25, help="With --nms: boxes scoring below this are dropped."),
    int8_preset: Optional[str] = typer.Option(None, help="int8: NNCF's preset, 'performance' (symmetric "
                                              "activations) or 'mixed' (asymmetric activations); default: each "
                                              "backend's own (OpenVINO performance, ONNX Runtime mixed)."),
    int8_per_channel: bool = typer.Option(True, "--int8-per-channel/--int8-per-tensor",
                                          help="ONNX int8: a weight scale per output channel, or one per tensor "
                                               "(OpenVINO always scales per channel)."),
    int8_method: str = typer.Option("minmax", help="ONNX int8 calibration: minmax, entropy or percentile "
                                                   "(OpenVINO uses NNCF's own)."),
) -> None:
    """Export to ONNX / OpenVINO / TensorRT; each file is validated against PyTorch before it is kept."""
    from edgeres.export import ExportConfig, export_checkpoint
    from edgeres.tasks import get_task

    config = ExportConfig(formats=csv_values(to, "--to"), precisions=csv_values(precision, "--precision"),
                          opset=opset,
                          dynamic_batch=dynamic_batch, calib_data=calib_data, calib_size=calib_size,
                          max_drop=max_drop, keep_attention_float=attention_float, nms=nms, max_det=max_det,
                          nms_iou=nms_iou, nms_conf=nms_conf, int8_preset=int8_preset,
                          int8_per_channel=int8_per_channel, int8_method=int8_method)
    out = out or checkpoint / "exports"
    with progress_bar("exporting", total=None) as advance:
        document = export_checkpoint(checkpoint, out, config, progress=lambda what: advance(0, step=what))
    task = get_task(document["task"])
    metric = task.metric
    rows = []
    for e in document["artifacts"] + document["failed"]:
        v = e.get("validation") or {}
        delta = v.get(f"val_{metric}_delta")
        rows.append((Path(e["file"]).name if e["file"] else "-", e["backend"], e["precision"], e["status"], e.get("bytes"),
                     v.get(f"val_{metric}"), None if delta is None else task.headline_scale * delta))
    print_table(f"exports of {checkpoint} -> {out}", ["file", "backend", "precision", "status", "bytes",
                                                      f"val {metric}", f"Δ vs PyTorch ({task.delta_unit})"], rows)
    console.print(f"wrote {out / 'export.json'}")
    if document["failed"]:
        kept = [e for e in document["failed"] if e["file"]]  # an exporter that raised wrote no file
        where = f"; the files that failed validation are in {out / 'failed'}" if kept else ""
        fail(f"{len(document['failed'])} export(s) failed (see {out / 'export.json'}){where}")
        raise typer.Exit(1)


@app.command("prune")
def prune_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to compress."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the compressed checkpoint."),
    macs: Optional[float] = typer.Option(None, help="Keep this fraction of MACs, e.g. 0.5."),
    params: Optional[float] = typer.Option(None, help="Keep this fraction of parameters."),
    ratio: Optional[float] = typer.Option(None, help="Remove this fraction of channels in every layer."),
    sparsity: Optional[float] = typer.Option(None, help="Unstructured: zero this fraction of weights "
                                                        "(smaller when compressed, no faster on dense runtimes)."),
    importance: str = typer.Option("l2", help="Channel ranking: l1, l2, bn (BN scale) or taylor."),
    global_pruning: bool = typer.Option(False, "--global", help="Rank channels across layers, not per layer."),
    round_to: int = typer.Option(8, help="Keep channel counts multiples of this (INT8 kernels like 8)."),
    steps: int = typer.Option(1, help="Prune in this many steps, fine-tuning between them."),
    finetune_epochs: int = typer.Option(0, help="Epochs of fine-tuning after pruning."),
    lr: float = typer.Option(5e-4, help="Fine-tuning learning rate."),
    distill: Optional[Path] = typer.Option(None, help="Teacher checkpoint to distill from while fine-tuning."),
    temperature: float = typer.Option(4.0, help="Distillation temperature."),
    alpha: float = typer.Option(0.3, help="Weight of the hard-label loss (the rest is distillation)."),
    feature_weight: float = typer.Option(0.0, help="Weight of stage-feature distillation (0: logits only)."),
    seed: int = typer.Option(0, help="Seed for fine-tuning."),
    device: str = typer.Option("auto", help="Fine-tune on: auto (a GPU when there is one), cpu, cuda or cuda:N."),
    amp: bool = typer.Option(False, help="Mixed-precision fine-tuning, as in `edgeres train --amp`."),
) -> None:
    """Prune channels to a MACs/params budget, then fine-tune (optionally distilled) into a new checkpoint."""
    from edgeres.compress.job import FinetuneConfig, compress_checkpoint
    from edgeres.compress.prune import PruneConfig

    targets = {k: v for k, v in (("macs", macs), ("params", params), ("ratio", ratio)) if v is not None}
    if len(targets) > 1:
        raise UserInputError(f"give one pruning target, not {sorted(targets)}")
    prune_config = None
    if targets:
        (target, amount), = targets.items()
        prune_config = PruneConfig(target=target, amount=amount, importance=importance,
                                   global_pruning=global_pruning, round_to=round_to, steps=steps)
    ft = FinetuneConfig(epochs=finetune_epochs, lr=lr, teacher=str(distill) if distill else None,
                        temperature=temperature, alpha=alpha, feature_weight=feature_weight, seed=seed,
                        device=device, amp=amp)
    summary = compress_checkpoint(checkpoint, out, prune_config, ft, sparsity=sparsity)
    b, a = summary["before"], summary["after"]
    rows = [(what, b[key], a[key], a[key] / b[key] if b[key] else None)
            for what, key in (("parameters", "params"), ("MACs", "macs"), ("file bytes", "file_bytes"))]
    from edgeres.tasks import get_task

    task = get_task(_task_of_metrics(Path(out) / "metrics.json"))
    rows += [(f"test {name}", before, after, None) for (name, before), (_, after)
             in zip(task.table_columns(b["test"]), task.table_columns(a["test"]))]
    print_table(f"{checkpoint} -> {out}", ["", "before", "after", "after/before"], rows)
    console.print(f"{task.metric} drop: {summary[f'{task.metric}_drop_points']:.2f} {task.delta_unit}; wrote {out}")
    if summary["prune"]["kind"] == "unstructured":
        console.print(summary["prune"]["note"])


@app.command("bench")
def bench_cmd(
    artifacts: list[Path] = typer.Argument(..., help="Checkpoints and exported files to measure."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for results.json (and the report)."),
    batch_sizes: str = typer.Option("1", help="Batch sizes to sweep, e.g. 1,8."),
    threads: str = typer.Option("2", help="Thread counts to sweep, e.g. 1,2."),
    runs: int = typer.Option(200, help="Timed runs per setting (after warm-up)."),
    warmup: int = typer.Option(20, help="Untimed warm-up runs."),
    budget: float = typer.Option(20.0, help="Seconds at most of timing per setting."),
    min_seconds: float = typer.Option(3.0, help="Seconds at least of timing per setting (stabler medians)."),
    precision: Optional[str] = typer.Option(None, help="Ask every runtime for this precision (e.g. fp32)."),
    accuracy: bool = typer.Option(True, help="Evaluate each artifact on its test split."),
    baseline: Optional[str] = typer.Option(None, help="Artifact name speed-ups are relative to (default: first)."),
    report: bool = typer.Option(True, help="Also write report.md / report.html / plots into --out."),
) -> None:
    """Latency (p50/p90/p99), size, peak memory and accuracy of each artifact, measured the same way."""
    from edgeres.bench.run import BenchConfig, bench_artifacts, check_out, write_results

    config = BenchConfig(batch_sizes=int_values(batch_sizes, "--batch-sizes"),
                         threads=int_values(threads, "--threads"),
                         runs=runs, warmup=warmup, budget_s=budget, min_seconds=min_seconds, precision=precision,
                         accuracy=accuracy)
    check_out(out)  # before measuring, not after
    with progress_bar("benchmarking", total=None) as advance:
        results = bench_artifacts(artifacts, config, baseline, progress=lambda what: advance(0, now=what))
    written = write_results(results, out)
    _print_summary(results)
    console.print(f"wrote {written}")
    if report:
        _render(results, out)


def _print_summary(results: dict) -> None:
    from edgeres.report.render import summary_rows

    columns, rows = summary_rows(results)
    print_table("benchmark", columns, rows)


def _render(results: dict, out: Path) -> None:
    from edgeres.report.render import render_report

    files = render_report(results, out)
    console.print(f"report: {files['report.html']} and {files['report.md']}")


@app.command("report")
def report_cmd(
    results: Path = typer.Argument(..., help="A results.json written by `edgeres bench`."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default: beside results.json)."),
) -> None:
    """Render report.md, a self-contained report.html and plots from results.json."""
    from edgeres.report.schema import read_results

    data = read_results(results)  # a wrong field exits 2 naming the file and the field
    _print_summary(data)
    _render(data, out or results.parent)


@app.command("check")
def check_cmd(
    baseline: Path = typer.Option(..., help="Reference artifact (e.g. the unpruned FP32 checkpoint)."),
    candidate: Path = typer.Option(..., help="Artifact to gate (a checkpoint or an exported file)."),
    data: Optional[str] = typer.Option(None, help="Data to test on (default: the baseline's test split)."),
    max_drop: float = typer.Option(0.5, help="Largest allowed accuracy drop, in points (image-to-image: PSNR "
                                             "in dB, SSIM in points of SSIM x100)."),
    max_class_drop: Optional[float] = typer.Option(None, help="Largest allowed per-class recall drop, in points."),
    max_latency_ms: Optional[float] = typer.Option(None, help="Largest allowed p50 latency (batch 1), ms."),
    max_size_mb: Optional[float] = typer.Option(None, help="Largest allowed file size, MB."),
    max_explanation_drift: Optional[float] = typer.Option(
        None, help="Largest allowed explanation drift: 1 - the mean rank correlation of the candidate's occlusion "
                   "maps with the baseline's on the first test images (0 = the same evidence; 0.2 is a loose limit)."),
    explanation_images: int = typer.Option(16, help="Test images the explanation drift compares."),
    threads: Optional[int] = typer.Option(None, help="Inference threads."),
    junit: Optional[Path] = typer.Option(None, help="Write a JUnit XML report here for CI systems."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full result as JSON here."),
    allow_unrelated: bool = typer.Option(False, help="Gate a candidate not made from the baseline (a warning, "
                                                     "recorded in the result) instead of refusing it."),
) -> None:
    """The CI gate: exit 0 when the candidate keeps accuracy (and latency/size) within limits, 1 when not."""
    from edgeres.artifacts import write_json
    from edgeres.check import check_artifacts, check_outputs
    from edgeres.evaluate.gate import GateConfig, check_rows, write_junit

    config = GateConfig(max_drop=max_drop, max_class_drop=max_class_drop, max_latency_ms=max_latency_ms,
                        max_size_mb=max_size_mb, max_explanation_drift=max_explanation_drift,
                        explanation_images=explanation_images)
    check_outputs(junit=junit, json=json_out)  # a bad report path exits 2 before both models are evaluated
    result = check_artifacts(baseline, candidate, config, data=data, threads=threads,
                             allow_unrelated=allow_unrelated)
    columns, rows = check_rows(result)
    print_table(f"gate: {candidate} vs {baseline}", columns, rows)
    for w in result.warnings:
        console.print(f"warning: {w}", highlight=False)
    if junit:
        write_junit(result, junit)
    if json_out:
        write_json(json_out, result.to_dict())
    if not result.passed:
        for reason in result.reasons:
            fail(reason)
        raise typer.Exit(1)
    console.print("gate passed")


@app.command("qat")
def qat_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to quantize with training."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the INT8 exports and qat.json."),
    epochs: int = typer.Option(3, help="Fake-quantized fine-tuning epochs."),
    lr: float = typer.Option(1e-4, help="Fine-tuning learning rate."),
    calib_size: int = typer.Option(300, help="Training-split images for the initial quantization ranges."),
    budget: Optional[float] = typer.Option(None, help="Accuracy budget in points: says whether QAT beat PTQ to it."),
    device: str = typer.Option("auto", help="Fine-tune on: auto (a GPU when there is one), cpu, cuda or cuda:N "
                                            "(fp32 always: bf16 would blur the int8 grid QAT simulates)."),
) -> None:
    """Quantization-aware training (NNCF): when post-training INT8 loses more accuracy than allowed."""
    from edgeres.compress.qat import QATConfig, quantization_aware_training, recommend_qat

    config = QATConfig(epochs=epochs, lr=lr, calib_size=calib_size, device=device)
    record = quantization_aware_training(checkpoint, out, config)
    acc, drops = record["accuracy"], record["drop_points"]
    rows = [(k, acc[k] * 100 if acc.get(k) is not None else None, drops.get(k)) for k in acc]
    print_table(f"QAT of {checkpoint} -> {out}", ["model", "test accuracy %", "drop (points)"], rows)
    if budget is not None:
        ptq = drops.get("ptq_int8_openvino")
        verdict = "exceeds" if ptq is not None and recommend_qat(ptq, budget) else "is within"
        console.print(f"post-training INT8 {verdict} the {budget}-point budget")
    console.print(f"wrote {out / 'qat.json'}")


@app.command("run")
def run_cmd(
    recipe: str = typer.Argument(..., help="A packaged recipe name (e.g. demo) or a recipe YAML file."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default: runs/<recipe name>)."),
    force: bool = typer.Option(False, help="Rerun every stage even if its inputs are unchanged."),
    data: Optional[str] = typer.Option(None, help="Run the recipe on this image folder (or built-in set) instead "
                                                  "of its own data."),
    weights: Optional[Path] = typer.Option(None, help="Local weight file the train stage starts from (e.g. "
                                                      "ImageNet weights; the recipe's freeze applies only then)."),
    classes: Optional[str] = typer.Option(None, help="With --data: only these class folders (comma-separated)."),
) -> None:
    """Run a whole pipeline: train, prune+distill, export+quantize, bench, explain, check, report (and compare)."""
    from edgeres.artifacts import read_json
    from edgeres.pipeline import run_recipe
    from edgeres.recipe import load_recipe, with_overrides

    r = with_overrides(load_recipe(recipe), data=data, weights=str(weights) if weights else None,
                       classes=csv_values(classes, "--classes") if classes else None)
    summary = run_recipe(r, out=out, force=force,
                         on_stage=lambda stage, what: console.print(f"[bold]{stage}[/]: {what}", highlight=False))
    run = Path(summary["run"])
    if r.train:
        metrics = read_json(run / "train" / "metrics.json")
        _metrics_table(f"{r.train.model}, trained", {k: metrics[k] for k in ("test", "val") if k in metrics},
                       metrics.get("task") or DEFAULT_TASK)
        _print_operating_point(metrics)
    if r.compare:
        from edgeres.compare.output import table_rows

        document = read_json(run / "compare" / "compare.json")
        print_table(f"comparison (test split, {document['data']['test_images']} images)", *table_rows(document))
    if r.bench:
        _print_summary({**read_json(run / "bench" / "results.json"), "gate": summary["gate"]})
    if summary["gate"] is not None:
        from edgeres.evaluate.gate import check_rows

        columns, rows = check_rows(summary["gate"])
        print_table(f"gate: {summary['gate']['candidate_name']} vs the trained FP32 checkpoint", columns, rows)
    if r.report:
        console.print(f"report: {(run / 'report' / 'report.html').resolve()}")
    console.print(f"run directory: {run.resolve()} (manifest.json lists every stage's inputs and outputs)")
    if summary["passed"] is False:
        for reason in summary["gate"]["reasons"]:
            fail(reason)
        raise typer.Exit(1)


register_compare_commands(app)
register_deploy_commands(app)
register_optimize_commands(app)
register_explain_commands(app)


def main() -> None:
    """Entry point. Exit 0 success, 1 a check failed, 2 bad input or usage (one line, no traceback), 3 a bug."""
    setup_logging()
    try:
        app()
    except UserInputError as e:
        _exit_bad_input(e)
    except CheckFailed as e:
        fail(str(e))
        sys.exit(EXIT_CHECK_FAILED)
    except OSError as e:
        user_error = os_error_as_user_input(e)
        if user_error is None:
            _exit_internal_error(e)
        _exit_bad_input(user_error)
    except KeyboardInterrupt:
        fail("interrupted; `edgeres train --resume` continues a training run, and `edgeres optimize` run again "
             "with the same --out continues a search")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - anything else is a bug; never exit 1, which means "regression"
        _exit_internal_error(e)


def _exit_bad_input(e: UserInputError) -> NoReturn:
    fail(str(e))
    sys.exit(EXIT_BAD_INPUT)


def _exit_internal_error(e: BaseException) -> NoReturn:
    traceback.print_exc()
    fail(f"internal error ({type(e).__name__}: {e}); this is a bug in edgeres, please report it "
         "with the traceback above")
    sys.exit(EXIT_INTERNAL_ERROR)


if __name__ == "__main__":
    main()
