"""Static INT8 post-training quantization of an edgeres ONNX export into QDQ form (ONNX Runtime tooling).

Two modes:
  "cpu"       int8 activations with a zero point (or symmetric, on request), symmetric int8 weights per channel
              (or per tensor, on request); runs in ONNX Runtime.
  "tensorrt"  what TensorRT's explicit quantization accepts: signed int8 activations and weights, symmetric
              (every zero point 0), per-channel weight scales, float bias, Q/DQ only around ops TensorRT
              fuses with them. The file is still a plain ONNX model, so ONNX Runtime can check it here.
"""
from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edgeres.artifacts import atomic_path, sha256_file
from edgeres.errors import UserInputError
from edgeres.export.onnx.convert import INPUT_NAME, input_shape, run_onnx
from edgeres.runtime.embedded import graph_fields, read_meta
from edgeres.tasks import get_task

MODES = ("cpu", "tensorrt")
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# TensorRT fuses Q/DQ with weighted layers, residual adds and pooling; anywhere else a Q/DQ pair only adds
# reformatting between int8 and float, so the TensorRT mode quantizes these op types and no others.
TENSORRT_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool",
                     "GlobalAveragePool")
TENSORRT_NO_OUTPUT_QDQ = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add")
GATE_OPS = frozenset({"Sigmoid", "HardSigmoid"})
# The arithmetic an attention branch computes its statistics with (SimAM's energy: mean, centring,
# square, variance, division). A gate's branch is walked back through these ops only.
BRANCH_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs",
                        "ReduceMean", "ReduceSum", "ReduceSumSquare"})
QUANT_KEY = "edgeres_quantization"


def quantize_onnx(
    onnx_fp32: str | Path,
    out: str | Path,
    calibration: Sequence[np.ndarray],
    *,
    mode: str = "cpu",
    method: str = "minmax",
    per_channel: bool = True,
    symmetric_activations: bool | None = None,
    keep_attention_float: bool = True,
    keep_float: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (),
    op_types_to_exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """Quantize an fp32 edgeres ONNX file to static INT8 QDQ, calibrated on float32 NCHW batches.

    symmetric_activations: activation zero points all 0 (NNCF's "performance" preset) or fitted to each range
      ("mixed"); None: the mode's own (cpu: fitted; tensorrt: 0). The tensorrt mode is symmetric whatever is asked.
    keep_attention_float: keep the gates and energy terms `find_attention_nodes` finds in float.
    keep_float: module-name prefixes kept in float with everything downstream of them (a detector's output
      convs and box decode); None: the prefixes the export recorded (the model's `keep_float`).
    nodes_to_exclude / op_types_to_exclude: further node names / op types to keep in float.
    """
    import onnx

    if mode not in MODES:
        raise UserInputError(f"unknown quantization mode {mode!r}; choose one of {list(MODES)}")
    if method not in METHODS:
        raise UserInputError(f"unknown calibration method {method!r}; choose one of {sorted(METHODS)}")
    onnx_fp32, out = Path(onnx_fp32), Path(out)
    source = onnx.load(str(onnx_fp32))
    batches = _calibration_batches(calibration, input_shape(source))
    tensorrt = mode == "tensorrt"
    if symmetric_activations is not None and not isinstance(symmetric_activations, bool):
        raise UserInputError(f"symmetric_activations must be true, false or None, got {symmetric_activations!r}")
    # TensorRT's explicit quantization takes only zero points of 0, so its mode cannot be asymmetric.
    symmetric = tensorrt or bool(symmetric_activations)
    props = {p.key: p.value for p in source.metadata_props}
    scopes = list(graph_fields(props, onnx_fp32)["keep_float"] if keep_float is None else keep_float)
    with tempfile.TemporaryDirectory(prefix="edgeres-quant-") as tmp:
        prepared = _preprocess(onnx_fp32, Path(tmp) / "prepared.onnx")
        proto = onnx.load(str(prepared))
        kept = _float_nodes(proto, keep_attention_float, [*nodes_to_exclude, *find_scope_nodes(proto, scopes)],
                            op_types_to_exclude)
        _quantize_static(prepared, Path(tmp) / "quantized.onnx", batches, kept, tensorrt, symmetric, method,
                         per_channel)
        result = onnx.load(str(Path(tmp) / "quantized.onnx"))
    record = {
        "mode": mode,
        "method": method,
        "calibration_samples": int(sum(len(b) for b in batches)),
        "calibration_batches": len(batches),
        "per_channel": per_channel,
        # In NNCF's words: weights are symmetric either way, so the activations decide the preset.
        "preset": "performance" if symmetric else "mixed",
        "symmetric": {"activations": symmetric, "weights": True},
        "activation_type": "int8",
        "weight_type": "int8",
        "quantize_bias": not tensorrt,
        "op_types": list(TENSORRT_OP_TYPES) if tensorrt else "all supported",
        "outputs_not_quantized": list(TENSORRT_NO_OUTPUT_QDQ) if tensorrt else [],
        "keep_float": scopes,
        "kept_in_float": kept,
        "nodes": len(result.graph.node),
        "source": str(onnx_fp32),
    }
    _copy_metadata(source, result, record)
    if tensorrt and (problems := tensorrt_qdq_problems(result)):
        raise RuntimeError(f"the TensorRT QDQ model breaks TensorRT's rules: {'; '.join(problems[:5])}")
    onnx.checker.check_model(result)
    with atomic_path(out) as tmp_path:
        onnx.save(result, str(tmp_path))
        record["validation"] = _agreement(onnx_fp32, tmp_path, batches[0], read_meta(props, onnx_fp32).task)
    record.update(path=str(out), bytes=out.stat().st_size, sha256=sha256_file(out))
    return record


def _quantize_static(src: Path, dst: Path, batches: list[np.ndarray], kept: list[str], tensorrt: bool,
                     symmetric: bool, method: str, per_channel: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    extra: dict[str, Any] = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
    if tensorrt:
        # TensorRT takes bias in float and fuses it itself; an int32 DequantizeLinear bias fails to parse.
        extra["QuantizeBias"] = False
        # TensorRT's placement: Q/DQ on the inputs of weighted ops and residual adds, not on their outputs;
        # it fuses the activation and the next layer's Q. Quantizing outputs as well rounds twice, and
        # on the classifier it rounds the logits themselves (measured: top-1 agreement 0.58 -> 0.92).
        extra["OpTypesToExcludeOutputQuantization"] = list(TENSORRT_NO_OUTPUT_QDQ)
    # The histogram calibrators print progress to stdout, which is the CLI's table.
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            str(src), str(dst), _Reader(batches),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            per_channel=per_channel, reduce_range=False,
            op_types_to_quantize=list(TENSORRT_OP_TYPES) if tensorrt else None,
            nodes_to_exclude=kept,
            calibrate_method=getattr(CalibrationMethod, METHODS[method]),
            extra_options=extra,
        )


def find_attention_nodes(proto: Any) -> list[str]:
    """Names of the nodes that quantize badly, found by op pattern: gates, the Mul they feed, their branch, Softmax.

    A gate is a Sigmoid/HardSigmoid. If a Mul multiplies a tensor x by it, the Mul is kept, and so is the
    arithmetic between x and the gate (SimAM's ReduceMean/Sub/Pow/ReduceSum/Div/Add chain); the walk stops at
    x itself and at any op outside BRANCH_OPS, so an SE block's 1x1 convolutions stay quantized.
    """
    producer = {out: node for node in proto.graph.node for out in node.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in proto.graph.node:
        for name in node.input:
            consumers[name].append(node)
    kept: dict[str, None] = {}  # insertion-ordered set
    for node in proto.graph.node:
        if node.op_type == "Softmax":
            kept[node.name] = None
        if node.op_type not in GATE_OPS:
            continue
        kept[node.name] = None
        for mul in (c for c in consumers[node.output[0]] if c.op_type == "Mul"):
            kept[mul.name] = None
            gated = {t for t in mul.input if t != node.output[0]}
            for branch_node in _branch(node.input[0], gated, producer):
                kept[branch_node.name] = None
    return list(kept)


def find_scope_nodes(proto: Any, prefixes: Sequence[str]) -> list[str]:
    """Nodes of the modules named by `prefixes` (relative to the model, e.g. "heads") and every node downstream.

    torch.onnx names a node by the modules it was traced in ("/model/heads.0/Conv": a wrapper's `model`, then
    `heads.0`), so a node belongs to prefix p when p is a run of dotted components in its scope path.
    Everything its outputs reach is kept too: a detector's decode after the output convs (sigmoid, grid,
    anchors, NMS). A prefix that names no node is refused: the model declared a module the graph lacks.
    """
    if not prefixes:
        return []
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in proto.graph.node:
        for name in node.input:
            consumers[name].append(node)
    seeds = []
    for prefix in prefixes:
        found = [node for node in proto.graph.node if in_scope(_onnx_scope(node.name), prefix)]
        if not found:
            raise RuntimeError(f"keep_float names {prefix!r}, but no node of the ONNX graph comes from it "
                               f"(node names look like {[n.name for n in proto.graph.node[:3]]})")
        seeds += found
    return [node.name for node in downstream(seeds, lambda node: [c for out in node.output for c in consumers[out]])]


def in_scope(path: str, prefix: str) -> bool:
    """True when dotted module path `path` runs through module `prefix` ("model.heads.0" is in "heads")."""
    return f".{prefix}." in f".{path}."


def _onnx_scope(node_name: str) -> str:
    # "/model/heads.0/Conv" -> "model.heads.0": torch.onnx repeats a parent's name in a child's segment
    # ("/stem/stem.0/Conv"), which a dotted join keeps findable.
    return ".".join(node_name.strip("/").split("/")[:-1])


def downstream(seeds: list[Any], users: Callable[[Any], list[Any]], key: Callable[[Any], Any] = id) -> list[Any]:
    """`seeds` and every node reachable from them through `users(node)`, each once (by `key`), in discovery order."""
    found: dict[Any, Any] = {}
    stack = list(seeds)
    while stack:
        node = stack.pop()
        if key(node) in found:
            continue
        found[key(node)] = node
        stack.extend(users(node))
    return list(found.values())


def tensorrt_qdq_problems(proto: Any) -> list[str]:
    """Ways a QDQ model breaks TensorRT explicit quantization: zero points, types, bias, axes. Empty is good."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    problems = []
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = inits.get(node.input[1])
        zero = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is None or zero.data_type != TensorProto.INT8:
            kind = "no zero point" if zero is None else TensorProto.DataType.Name(zero.data_type)
            problems.append(f"{node.name}: zero point must be an int8 initializer, found {kind}")
        elif np.any(numpy_helper.to_array(zero) != 0):
            problems.append(f"{node.name}: zero point is not 0 (TensorRT quantizes symmetrically)")
        if scale is None or np.any(numpy_helper.to_array(scale) <= 0):
            problems.append(f"{node.name}: scale must be a positive constant")
        data = inits.get(node.input[0])
        if scale is not None and scale.dims:
            if data is None or node.op_type != "DequantizeLinear":
                problems.append(f"{node.name}: per-channel scales on an activation (only weights may be per-channel)")
            else:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                if not -len(data.dims) <= axis < len(data.dims) or data.dims[axis] != scale.dims[0]:
                    problems.append(f"{node.name}: {scale.dims[0]} scales do not match axis {axis} "
                                    f"of {list(data.dims)}")
        if data is not None and data.data_type == TensorProto.INT32:
            problems.append(f"{node.name}: int32 (bias) dequantization; TensorRT wants float bias")
    return problems


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of batches."""

    def __init__(self, batches: list[np.ndarray]):
        self._iter: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {INPUT_NAME: batch}


def _calibration_batches(calibration: Sequence[np.ndarray], shape: list[int | None]) -> list[np.ndarray]:
    """Check the batches against the model input and re-cut them to its batch size if that is fixed."""
    if not calibration:
        raise UserInputError("INT8 calibration needs at least one batch of inputs; got none")
    expected = tuple(shape[1:])
    for i, batch in enumerate(calibration):
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32 or batch.ndim != 4 \
                or tuple(batch.shape[1:]) != expected:
            got = (f"{batch.dtype} array of shape {batch.shape}" if isinstance(batch, np.ndarray)
                   else type(batch).__name__)
            raise UserInputError(f"calibration batch {i} must be a float32 NCHW array "
                                 f"(N, {', '.join(map(str, expected))}); got {got}")
    if shape[0] is None:
        return [np.ascontiguousarray(b) for b in calibration]
    samples = np.concatenate(calibration)
    fixed = shape[0]
    if len(samples) < fixed:
        raise UserInputError(f"the model takes batches of {fixed}; calibration has only {len(samples)} samples")
    return [samples[i:i + fixed] for i in range(0, len(samples) - fixed + 1, fixed)]


def _preprocess(src: Path, dst: Path) -> Path:
    """ONNX Runtime's pre-processing (shape inference, optimisation), then names for any unnamed node."""
    import onnx
    from onnxruntime.quantization import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    proto = onnx.load(str(dst))
    # nodes_to_exclude matches by name, so every node needs a unique one.
    seen: set[str] = set()
    for i, node in enumerate(proto.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    onnx.save(proto, str(dst))
    return dst


def _float_nodes(proto: Any, attention: bool, names: Sequence[str], op_types: Sequence[str]) -> list[str]:
    known = {node.name for node in proto.graph.node}
    unknown = sorted(set(names) - known)
    if unknown:
        raise UserInputError(f"nodes_to_exclude names nodes the graph lacks: {unknown[:5]}; "
                             f"names look like {sorted(known)[:3]}")
    kept = dict.fromkeys(find_attention_nodes(proto) if attention else [])
    kept.update(dict.fromkeys(names))
    kept.update(dict.fromkeys(n.name for n in proto.graph.node if n.op_type in set(op_types)))
    return list(kept)


def _branch(start: str, stops: set[str], producer: dict[str, Any]) -> Iterator[Any]:
    """Nodes of BRANCH_OPS reachable backwards from tensor `start` without crossing a tensor in `stops`."""
    stack, visited = [start], set()
    while stack:
        tensor = stack.pop()
        if tensor in stops or tensor in visited or tensor not in producer:
            continue
        visited.add(tensor)
        node = producer[tensor]
        if node.op_type in BRANCH_OPS:
            yield node
            stack.extend(node.input)


def _copy_metadata(source: Any, result: Any, record: dict[str, Any]) -> None:
    # ONNX Runtime's tools drop metadata_props; the runner needs them to know what it runs.
    props = {p.key: p.value for p in source.metadata_props}
    props[QUANT_KEY] = json.dumps({k: v for k, v in record.items() if k != "source"})
    del result.metadata_props[:]
    for key, value in props.items():
        entry = result.metadata_props.add()
        entry.key, entry.value = key, value
    result.producer_name = "edgeres"


def _agreement(fp32: Path, int8: Path, batch: np.ndarray, task_name: str) -> dict[str, Any]:
    """fp32 vs int8 outputs on one batch, judged by the model's task at the int8 tolerance (recorded, not enforced)."""
    task = get_task(task_name)
    stats = task.compare(run_onnx(fp32, batch), run_onnx(int8, batch))
    stats["on"] = "first calibration batch"
    stats["failures"] = task.judge(stats, task.tolerance("int8"))
    return stats
