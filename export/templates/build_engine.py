#!/usr/bin/env python3
"""Build a TensorRT engine from an ONNX model with the TensorRT Python API (TensorRT 8.x, 10.x and 11.x).

Standalone: needs only the `tensorrt` package on the target (JetPack ships it), not edgeres.
edgeres copies this file into a TensorRT bundle as build_engine.py with DEFAULTS filled in, and its own
build_engine() calls `build` below, so the target and edgeres build engines the same way.

    python3 build_engine.py                      # the bundle's ONNX, precision and batch range
    python3 build_engine.py --engine /data/model.engine --max-batch 4

What changed across the versions this script meets (NVIDIA's 8.x->10.x and 10.x->11.x migration guides):
  8.0   build_serialized_network() (build_engine() went in 10.0).
  8.4   config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...) replaces config.max_workspace_size
        (removed in 10.0); JetPack 4.6's TensorRT 8.2 still needs the old attribute.
  8.x   an ONNX network must be created with NetworkDefinitionCreationFlag.EXPLICIT_BATCH; 10.0 made explicit
        batch the only mode (the flag is deprecated and ignored), so it is passed before 10 only.
  10.0  NetworkDefinitionCreationFlag.STRONGLY_TYPED: tensor types come from the ONNX, precision flags are not
        allowed (--strongly-typed asks for it on 10.x).
  11.0  strong typing is always on; BuilderFlag.FP16 / INT8 / BF16 / FP8, the INT8 calibrators
        (config.int8_calibrator) and the precision-constraint flags are removed. INT8 comes from the QDQ nodes of
        the ONNX; FP16 needs an ONNX already converted to fp16 (NVIDIA ModelOpt AutoCast).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULTS = {"onnx": "model.onnx", "engine": "model.engine", "precision": "fp16", "min_batch": 1, "opt_batch": 1, "max_batch": 8, "workspace_mb": 1024, "fp16_fallback": True, "timing_cache": "timing.cache", "meta": None}  # edgeres: DEFAULTS
PRECISIONS = ("fp32", "fp16", "int8")
STRONG_TYPING_FROM, STRONG_TYPING_ONLY_FROM = 10, 11  # TensorRT major versions


def major_version(trt) -> int:
    return int(trt.__version__.split(".")[0])


def build(onnx_path: str, engine_path: str, *, precision: str, min_batch: int, opt_batch: int, max_batch: int,
          workspace_mb: int, fp16_fallback: bool = True, timing_cache: str | None = None,
          strongly_typed: bool = False, frame_sizes: list | None = None, verbose: bool = False) -> dict:
    """Parse `onnx_path`, build a serialized engine into `engine_path`; return what was built.

    precision "int8" expects an explicitly quantized (QDQ) ONNX: TensorRT takes its scales from the graph,
    so no calibrator is set. fp16_fallback lets the layers left in float run in fp16 (weakly typed builds only).
    strongly_typed: the ONNX's own tensor types decide (10.x; always so from 11.0).
    frame_sizes: [[H, W] min, opt, max] for an input whose height and width are dynamic (a graph that takes
    camera frames of any size).
    """
    import tensorrt as trt

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    major = major_version(trt)
    strong = strongly_typed or major >= STRONG_TYPING_ONLY_FROM
    if strong and major < STRONG_TYPING_FROM:
        raise ValueError(f"strongly typed networks need TensorRT {STRONG_TYPING_FROM} or later; this is "
                         f"{trt.__version__}")
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    # A detector's ONNX may hold TensorRT's EfficientNMS_TRT node: the parser finds plugins once registered.
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, major, strong))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    _set_workspace(trt, config, workspace_mb)
    notes = _set_precision(trt, network, config, precision, fp16_fallback, strong)
    shapes = _add_profile(builder, network, config, min_batch, opt_batch, max_batch, frame_sizes)
    cache = _load_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine; rerun with --verbose to see why")
    Path(engine_path).parent.mkdir(parents=True, exist_ok=True)
    with open(engine_path, "wb") as f:
        f.write(serialized)
    if cache is not None:
        with open(timing_cache, "wb") as f:
            f.write(config.get_timing_cache().serialize())  # now holding this build's timings too
    return {"engine": str(engine_path), "precision": precision, "shapes": shapes, "tensorrt": trt.__version__,
            "workspace_mb": workspace_mb, "fp16_fallback": fp16_fallback and not strong, "strongly_typed": strong,
            "timing_cache": timing_cache, "notes": notes}


def _network_flags(trt, major: int, strong: bool) -> int:
    if major < 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strong and major < STRONG_TYPING_ONLY_FROM:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0  # 10.x weakly typed, or 11.x where strong typing is the only mode


def _set_workspace(trt, config, workspace_mb: int) -> None:
    if hasattr(config, "set_memory_pool_limit"):  # 8.4 and later
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    else:  # 8.2 (JetPack 4.6)
        config.max_workspace_size = int(workspace_mb) << 20


def _set_precision(trt, network, config, precision: str, fp16_fallback: bool, strong: bool) -> list[str]:
    """Set the builder's precision flags (weak typing) or check the ONNX carries the precision (strong typing)."""
    quantized = _has_layers(trt, network, ("QUANTIZE", "DEQUANTIZE"))
    if precision == "int8" and not quantized:
        raise ValueError("precision int8 needs an explicitly quantized ONNX (QuantizeLinear/DequantizeLinear "
                         "nodes); this one has none. Use the bundle's *.qdq.onnx file.")
    if strong:
        if precision == "fp16" and not _has_half(trt, network):
            raise ValueError("a strongly typed build (always so from TensorRT 11) runs the ONNX in its own types, "
                             "and this ONNX is float32: convert it to fp16 first (python -m modelopt.onnx.autocast "
                             "--onnx_path MODEL.onnx) or build --precision fp32")
        return ["strongly typed: layer precisions come from the ONNX" +
                ("; layers outside the QDQ pairs run in the ONNX's float type" if precision == "int8" else "")]
    if precision == "fp16" or (precision == "int8" and fp16_fallback):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    return []


def _has_layers(trt, network, kinds: tuple[str, ...]) -> bool:
    wanted = {getattr(trt.LayerType, k) for k in kinds}
    return any(network.get_layer(i).type in wanted for i in range(network.num_layers))


def _has_half(trt, network) -> bool:
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        tensors += [layer.get_output(j) for j in range(layer.num_outputs)]
    return any(t.dtype == trt.DataType.HALF for t in tensors)


def _add_profile(builder, network, config, min_batch: int, opt_batch: int, max_batch: int,
                 frame_sizes: list | None = None) -> dict | None:
    """An optimization profile over the dimensions the ONNX leaves dynamic: the batch, and the frame's height and
    width for a graph that takes frames of any size (NHWC)."""
    tensor = network.get_input(0)
    dims = tuple(tensor.shape)
    if -1 not in dims:
        return None
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    spatial = [i for i, d in enumerate(dims[1:], 1) if d == -1]
    if spatial and (not frame_sizes or len(frame_sizes) != 3 or len(spatial) != 2):
        raise ValueError(f"the input {tensor.name} {dims} has a dynamic height and width: give --frame-sizes "
                         "MIN_HxMIN_W,OPT_HxOPT_W,MAX_HxMAX_W")
    shapes = {}
    for k, (key, batch) in enumerate((("min", min_batch), ("opt", opt_batch), ("max", max_batch))):
        shape = [batch if dims[0] == -1 else dims[0], *dims[1:]]
        for axis, size in zip(spatial, frame_sizes[k] if spatial else ()):
            shape[axis] = int(size)
        shapes[key] = tuple(shape)
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    return {k: list(v) for k, v in shapes.items()}


def _load_timing_cache(config, path: str | None):
    # Layer timings are the slow part of a build; reusing them makes rebuilds on the same device fast.
    if not path:
        return None
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def write_sidecar(sidecar: dict, built: dict) -> Path:
    """Write `<engine>.json`: an engine file cannot hold edgeres metadata, so the runner reads it from here."""
    sidecar = dict(sidecar, precision=built["precision"], build=built)
    path = Path(f"{built['engine']}.json")
    path.write_text(json.dumps(sidecar, indent=2) + "\n")
    return path


def parse_frame_sizes(text: str | list | None) -> list | None:
    """"240x320,480x640,1080x1920" -> [[240, 320], [480, 640], [1080, 1920]] (min, opt, max H x W)."""
    if not text:
        return None
    try:
        parts = text.split(",") if isinstance(text, str) else text
        sizes = [[int(v) for v in (p.lower().split("x") if isinstance(p, str) else p)] for p in parts]
    except (TypeError, ValueError):
        sizes = []
    if len(sizes) != 3 or any(len(s) != 2 or min(s) < 1 for s in sizes):
        raise ValueError(f"--frame-sizes takes MIN,OPT,MAX as HxW each, e.g. 240x320,480x640,1080x1920; got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent

    def default_path(key: str) -> str | None:
        return str(here / DEFAULTS[key]) if DEFAULTS.get(key) else None

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", default=default_path("onnx"))
    p.add_argument("--engine", default=default_path("engine"))
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULTS["precision"])
    p.add_argument("--min-batch", type=int, default=DEFAULTS["min_batch"])
    p.add_argument("--opt-batch", type=int, default=DEFAULTS["opt_batch"])
    p.add_argument("--max-batch", type=int, default=DEFAULTS["max_batch"])
    p.add_argument("--workspace-mb", type=int, default=DEFAULTS["workspace_mb"])
    p.add_argument("--no-fp16-fallback", dest="fp16_fallback", action="store_false",
                   default=DEFAULTS["fp16_fallback"])
    p.add_argument("--strongly-typed", action="store_true",
                   help="TensorRT 10.x: take precisions from the ONNX's types (TensorRT 11 always does)")
    p.add_argument("--frame-sizes", default=DEFAULTS.get("frame_sizes"),
                   help="MIN,OPT,MAX frame HxW for a graph that takes frames of any size")
    p.add_argument("--timing-cache", default=default_path("timing_cache"))
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        built = build(args.onnx, args.engine, precision=args.precision, min_batch=args.min_batch,
                      opt_batch=args.opt_batch, max_batch=args.max_batch, workspace_mb=args.workspace_mb,
                      fp16_fallback=args.fp16_fallback, timing_cache=args.timing_cache,
                      strongly_typed=args.strongly_typed, frame_sizes=parse_frame_sizes(args.frame_sizes),
                      verbose=args.verbose)
    except ImportError as e:
        print(f"error: the tensorrt Python package is missing ({e}); JetPack installs it, "
              f"elsewhere pip install tensorrt", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta = default_path("meta")
    if meta and Path(meta).is_file():
        write_sidecar(json.loads(Path(meta).read_text()), built)
    for note in built["notes"]:
        print(f"note: {note}")
    print(f"wrote {built['engine']} ({built['precision']}, TensorRT {built['tensorrt']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
