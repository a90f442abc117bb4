#!/usr/bin/env python3
"""Build a TensorRT engine from an ONNX model with the TensorRT Python API (TensorRT 8.5 to 10.x).

Standalone: needs only the `tensorrt` package on the target (JetPack ships it), not edgeres.
edgeres copies this file into a TensorRT bundle as build_engine.py with DEFAULTS filled in, and its own
build_engine() calls `build` below, so the target and edgeres build engines the same way.

    python3 build_engine.py                      # the bundle's ONNX, precision and batch range
    python3 build_engine.py --engine /data/model.engine --max-batch 4
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULTS = {"onnx": "model.onnx", "engine": "model.engine", "precision": "fp16", "min_batch": 1, "opt_batch": 1, "max_batch": 8, "workspace_mb": 1024, "fp16_fallback": True, "timing_cache": "timing.cache", "meta": None}  # edgeres: DEFAULTS
PRECISIONS = ("fp32", "fp16", "int8")


def build(onnx_path: str, engine_path: str, *, precision: str, min_batch: int, opt_batch: int, max_batch: int,
          workspace_mb: int, fp16_fallback: bool = True, timing_cache: str | None = None,
          verbose: bool = False) -> dict:
    """Parse `onnx_path`, build a serialized engine into `engine_path`; return what was built.

    precision "int8" expects an explicitly quantized (QDQ) ONNX: TensorRT takes its scales from the graph,
    so no calibrator is set. fp16_fallback lets the layers left in float run in fp16.
    """
    import tensorrt as trt

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    # A detector's ONNX may hold TensorRT's EfficientNMS_TRT node: the parser finds plugins once registered.
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    # Before TensorRT 10 an ONNX network must ask for explicit batch; from 10 on it is the only mode.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if major < 10 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    _set_precision(trt, network, config, precision, fp16_fallback)
    shapes = _add_profile(builder, network, config, min_batch, opt_batch, max_batch)
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
            "workspace_mb": workspace_mb, "fp16_fallback": fp16_fallback, "timing_cache": timing_cache}


def _set_precision(trt, network, config, precision: str, fp16_fallback: bool) -> None:
    quantized = any(network.get_layer(i).type in (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
                    for i in range(network.num_layers))
    if precision == "int8" and not quantized:
        raise ValueError("precision int8 needs an explicitly quantized ONNX (QuantizeLinear/DequantizeLinear "
                         "nodes); this one has none. Use the bundle's *.qdq.onnx file.")
    if precision == "fp16" or (precision == "int8" and fp16_fallback):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)


def _add_profile(builder, network, config, min_batch: int, opt_batch: int, max_batch: int) -> dict | None:
    """An optimization profile over the batch dimension, when the ONNX leaves it dynamic."""
    tensor = network.get_input(0)
    dims = tuple(tensor.shape)
    if dims[0] != -1:
        return None
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    profile = builder.create_optimization_profile()
    shapes = {k: (b, *dims[1:]) for k, b in (("min", min_batch), ("opt", opt_batch), ("max", max_batch))}
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
    p.add_argument("--timing-cache", default=default_path("timing_cache"))
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        built = build(args.onnx, args.engine, precision=args.precision, min_batch=args.min_batch,
                      opt_batch=args.opt_batch, max_batch=args.max_batch, workspace_mb=args.workspace_mb,
                      fp16_fallback=args.fp16_fallback, timing_cache=args.timing_cache, verbose=args.verbose)
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
    print(f"wrote {built['engine']} ({built['precision']}, TensorRT {built['tensorrt']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
