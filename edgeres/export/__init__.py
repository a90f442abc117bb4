"""Export a checkpoint to edge formats; every file is validated against the PyTorch model before it is kept.

Publishing is all-or-nothing: the whole set (files, failed/ and export.json) is built in a staging folder
beside `out`, then swapped in by renames (edgeres.export.publish), so a reader never sees the new model's .xml
beside the old one's .bin, or files under an export.json that describes others. export.json records every
file's sha256, and the runners refuse a file that no longer matches.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgeres.artifacts import EXPORT_RECORD, package_versions, write_json
from edgeres.checkpoint import checkpoint_dir, checkpoint_sha256, load_checkpoint
from edgeres.errors import UserInputError
from edgeres import runtime
from edgeres.evaluate.predict import evaluate_runner
from edgeres.export import publish
from edgeres.export.onnx.convert import export_module
from edgeres.export.onnx.quantize import METHODS as INT8_METHODS
from edgeres.export.openvino.quantize import PRESETS as INT8_PRESETS
from edgeres.models.base import evaluating, named_outputs
from edgeres.runtime.base import run_any_batch
from edgeres.runtime.embedded import OUTPUT_NAME
from edgeres.tasks import get_task

log = logging.getLogger("edgeres")

FORMATS = ("onnx", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
EXPORT_FILE = EXPORT_RECORD


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    formats: tuple[str, ...] = ("onnx", "openvino")
    precisions: tuple[str, ...] = ("fp32",)
    opset: int = 17
    dynamic_batch: bool = True
    calib_data: str | None = None       # default: the checkpoint's own training data
    calib_size: int = 300               # images from the training split (never the test split)
    max_drop: float | None = None       # accuracy points: OpenVINO int8 with NNCF's accuracy control
    keep_attention_float: bool = True   # SE gates, SimAM energy, softmax stay in float in int8 models
    validate_size: int = 64             # validation-split images compared against PyTorch
    trt_max_batch: int = 8
    trt_workspace_mb: int = 1024
    nms: bool = False                   # a detector's NMS in the graph: output "detections" (N, max_det, 6)
    max_det: int = 100                  # detections kept per image
    nms_iou: float = 0.6                # boxes of a class overlapping more than this are suppressed
    nms_conf: float = 0.25              # boxes scoring below this are dropped
    # INT8 choices an optimizer can search over. int8_preset is NNCF's: "performance" quantizes activations
    # symmetrically, "mixed" asymmetrically (weights symmetric in both); None keeps each backend's default
    # (OpenVINO: performance; ONNX Runtime: mixed). The TensorRT QDQ file is symmetric whatever is asked.
    int8_preset: str | None = None
    int8_per_channel: bool = True       # ONNX Runtime weight scales; NNCF always scales conv weights per channel
    int8_method: str = "minmax"         # ONNX Runtime calibration; NNCF picks its own range estimators

    def __post_init__(self) -> None:
        for field, values, allowed in (("formats", self.formats, FORMATS), ("precisions", self.precisions, PRECISIONS)):
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise UserInputError(f"{field} must be a non-empty subset of {list(allowed)}, got {list(values)}")
        if self.calib_size < 1 or self.validate_size < 1:
            raise UserInputError("calib_size and validate_size must be positive")
        if self.max_drop is not None and not 0 <= self.max_drop < 100:
            raise UserInputError(f"max_drop is in accuracy points (0-100), got {self.max_drop}")
        if not isinstance(self.nms, bool):
            raise UserInputError(f"nms must be true or false, got {self.nms!r}")
        if isinstance(self.max_det, bool) or not isinstance(self.max_det, int) or not 1 <= self.max_det <= 10_000:
            raise UserInputError(f"max_det must be an integer from 1 to 10000 (detections per image), "
                                 f"got {self.max_det!r}")
        for field, value in (("nms_iou", self.nms_iou), ("nms_conf", self.nms_conf)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise UserInputError(f"{field} must be a number from 0 to 1, got {value!r}")
        self._check_int8_options()
        # torch exports opsets 9 to 23 for these models; INT8 QDQ with per-channel scales needs 13 or later.
        qdq = "int8" in self.precisions and {"onnx", "tensorrt"} & set(self.formats)
        lowest, highest = (13 if qdq else 9), 23
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not lowest <= self.opset <= highest:
            raise UserInputError(f"opset must be an integer from {lowest} to {highest}"
                                 f"{' for int8 ONNX' if qdq else ''}, got {self.opset!r}")

    def _check_int8_options(self) -> None:
        if self.int8_preset is not None and self.int8_preset not in INT8_PRESETS:
            raise UserInputError(f"int8_preset must be one of {list(INT8_PRESETS)} (NNCF's presets: symmetric or "
                                 f"asymmetric activations) or none for the backend's default, "
                                 f"got {self.int8_preset!r}")
        if not isinstance(self.int8_per_channel, bool):
            raise UserInputError(f"int8_per_channel must be true (a scale per output channel) or false "
                                 f"(one scale per weight tensor), got {self.int8_per_channel!r}")
        if not isinstance(self.int8_method, str) or self.int8_method not in INT8_METHODS:
            raise UserInputError(f"int8_method must be one of {list(INT8_METHODS)} (ONNX Runtime's calibration "
                                 f"methods), got {self.int8_method!r}")

    @property
    def nms_settings(self) -> dict[str, Any] | None:
        """The in-graph NMS a detector's inference module takes, or None without nms."""
        return {"max_det": self.max_det, "iou": self.nms_iou, "conf": self.nms_conf} if self.nms else None


@dataclasses.dataclass
class _Context:
    model: torch.nn.Module
    output_names: list[str]  # of what the ONNX and OpenVINO files hold: model.inference_module(config's nms)
    meta: Any
    source: Path
    source_sha256: str
    out: Path
    staging: Path  # intermediates, validated files before they join the set
    new_set: Path  # what replaces `out` when every export is done
    calib: list[np.ndarray]
    val_batch: np.ndarray
    val_pairs: list[tuple[np.ndarray, np.ndarray]]
    reference: dict[str, np.ndarray]  # the PyTorch model's outputs on val_batch, by name
    config: ExportConfig
    bundle: Any  # the data the model's task reads: calibration, validation and the val-split metric
    source_metric: float | None  # the checkpoint's headline metric on the val split, through its torch Runner


def _prepare(ckpt: str | Path, out: Path, config: ExportConfig) -> _Context:
    from edgeres.evaluate import load_task_data

    source = checkpoint_dir(ckpt)
    model, meta = load_checkpoint(source)
    with evaluating(model):
        module, names = export_module(model, config.nms_settings)  # refuses nms for a model without detections
    if config.max_drop is not None and "openvino" in config.formats and "int8" in config.precisions \
            and names != [OUTPUT_NAME]:
        raise UserInputError(f"max_drop (NNCF accuracy control) ranks layers by top-1 accuracy on {OUTPUT_NAME!r}; "
                             f"this model outputs {names}. Export without max_drop")
    bundle = load_task_data(meta, config.calib_data)
    # Decoding images is the slow part of preparing: read only what the requested exports use.
    int8 = "int8" in config.precisions
    calib = [b[0] for b in bundle.batches("train", 32, limit=config.calib_size)] if int8 else []
    accuracy_control = int8 and config.max_drop is not None and "openvino" in config.formats
    val_pairs = [(b[0], b[1]) for b in bundle.batches("val", 64)] if accuracy_control else []
    val_batch = next(bundle.batches("val", config.validate_size))[0]
    with evaluating(model):
        reference = {name: out.numpy() for name, out in named_outputs(module, torch.from_numpy(val_batch)).items()}
    source_metric = _val_metric(runtime.load(source, backend="torch"), bundle)
    root = publish.staging_root(out)
    (root / "work").mkdir(parents=True)
    (root / "set").mkdir()
    return _Context(model, names, meta, source, checkpoint_sha256(source), out, root / "work", root / "set", calib,
                    val_batch, val_pairs, reference, config, bundle, source_metric)


def _val_metric(runner: runtime.Runner, bundle: Any) -> float | None:
    """The headline metric of the task on the val split, as `edgeres eval` measures it."""
    task = get_task(runner.meta.task)
    metrics, _ = evaluate_runner(runner, bundle, splits=("val",))
    return task.headline(metrics["val"])


def _check_out(out: Path, source: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; expected a folder for the exported files")
    if source.resolve().is_relative_to(out.resolve()):
        raise UserInputError(f"--out {out} holds the checkpoint {source}; export into a folder of its own "
                             "(the default is CHECKPOINT/exports)")


def _validate(ctx: _Context, staged: Path, precision: str, backend: str) -> dict[str, Any]:
    """Run a staged file through its edgeres Runner on real images and judge it against PyTorch; then measure
    the task's headline metric on the val split, beside the checkpoint's."""
    task = get_task(ctx.meta.task)
    # fp32 files are checked in true fp32: a bf16 default would hide a broken export behind rounding.
    runner = runtime.load(staged, backend=backend, precision="fp32" if precision == "fp32" else None)
    stats = task.compare(ctx.reference, run_any_batch(runner, ctx.val_batch))
    tolerance = task.tolerance(precision)
    failures = task.judge(stats, tolerance)
    metric = None if failures else _val_metric(runner, ctx.bundle)
    delta = None if metric is None or ctx.source_metric is None else metric - ctx.source_metric
    return {**stats, "executed_precision": runner.info.precision, "tolerance": dataclasses.asdict(tolerance),
            "failures": failures, "inputs": "validation split",
            f"val_{task.metric}": metric, f"source_val_{task.metric}": ctx.source_metric,
            f"val_{task.metric}_delta": delta}


def _float_onnx(ctx: _Context, dynamic_batch: bool, nms: dict[str, Any] | None) -> Path:
    """An fp32 ONNX of this export run, made once (a file left by an earlier run is never reused)."""
    from edgeres.export.onnx.convert import export_onnx

    path = ctx.staging / f"float.{'dynamic' if dynamic_batch else 'static'}{'.nms' if nms else ''}.onnx"
    if not path.exists():
        export_onnx(ctx.model, ctx.meta, path, opset=ctx.config.opset, dynamic_batch=dynamic_batch,
                    source_sha256=ctx.source_sha256, nms=nms)
    return path


def _onnx(ctx: _Context, precision: str) -> tuple[list[Path], dict[str, Any]]:
    from edgeres.export.onnx.quantize import quantize_onnx

    source = _float_onnx(ctx, ctx.config.dynamic_batch, ctx.config.nms_settings)
    dst = ctx.staging / f"model.{precision}.onnx"
    if precision == "fp32":
        shutil.copyfile(source, dst)
        return [dst], {"opset": ctx.config.opset, "dynamic_batch": ctx.config.dynamic_batch,
                       "output_names": ctx.output_names, "nms": ctx.config.nms_settings}
    config = ctx.config
    symmetric = None if config.int8_preset is None else config.int8_preset == "performance"
    record = quantize_onnx(source, dst, ctx.calib, method=config.int8_method, per_channel=config.int8_per_channel,
                           symmetric_activations=symmetric, keep_attention_float=config.keep_attention_float)
    return [dst], {"quantization": record}


def _openvino(ctx: _Context, precision: str) -> tuple[list[Path], dict[str, Any]]:
    from edgeres.export.openvino.convert import export_openvino
    from edgeres.export.openvino.quantize import quantize_openvino, quantize_openvino_with_accuracy_control

    xml = ctx.staging / f"model.{precision}.xml"
    nms = ctx.config.nms_settings
    if precision in ("fp32", "fp16"):
        record = export_openvino(ctx.model, ctx.meta, xml, precision=precision,
                                 dynamic_batch=ctx.config.dynamic_batch, source_sha256=ctx.source_sha256, nms=nms)
        return [xml, xml.with_suffix(".bin")], record
    float_xml = ctx.staging / "float.tmp.xml"
    export_openvino(ctx.model, ctx.meta, float_xml, precision="fp32", dynamic_batch=ctx.config.dynamic_batch,
                    source_sha256=ctx.source_sha256, nms=nms)
    # NNCF calibrates on at most subset_size samples: all that calib_size took from the training split.
    options: dict[str, Any] = {"ignored_attention": ctx.config.keep_attention_float,
                               "subset_size": ctx.config.calib_size}
    if ctx.config.int8_preset is not None:
        options["preset"] = ctx.config.int8_preset
    if ctx.config.max_drop is not None:
        record = quantize_openvino_with_accuracy_control(
            float_xml, ctx.calib, ctx.val_pairs, xml, max_drop=ctx.config.max_drop / 100, **options)
    else:
        record = quantize_openvino(float_xml, ctx.calib, xml, **options)
    record["not_applied"] = {
        "int8_per_channel": "NNCF quantizes convolution and matmul weights per output channel on CPU",
        "int8_method": "ONNX Runtime's calibration; NNCF takes min/max of weights and the mean of per-sample "
                       "min/max of activations"}
    return [xml, xml.with_suffix(".bin")], {"quantization": record}


def _tensorrt(ctx: _Context, precision: str) -> tuple[list[Path], dict[str, Any]]:
    from edgeres.export.tensorrt.convert import prepare_tensorrt

    bundle = ctx.staging / f"tensorrt-{precision}"
    # NMS on TensorRT is its EfficientNMS plugin, added to an ONNX that ends in boxes and scores.
    record = prepare_tensorrt(_float_onnx(ctx, True, None), bundle, precision=precision,
                              calibration=ctx.calib if precision == "int8" else None,
                              max_batch=ctx.config.trt_max_batch, workspace_mb=ctx.config.trt_workspace_mb,
                              nms=ctx.config.nms_settings)
    return [bundle], record


_EXPORTERS: dict[str, tuple[str, Callable[[_Context, str], tuple[list[Path], dict[str, Any]]]]] = {
    "onnx": ("onnxruntime", _onnx),
    "openvino": ("openvino", _openvino),
    "tensorrt": ("tensorrt", _tensorrt),
}


def export_checkpoint(ckpt: str | Path, out: str | Path, config: ExportConfig = ExportConfig(),
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export `ckpt` to every (format, precision) in `config` under `out`; write and return export.json."""
    out = Path(out)
    _check_out(out, checkpoint_dir(ckpt))
    publish.recover(out)
    ctx = _prepare(ckpt, out, config)
    entries, failed = [], []
    try:
        for fmt in config.formats:
            for precision in config.precisions:
                if fmt == "onnx" and precision == "fp16":
                    log.info("skipping onnx fp16: use openvino fp16 or a tensorrt fp16 engine")
                    continue
                if progress:
                    progress(f"{fmt} {precision}")
                entry = _export_one(ctx, fmt, precision)
                (failed if entry["status"] == "failed" else entries).append(entry)
        document = _document(ctx, entries, failed)
        write_json(ctx.new_set / EXPORT_FILE, document)
        publish.carry_over(out, ctx.new_set)
        publish.warn_dropped(out, document)
        publish.swap_in(ctx.new_set, out)
    finally:
        shutil.rmtree(ctx.staging.parent, ignore_errors=True)
    return document


def _document(ctx: _Context, entries: list[dict[str, Any]], failed: list[dict[str, Any]]) -> dict[str, Any]:
    config = ctx.config
    return {
        "source": str(ctx.source), "source_sha256": ctx.source_sha256, "arch": ctx.meta.arch, "task": ctx.meta.task,
        "input_shape": list(ctx.meta.input_shape), "class_names": ctx.meta.class_names,
        "calibration": {"data": (config.calib_data or (ctx.meta.data or {}).get("source")), "split": "train",
                        "samples": int(sum(len(b) for b in ctx.calib))},
        "validation": {"split": "val", "samples": int(len(ctx.val_batch)),
                       f"source_val_{get_task(ctx.meta.task).metric}": ctx.source_metric},
        "output_names": ctx.output_names, "nms": config.nms_settings,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()},
        "artifacts": entries, "failed": failed,
    }


def _export_one(ctx: _Context, fmt: str, precision: str) -> dict[str, Any]:
    backend, exporter = _EXPORTERS[fmt]
    try:
        staged, record = exporter(ctx, precision)
    except RuntimeError as e:  # an exporter's own check failed: nothing was published
        log.error("%s %s failed: %s", fmt, precision, e)
        return {"format": fmt, "backend": backend, "precision": precision, "status": "failed", "file": None,
                "error": str(e)}
    entry: dict[str, Any] = {"format": fmt, "backend": backend, "precision": precision, **record}
    main = staged[0]
    if fmt == "tensorrt":
        entry["validation"] = record.get("quantization", {}).get("validation")
        entry["note"] = "engine to be built on the target with build_engine.sh / build_engine.py"
    else:
        entry["validation"] = _validate(ctx, main, precision, backend)
    # Exporters record where they wrote, inside the staging folder that is gone once the set is published.
    rejected = fmt != "tensorrt" and bool(entry["validation"]["failures"])
    folder = ctx.out / "failed" if rejected else ctx.out
    entry = publish.published(entry, {p: folder / p.name for p in staged}, ctx.staging.parent)
    if rejected:
        # Kept for inspection in failed/, never under the name a working export would have.
        hashes = publish.add_to_set(staged, ctx.new_set, "failed")
        entry.update(status="failed", file=str(ctx.out / "failed" / main.name), files=hashes)
        log.error("%s %s failed validation: %s", fmt, precision, "; ".join(entry["validation"]["failures"]))
        return entry
    hashes = publish.add_to_set(staged, ctx.new_set)
    sizes = sum((ctx.new_set / name).stat().st_size for name in hashes)
    entry.update(status="ok", file=str(ctx.out / main.name), bytes=sizes, sha256=hashes.get(main.name),
                 files=hashes)
    return entry


__all__ = ["EXPORT_FILE", "ExportConfig", "FORMATS", "PRECISIONS", "export_checkpoint"]
