"""TensorRT: prepare what a target needs to build an engine, or build one here when a GPU is present."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from edgeres.artifacts import atomic_path, sha256_file, write_json, write_text
from edgeres.deploy import templates
from edgeres.errors import UserInputError
from edgeres.export.onnx.convert import INPUT_NAME, META_KEY, input_shape
from edgeres.runtime.embedded import graph_fields
from edgeres.export.tensorrt.nms import NMS_OUTPUTS, PLUGIN, add_efficient_nms

PRECISIONS = ("fp32", "fp16", "int8")
ONNX_NAME = "model.onnx"
QDQ_NAME = "model.int8.qdq.onnx"
META_NAME = "engine_meta.json"
TIMING_CACHE = "timing.cache"
# TensorRT 8.5 (JetPack 5) parses ONNX up to opset 17; newer TensorRT reads newer opsets.
MAX_PORTABLE_OPSET = 17
BUILD_SCRIPT = "build_engine.py"  # the template in export/templates/ the bundle's build_engine.py is made from


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """How to build an engine: precision, the batch range of the optimization profile, builder memory."""

    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mb: int = 1024
    fp16_fallback: bool = True  # int8 only: let the layers kept in float run in fp16

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserInputError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise UserInputError(f"batch sizes need 1 <= min_batch <= opt_batch <= max_batch, got "
                                 f"{self.min_batch}, {self.opt_batch}, {self.max_batch}")
        if self.workspace_mb < 1:
            raise UserInputError(f"workspace_mb must be a positive number of MiB, got {self.workspace_mb}")


def prepare_tensorrt(
    onnx_fp32: str | Path,
    out_dir: str | Path,
    *,
    precision: str = "fp16",
    calib_onnx_int8: str | Path | None = None,
    calibration: Sequence[np.ndarray] | None = None,
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 8,
    workspace_mb: int = 1024,
    fp16_fallback: bool = True,
    calibration_method: str = "minmax",
    nms: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a TensorRT bundle into `out_dir`: the ONNX to build from, build_engine.sh (trtexec),
    build_engine.py (TensorRT Python API) and the engine's metadata sidecar.

    int8 needs either `calib_onnx_int8`, a QDQ ONNX made by quantize_onnx(mode="tensorrt"), or
    `calibration`, float32 NCHW batches to make one from.
    nms: {"max_det", "iou", "conf"} appends TensorRT's EfficientNMS plugin to a detector's ONNX exported
    without nms (outputs "boxes", "scores"); the engine's Runner then returns "detections".
    """
    spec = EngineSpec(precision, min_batch, opt_batch, max_batch, workspace_mb, fp16_fallback)
    onnx_fp32, out_dir = Path(onnx_fp32), Path(out_dir)
    props, shape, opset = _inspect_onnx(onnx_fp32)
    if precision != "int8" and (calib_onnx_int8 is not None or calibration is not None):
        raise UserInputError(f"calibration applies to precision int8 only; precision is {precision!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Copies, not links: the bundle is moved to the device as a directory.
    shutil.copyfile(onnx_fp32, out_dir / ONNX_NAME)
    record: dict[str, Any] = {"backend": "tensorrt", "spec": dataclasses.asdict(spec), "notes": []}
    build_from = ONNX_NAME
    if precision == "int8":
        record["quantization"] = _int8_onnx(onnx_fp32, out_dir / QDQ_NAME, props, calib_onnx_int8, calibration,
                                            calibration_method)
        build_from = QDQ_NAME
    if nms is not None:
        for name in dict.fromkeys((ONNX_NAME, build_from)):
            _append_nms(out_dir / name, nms)
        record["nms"] = {**nms, "plugin": PLUGIN}
        record["notes"].append(f"NMS runs in TensorRT's {PLUGIN} plugin; the engine's outputs {list(NMS_OUTPUTS)} "
                               "become 'detections' in the edgeres TensorRT Runner")
    if opset > MAX_PORTABLE_OPSET:
        record["notes"].append(f"opset {opset} > {MAX_PORTABLE_OPSET}: TensorRT 8.5 (JetPack 5) cannot parse it")
    dynamic = shape[0] is None
    if not dynamic:
        record["notes"].append(f"the ONNX has a fixed batch of {shape[0]}; the batch range is not used")
    engine_name = f"model.{precision}.engine"
    command = trtexec_command(build_from, engine_name, spec, shape if dynamic else None, TIMING_CACHE)
    write_json(out_dir / META_NAME, _sidecar(props, precision, build_from, out_dir / build_from))
    defaults = script_defaults(spec, build_from, engine_name)
    write_text(out_dir / "build_engine.sh", templates.render_build_engine_sh({**defaults, "input_shape": shape}))
    (out_dir / "build_engine.sh").chmod(0o755)
    write_text(out_dir / "build_engine.py", templates.render_build_engine(defaults))
    record.update(
        precision=precision,
        onnx=build_from,
        onnx_sha256=sha256_file(out_dir / build_from),
        input_shape=shape,
        dynamic_batch=dynamic,
        engine=engine_name,
        trtexec=command,
        files=sorted({ONNX_NAME, build_from, META_NAME, "build_engine.sh", "build_engine.py"}),
        dir=str(out_dir),
    )
    return record


def trtexec_command(onnx_name: str, engine_name: str, spec: EngineSpec, shape: list[int | None] | None,
                    timing_cache: str) -> list[str]:
    """The trtexec arguments that build `engine_name` with TensorRT 8.4 to 10.x (build_engine.sh picks the flags
    of the version it finds: --workspace before 8.4, no precision flags on 11); `shape` (N, C, H, W) adds a batch
    profile."""
    args = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={engine_name}"]
    if spec.precision == "fp16" or (spec.precision == "int8" and spec.fp16_fallback):
        args.append("--fp16")
    if spec.precision == "int8":
        args.append("--int8")  # scales come from the QDQ graph: no --calib
    if shape is not None:
        chw = "x".join(str(d) for d in shape[1:])
        for flag, batch in (("min", spec.min_batch), ("opt", spec.opt_batch), ("max", spec.max_batch)):
            args.append(f"--{flag}Shapes={INPUT_NAME}:{batch}x{chw}")
    # A bare number is MiB for every trtexec that has --memPoolSize (8.4 on); unit suffixes came later.
    args += [f"--memPoolSize=workspace:{spec.workspace_mb}", f"--timingCacheFile={timing_cache}"]
    return args


def script_defaults(spec: EngineSpec, onnx_name: str, engine_name: str) -> dict[str, Any]:
    """The build scripts' defaults (templates.BUILD_KEYS) for this bundle's files and spec."""
    return {"onnx": onnx_name, "engine": engine_name, "precision": spec.precision, "min_batch": spec.min_batch,
            "opt_batch": spec.opt_batch, "max_batch": spec.max_batch, "workspace_mb": spec.workspace_mb,
            "fp16_fallback": spec.fp16_fallback, "timing_cache": TIMING_CACHE, "meta": META_NAME}


def engine_builder() -> ModuleType:
    """export/templates/build_engine.py loaded as a module: edgeres builds engines with the bundle's own code."""
    path = templates.template_path(BUILD_SCRIPT)
    spec = importlib.util.spec_from_file_location("edgeres_build_engine", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 8,
    workspace_mb: int = 1024,
    fp16_fallback: bool = True,
    timing_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Build a TensorRT engine here (needs an NVIDIA GPU and tensorrt) and write its `<engine>.json` sidecar."""
    from edgeres.runtime.tensorrt import unavailable_reason

    spec = EngineSpec(precision, min_batch, opt_batch, max_batch, workspace_mb, fp16_fallback)
    reason = unavailable_reason()
    if reason:
        raise UserInputError(
            f"building a TensorRT engine needs an NVIDIA GPU and the tensorrt package here: {reason}. "
            f"Use prepare_tensorrt() and run build_engine.sh on the target instead"
        )
    onnx_path = Path(onnx_path)
    props, _, _ = _inspect_onnx(onnx_path)
    template = engine_builder()
    try:
        built = template.build(str(onnx_path), str(engine_path), precision=spec.precision,
                               min_batch=spec.min_batch, opt_batch=spec.opt_batch, max_batch=spec.max_batch,
                               workspace_mb=spec.workspace_mb, fp16_fallback=spec.fp16_fallback,
                               timing_cache=str(timing_cache) if timing_cache else None)
    except ValueError as e:
        raise UserInputError(str(e)) from e
    sidecar = template.write_sidecar(_sidecar(props, precision, onnx_path.name, onnx_path), built)
    return dict(built, sidecar=str(sidecar), engine_sha256=sha256_file(engine_path))


def _inspect_onnx(path: Path) -> tuple[dict[str, str], list[int | None], int]:
    """Metadata, input shape and opset of an edgeres export, refusing what TensorRT cannot take."""
    import onnx

    if not path.is_file():
        raise UserInputError(f"{path}: no such ONNX file")
    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise UserInputError(f"{path}: not an edgeres ONNX export (metadata key {META_KEY!r} is missing)")
    if len(proto.graph.input) != 1 or proto.graph.input[0].name != INPUT_NAME:
        raise UserInputError(f"{path}: expected one graph input named {INPUT_NAME!r}, "
                             f"found {[i.name for i in proto.graph.input]}")
    shape = input_shape(proto)
    if len(shape) != 4 or None in shape[1:]:
        raise UserInputError(f"{path}: TensorRT bundles need a fixed C, H, W; the input shape is {shape}")
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return props, shape, opset


def _int8_onnx(onnx_fp32: Path, dst: Path, props: dict[str, str], given: str | Path | None,
               calibration: Sequence[np.ndarray] | None, method: str) -> dict[str, Any]:
    """Copy a given TensorRT QDQ model after checking it, or make one from calibration batches."""
    import onnx

    from edgeres.export.onnx.quantize import QUANT_KEY, quantize_onnx, tensorrt_qdq_problems

    if given is not None and calibration is not None:
        raise UserInputError("give calib_onnx_int8 or calibration batches for int8, not both")
    if given is None and calibration is None:
        raise UserInputError("precision int8 needs calib_onnx_int8 (a QDQ ONNX made with "
                             "quantize_onnx(mode='tensorrt')) or calibration batches to make one")
    if given is None:
        return quantize_onnx(onnx_fp32, dst, calibration, mode="tensorrt", method=method)
    proto = onnx.load(str(given))
    qprops = {p.key: p.value for p in proto.metadata_props}
    if qprops.get(META_KEY) != props[META_KEY]:
        raise UserInputError(f"{given} was not quantized from {onnx_fp32}: their edgeres metadata differ")
    problems = tensorrt_qdq_problems(proto)
    if not any(n.op_type == "QuantizeLinear" for n in proto.graph.node):
        problems.insert(0, "it holds no QuantizeLinear nodes")
    if problems:
        raise UserInputError(f"{given} is not a TensorRT explicit-quantization model ({'; '.join(problems[:3])}); "
                             f"make it with quantize_onnx(..., mode='tensorrt')")
    shutil.copyfile(given, dst)
    return json.loads(qprops.get(QUANT_KEY, "{}"))


def _append_nms(path: Path, nms: dict[str, Any]) -> None:
    import onnx

    edited = add_efficient_nms(onnx.load(str(path)), nms)
    with atomic_path(path) as tmp:
        onnx.save(edited, str(tmp))


def _sidecar(props: dict[str, str], precision: str, onnx_name: str, onnx_path: Path) -> dict[str, Any]:
    """What the engine's Runner reads: the model's metadata, and the outputs and NMS of the ONNX it is built from."""
    import onnx

    built_from = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    return {"meta": json.loads(props[META_KEY]), "precision": precision, "onnx": onnx_name,
            "onnx_sha256": sha256_file(onnx_path), "source_sha256": props.get("source_sha256") or None,
            **graph_fields(built_from, onnx_path)}
