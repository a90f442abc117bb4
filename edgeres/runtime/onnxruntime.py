"""ONNX Runtime backend (CPU): runs an edgeres ONNX export, fp32, fp16 or INT8 QDQ.

onnx and onnxruntime are imported here at the top: edgeres.runtime.load imports this module only when the
backend is asked for, and turns a missing package into a message naming the extra to install.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from edgeres.artifacts import check_recorded_sha256
from edgeres.errors import UserInputError
from edgeres.runtime.embedded import read_meta
from edgeres.runtime.base import Outputs, Runner, RunnerInfo

# Ops whose presence means the graph computes in integers, whatever its float inputs and outputs.
_INT8_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "QGemm", "DynamicQuantizeMatMul",
})


def graph_precision(proto: Any) -> str:
    """What a graph computes in: int8 if it quantizes, fp16 if its float weights are mostly half, else fp32."""
    if any(node.op_type in _INT8_OPS for node in proto.graph.node):
        return "int8"
    half, single = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    float_types = [t.data_type for t in proto.graph.initializer if t.data_type in (half, single)]
    if float_types and float_types.count(half) * 2 > len(float_types):
        return "fp16"
    return "fp32"


class OnnxRuntimeRunner(Runner):
    """An edgeres ONNX file in an onnxruntime InferenceSession on the CPU."""

    def __init__(self, path: str | Path, precision: str | None = None, threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"{path}: no such ONNX file")
        check_recorded_sha256(path)
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # onnx raises DecodeError or its own types for a file that is not ONNX
            raise UserInputError(f"{path}: not a readable ONNX model ({e})") from e
        props = {p.key: p.value for p in proto.metadata_props}
        self.meta = read_meta(props, path)
        actual = graph_precision(proto)
        if precision not in (None, actual):
            raise UserInputError(
                f"{path} holds a {actual} graph; ONNX Runtime runs a graph in the precision it was exported in, "
                f"so precision={precision!r} cannot be applied (export a {precision} model instead)"
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers etc. are not the user's problem
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph_input = self.session.get_inputs()[0]
        self._input_name = graph_input.name
        self._input_dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32
        self._output_names = [o.name for o in self.session.get_outputs()]
        self.info = RunnerInfo(
            backend="onnxruntime",
            precision=actual,
            device="cpu",
            threads=threads,
            input_shape=_input_shape(graph_input.shape, self.meta.input_shape),
            path=str(path),
            versions={"onnxruntime": ort.__version__, "onnx": onnx.__version__},
            extra={"providers": self.session.get_providers(),
                   "export_source_sha256": props.get("source_sha256") or None,
                   "intra_op_threads": threads if threads is not None else "onnxruntime default"},
        )

    def run(self, batch: np.ndarray) -> Outputs:
        outs = self.session.run(None, {self._input_name: batch.astype(self._input_dtype, copy=False)})
        return {name: np.asarray(out, dtype=np.float32) for name, out in zip(self._output_names, outs)}


def _input_shape(dims: list[Any], fallback: tuple[int, int, int]) -> tuple[int | None, int, int, int]:
    """Graph dims as (N or None, C, H, W); symbolic C/H/W fall back to the metadata's input shape."""
    if len(dims) != 4:
        raise UserInputError(f"expected a 4-D NCHW model input, the graph declares {dims}")
    batch = dims[0] if isinstance(dims[0], int) else None
    chw = tuple(d if isinstance(d, int) else f for d, f in zip(dims[1:], fallback))
    return (batch, *chw)  # type: ignore[return-value]
