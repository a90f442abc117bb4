"""The on-target files a bundle carries, made from the templates in the top-level `export/templates/` folder:
`infer.py` (copied as it is), `build_engine.py` and `build_engine.sh` (their defaults filled in), the DeepStream
nvinfer config and its labels file.

Imports nothing above `edgeres.errors` and `edgeres.deploy.resources`, so the TensorRT exporter renders its build
scripts here too.
"""
from __future__ import annotations

import ast
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

from edgeres.deploy.resources import data_dir
from edgeres.errors import UserInputError

PY_MARK = "  # edgeres: DEFAULTS"  # the one line of build_engine.py that holds DEFAULTS
SH_BEGIN, SH_END = "# edgeres: DEFAULTS begin", "# edgeres: DEFAULTS end"
BUILD_KEYS = ("onnx", "engine", "precision", "min_batch", "opt_batch", "max_batch", "workspace_mb", "fp16_fallback",
              "timing_cache", "meta")
FILE_KEYS = ("onnx", "engine", "timing_cache", "meta")  # files in the bundle, next to the scripts
DEEPSTREAM = {"classification": "deepstream/config_infer_classify.txt",
              "detection": "deepstream/config_infer_detect.txt"}
# DeepStream reads a classifier's labels from one line, ";"-separated (as its sample classifiers' labels.txt),
# and a detector's one per line.
LABEL_SEPARATOR = {"classification": ";", "detection": "\n"}
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
COLOR_FORMAT = {"RGB": 0, "BGR": 1, "L": 2}


def template_path(name: str) -> Path:
    """The template `name` ("infer.py", "build_engine.sh", "deepstream/config_infer_detect.txt", ...)."""
    root = data_dir("export") / "templates"
    parts = PurePosixPath(name).parts
    path = root.joinpath(*parts)
    if not name or PurePosixPath(name).is_absolute() or ".." in parts or not path.is_file():
        known = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        raise UserInputError(f"no template {name!r} in {root}; the templates are {known}")
    return path


def render_build_engine(defaults: dict[str, Any]) -> str:
    """build_engine.py with DEFAULTS set to `defaults` (BUILD_KEYS; frame_sizes too for frames of any size)."""
    defaults = _checked(defaults)
    lines = template_path("build_engine.py").read_text(encoding="utf-8").splitlines(keepends=True)
    marked = [i for i, line in enumerate(lines) if line.rstrip("\n").endswith(PY_MARK)]
    if len(marked) != 1:
        raise RuntimeError(f"{template_path('build_engine.py')} must hold exactly one line ending in {PY_MARK!r}")
    lines[marked[0]] = f"DEFAULTS = {defaults!r}  # written by edgeres\n"
    return "".join(lines)


def render_build_engine_sh(defaults: dict[str, Any]) -> str:
    """build_engine.sh with its defaults block set: BUILD_KEYS plus input_shape, the ONNX input's dims with None
    where they are dynamic ([None, 3, 224, 224]; [None, None, None, 3] for frames of any size), and input_name
    and frame_sizes ([[H, W] min, opt, max]) when needed."""
    defaults = _checked(defaults)
    if "input_shape" not in defaults:
        raise ValueError("build_engine.sh needs defaults['input_shape'], the ONNX input's dims (None where dynamic)")
    shape = list(defaults["input_shape"])
    fixed_batch = shape[0] is not None
    if fixed_batch and None not in shape[1:]:
        dims = ""  # nothing dynamic: no optimization profile
    else:  # the dynamic frame dimensions become H and W, which --frame-sizes fills
        letters = iter("HW")
        dims = "x".join(str(d) if d is not None else next(letters, "?") for d in shape[1:])
        if "?" in dims:
            raise ValueError(f"input_shape {shape}: at most the batch, a height and a width can be dynamic")
    batches = [shape[0]] * 3 if fixed_batch else [defaults["min_batch"], defaults["opt_batch"], defaults["max_batch"]]
    frames = defaults.get("frame_sizes")
    values = {
        "ONNX": defaults["onnx"], "ENGINE": defaults["engine"], "PRECISION": defaults["precision"],
        "MIN_BATCH": batches[0], "OPT_BATCH": batches[1], "MAX_BATCH": batches[2],
        "WORKSPACE_MB": defaults["workspace_mb"], "FP16_FALLBACK": int(bool(defaults["fp16_fallback"])),
        "TIMING_CACHE": defaults["timing_cache"], "META": defaults["meta"],
        "INPUT_NAME": defaults.get("input_name", "input"), "INPUT_DIMS": dims,
        "FRAME_SIZES": ",".join(f"{h}x{w}" for h, w in frames) if frames else None,
    }
    block = [SH_BEGIN] + [f"{k}={shlex.quote(str(v)) if v not in (None, '') else ''}" for k, v in values.items()]
    source = template_path("build_engine.sh").read_text(encoding="utf-8").splitlines()
    if source.count(SH_BEGIN) != 1 or source.count(SH_END) != 1:
        raise RuntimeError(f"{template_path('build_engine.sh')} must hold one {SH_BEGIN!r} ... {SH_END!r} block")
    start, end = source.index(SH_BEGIN), source.index(SH_END)
    return "\n".join(source[:start] + block + source[end:]) + "\n"


def render_deepstream(meta: dict[str, Any], onnx: str | None = None) -> str:
    """The DeepStream nvinfer config for a bundle's meta.json, kept in the bundle's deepstream/ folder beside the
    labels file of deepstream_labels(). onnx: the ONNX nvinfer builds from, relative to the bundle (default: the
    bundle's own ONNX, when it has one)."""
    if meta.get("task") not in DEEPSTREAM:
        raise ValueError(f"no DeepStream template for task {meta.get('task')!r}; there are {sorted(DEEPSTREAM)}")
    inp, post = meta["input"], meta.get("postprocess") or {}
    onnx = onnx or meta.get("onnx") or (meta["model"] if str(meta["model"]).endswith(".onnx") else None)
    engine = meta["model"] if meta["backend"] == "tensorrt" else f"{PurePosixPath(onnx or 'model').stem}.engine"
    mean, std = [float(v) for v in inp["mean"]], [float(v) for v in inp["std"]]
    one_std = sum(std) / len(std)
    worst = max(abs(s / one_std - 1) for s in std)
    std_note = (f"edgeres's std {std} is the same for every channel, so the scale is exact." if worst == 0 else
                f"the per-channel std {std} is approximated by their mean {one_std:.4f}, so a channel's input is "
                f"scaled off by up to {worst:.1%}.")
    outputs = list(meta.get("outputs") or [])
    nms_in_graph = bool(post.get("nms_in_graph"))
    fields = {
        "name": (meta.get("source") or {}).get("arch") or PurePosixPath(str(meta["model"])).stem,
        "num_classes": len(meta["class_names"]), "std_note": std_note, "outputs": outputs,
        "onnx_line": f"onnx-file=../{onnx}" if onnx else
                     "# onnx-file=  this bundle holds no ONNX: export one with `edgeres export --to onnx`",
        "engine": f"../{engine}", "labels": "labels.txt", "batch_size": meta.get("max_batch") or 1,
        "precision": meta.get("precision", "fp32"), "network_mode": NETWORK_MODE[meta.get("precision", "fp32")],
        "net_scale_factor": f"{1 / (255 * one_std):.8g}", "offsets": ";".join(f"{255 * m:.6g}" for m in mean),
        "model_color_format": COLOR_FORMAT[inp.get("color") or ("L" if inp["in_chans"] == 1 else "RGB")],
        "infer_dims": f"{inp['in_chans']};{inp['img_size']};{inp['img_size']}", "img_size": inp["img_size"],
        "output_blob_names": ";".join(outputs), "pad_value": inp.get("pad_value", 114),
        "cluster_mode": 4 if nms_in_graph else 2, "conf": post.get("conf"), "iou": post.get("iou"),
        "max_det": post.get("max_det"),
        "nms_note": ("NMS ran in the graph: no clustering here." if nms_in_graph else
                     f"The graph has no NMS: nvinfer runs per-class NMS at IoU {post.get('iou')}."),
        "preprocess_note": ("\n# WARNING: this bundle's model takes uint8 frames with its preprocessing inside the "
                            "graph; nvinfer feeds\n# normalised NCHW floats, so point onnx-file at the model "
                            "exported without preprocessing." if inp.get("in_graph_preprocess") else ""),
    }
    return template_path(DEEPSTREAM[meta["task"]]).read_text(encoding="utf-8").format(**fields)


def deepstream_labels(meta: dict[str, Any]) -> str:
    """deepstream/labels.txt: the class names in the layout nvinfer reads for the task."""
    if meta.get("task") not in LABEL_SEPARATOR:
        raise ValueError(f"no DeepStream labels layout for task {meta.get('task')!r}")
    return LABEL_SEPARATOR[meta["task"]].join(meta["class_names"]) + "\n"


def labels_txt(meta: dict[str, Any]) -> str:
    """labels.txt for people and other tools: one class name per line, in class-id order."""
    return "\n".join(meta["class_names"]) + "\n"


def _checked(defaults: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in BUILD_KEYS if k not in defaults]
    if missing:
        raise ValueError(f"build script defaults lack {missing}; expected {list(BUILD_KEYS)}")
    if ast.literal_eval(repr(defaults)) != defaults:
        raise ValueError(f"build script defaults must be plain literals (str, int, bool, None, lists): {defaults!r}")
    for key in FILE_KEYS:
        name = defaults[key]
        if name is not None and (not isinstance(name, str) or PurePosixPath(name).is_absolute() or
                                 ".." in PurePosixPath(name).parts or not name):
            raise ValueError(f"defaults[{key!r}] must name a file inside the bundle, got {name!r}")
    return dict(defaults)
