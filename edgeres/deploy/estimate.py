"""Roofline latency estimate of an exported graph on a device profile: per layer, then the total.

An estimate, not a measurement: it says roughly how fast a model will run on a device that is not at hand.

Per layer (what a runtime executes as one kernel, see "Fusion"):
    ops    = 2 x MACs (Conv, ConvTranspose, Gemm, MatMul) + one op per element of the elementwise ops in it
             (a pooling window's size per output element, a reduction's input elements);
    bytes  = its activation inputs + its weights + its outputs, each at the precision it is held in;
    time   = max(ops / (peak x compute), bytes / (bandwidth x memory)) + overhead_us
and the model's time is the sum over layers. `peak` is the profile's dense TOPS/TFLOPS for the engine and the
layer's precision, `bandwidth` its memory bandwidth (GB/s); `compute`, `memory` and `overhead_us` are the
profile's calibrated `efficiency` factors for that precision. A layer is "compute"- or "memory"-bound by
which term of the max is larger.

Precision. A layer whose data inputs are all int8 (they come through a quantizer: an ONNX QuantizeLinear /
DequantizeLinear pair, an OpenVINO FakeQuantize; or from a quantization-agnostic op such as MaxPool or
Concat fed int8) and, if it has weights, whose weights are stored in int8, is int8: it moves one byte per
element and runs at the int8 peak. Every other layer runs at the graph's float precision (fp32; fp16 when
its weights are stored in fp16; `precision` overrides it, e.g. "fp16" for an fp32 ONNX that TensorRT builds
in fp16). A tensor whose every reader takes it through a quantizer is held in int8; an output nobody reads
is not stored.

Fusion. Runtimes (OpenVINO's CPU plugin, TensorRT, ONNX Runtime) fuse an elementwise op into the kernel
that produces its input when nothing else reads that input: a convolution's bias, activation and residual
add, a chain of elementwise ops. The estimate does the same, so the intermediate tensor moves no bytes and
costs no second kernel launch. Quantize/dequantize nodes, reshapes and shape arithmetic cost nothing;
subgraphs of constants are folded.

Calibration (`fit_efficiency`, run by benchmarks/estimate.py): measure the p50 latency of several exported
models at each precision on hardware at hand, one fresh process each, and fit the factors that minimise the
squared log ratio of estimate to measurement over all of them (scipy least squares in log space, several
starting points, the best kept). The compute efficiency is fitted per precision; memory efficiency and
per-layer overhead are shared by all precisions, since they belong to the memory system and the runtime
rather than to the arithmetic, and fewer parameters keep the fit honest on a handful of models. The
benchmark reports leave-one-out error (fit on the others, predict the held-out model) as its headline.
Memory efficiency may exceed 1: at batch 1 much of the traffic stays in caches faster than the DRAM
bandwidth the profile states.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeres.deploy.devices import Device, Efficiency
from edgeres.errors import UserInputError

PRECISION_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
FLOAT_PRECISIONS = ("fp32", "fp16")
LABEL = "estimate (roofline, not a measurement)"

# Op vocabulary, ONNX and OpenVINO names side by side.
CONVOLUTIONS = {"Conv", "Convolution", "GroupConvolution"}
TRANSPOSED_CONVOLUTIONS = {"ConvTranspose", "ConvolutionBackpropData", "GroupConvolutionBackpropData"}
MATMULS = {"Gemm", "MatMul"}
MAC_OPS = CONVOLUTIONS | TRANSPOSED_CONVOLUTIONS | MATMULS
QUANTIZERS = {"QuantizeLinear", "FakeQuantize"}
DEQUANTIZERS = {"DequantizeLinear"}
VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"}  # same data, another shape
METADATA = {"Shape", "ShapeOf", "Size"}  # read a shape, not the data
# Ops that pass int8 values on as int8 (runtimes run them on the quantized data): their output stays int8.
QUANTIZATION_AGNOSTIC = {"MaxPool", "ReduceMax", "Concat", "Split", "VariadicSplit", "Slice", "StridedSlice",
                         "Transpose", "Pad", "Gather", "Tile", "Expand", "Broadcast", "DepthToSpace", "SpaceToDepth",
                         "Max", "Maximum", "Min", "Minimum", "ShuffleChannels"}
ELEMENTWISE = {
    "Add", "Sub", "Subtract", "Mul", "Multiply", "Div", "Divide", "Pow", "Power", "Sqrt", "Reciprocal", "Neg",
    "Negative", "Abs", "Exp", "Log", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HSigmoid",
    "HardSwish", "HSwish", "Swish", "Tanh", "Clip", "Clamp", "Erf", "Gelu", "Mish", "Softplus", "SoftPlus",
    "Elu", "Selu", "Max", "Maximum", "Min", "Minimum", "Where", "Select", "Equal", "Greater", "Less", "Not",
    "LogicalNot", "And", "LogicalAnd", "Or", "LogicalOr", "Cast", "Convert", "BatchNormalization",
    "BatchNormInference", "Floor", "Ceil", "Ceiling", "Round", "Sign", "Mod", "FloorMod", "SquaredDifference"}
WINDOWED = {"MaxPool", "AveragePool", "AvgPool", "LpPool"}
REDUCTIONS = {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
              "ReduceL1", "ReduceL2", "ReduceProd", "ReduceSumSquare", "ReduceLogSumExp", "Softmax", "SoftMax",
              "LogSoftmax", "MVN", "LayerNormalization", "InstanceNormalization", "NormalizeL2", "TopK",
              "ArgMax", "ArgMin"}
# Anything else (Concat, Slice, Transpose, Resize, Gather, NMS...) moves data and computes nothing.


# ---------------------------------------------------------------- a graph, whatever format it came from

@dataclasses.dataclass
class _Tensor:
    shape: tuple[int, ...] | None  # None: not known statically
    itemsize: int
    is_float: bool
    constant: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.shape is not None else 0


@dataclasses.dataclass
class _Node:
    name: str
    op: str
    inputs: list[str]  # tensor names; "" for an omitted optional input
    outputs: list[str]
    attrs: dict[str, Any]


@dataclasses.dataclass
class _Graph:
    tensors: dict[str, _Tensor]
    nodes: list[_Node]  # in topological order
    outputs: list[str]
    batch: int


def _read_onnx(path: Path, batch: int | None) -> _Graph:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise UserInputError(f"{path}: not a readable ONNX file ({e})") from e
    g = proto.graph
    initializers = {t.name: t for t in g.initializer}
    inputs = [i for i in g.input if i.name not in initializers]
    batch = _set_batch([[d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
                        for i in inputs], batch, path)
    for i in inputs:
        if not i.type.tensor_type.shape.dim[0].HasField("dim_value"):
            i.type.tensor_type.shape.dim[0].dim_value = batch
    # Shapes stored by the exporter carry the symbolic batch: drop them and infer again at this batch.
    del g.value_info[:]
    for o in g.output:
        o.type.tensor_type.ClearField("shape")
    try:
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except onnx.shape_inference.InferenceError as e:
        raise UserInputError(f"{path}: ONNX shape inference failed ({e})") from e
    g = proto.graph
    tensors = {v.name: _onnx_value(v.type.tensor_type) for v in [*g.input, *g.value_info, *g.output]}
    for t in initializers.values():
        tensors[t.name] = _Tensor(tuple(t.dims), *_onnx_dtype(t.data_type), constant=True)
    nodes = [_Node(n.name or f"{n.op_type}_{k}", n.op_type, list(n.input), list(n.output),
                   {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute
                    if a.name in ("transA", "kernel_shape")})
             for k, n in enumerate(g.node)]
    return _Graph(tensors, nodes, [o.name for o in g.output], batch)


def _onnx_value(t: Any) -> _Tensor:
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") else None
    shape = tuple(dims) if dims is not None and None not in dims else None
    return _Tensor(shape, *_onnx_dtype(t.elem_type))


def _onnx_dtype(elem_type: int) -> tuple[int, bool]:
    from onnx import helper

    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return 4, True  # undefined: assume float32
    return dtype.itemsize, dtype.kind == "f" or "bfloat16" in dtype.name


def _read_openvino(path: Path, batch: int | None) -> _Graph:
    import openvino as ov

    from edgeres.runtime.embedded import check_ir_path

    xml = check_ir_path(path)
    try:
        model = ov.Core().read_model(xml)
    except RuntimeError as e:
        raise UserInputError(f"{xml}: OpenVINO cannot read this IR ({str(e).splitlines()[-1][:200]})") from e
    shapes = [[d.get_length() if d.is_static else None for d in p.get_partial_shape()] for p in model.inputs]
    batch = _set_batch(shapes, batch, xml)
    model.reshape({i: [batch if shape[0] is None else shape[0], *shape[1:]] for i, shape in enumerate(shapes)})

    def key(output: Any) -> str:
        return f"{output.get_node().get_name()}:{output.get_index()}"

    tensors, nodes, outputs = {}, [], []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        for o in op.outputs():
            shape = o.get_partial_shape()
            etype = o.get_element_type()
            tensors[key(o)] = _Tensor(tuple(shape.to_shape()) if shape.is_static else None, etype.size,
                                      etype.is_real(), constant=kind == "Constant")
        inputs = [key(i.get_source_output()) for i in op.inputs()]
        if kind == "Result":
            outputs += inputs
        elif kind not in ("Parameter", "Constant"):
            attrs = op.get_attributes() if kind in WINDOWED | {"MatMul"} else {}
            nodes.append(_Node(op.get_friendly_name(), kind, inputs, [key(o) for o in op.outputs()], attrs))
    return _Graph(tensors, nodes, outputs, batch)


def _set_batch(shapes: list[list[int | None]], batch: int | None, path: Path) -> int:
    """The batch to estimate at: `batch` for a dynamic-batch graph (default 1), the graph's own for a fixed one.
    Only dynamic batch dimensions take it."""
    if batch is not None and batch < 1:
        raise UserInputError(f"batch must be a positive integer, got {batch}")
    if not shapes:
        raise UserInputError(f"{path}: the graph has no inputs")
    for shape in shapes:
        if not shape or None in shape[1:]:
            raise UserInputError(f"{path}: input shape {shape} has dynamic dimensions besides the batch; "
                                 "export it with a fixed image size")
    fixed = shapes[0][0]
    if fixed is not None and batch is not None and fixed != batch:
        raise UserInputError(f"{path}: the graph has a fixed batch of {fixed}; cannot estimate batch {batch}")
    return fixed or batch or 1


# ---------------------------------------------------------------- per-layer cost

@dataclasses.dataclass(frozen=True)
class LayerCost:
    """One fused layer: what it computes and moves, independent of any device."""

    name: str
    op: str        # e.g. "Conv+Add+Relu"
    precision: str
    macs: int
    ops: int       # 2 x MACs + elementwise/pooling ops
    bytes: int     # activations in + weights + activations out


@dataclasses.dataclass(frozen=True)
class GraphCost:
    """The layers of an exported graph at a batch size and float precision."""

    artifact: str
    batch: int
    float_precision: str
    layers: tuple[LayerCost, ...]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def bytes(self) -> int:
        return sum(layer.bytes for layer in self.layers)


@dataclasses.dataclass
class _Layer:
    name: str
    kinds: list[str]
    precision: str
    macs: int
    ops: int
    const_bytes: int
    inputs: dict[str, int]  # tensor -> bytes read
    outputs: list[str]


def graph_cost(artifact: str | Path, batch: int | None = None, precision: str | None = None) -> GraphCost:
    """Per-layer MACs, ops and bytes of an ONNX file or OpenVINO IR (.xml).

    batch: for a dynamic-batch graph (default 1); a fixed-batch graph keeps its own.
    precision: "fp32" or "fp16" for the layers left in float (default: as the graph stores its weights).
    """
    path = Path(artifact)
    if precision is not None and precision not in FLOAT_PRECISIONS:
        raise UserInputError(f"precision is the float layers' one, {list(FLOAT_PRECISIONS)}; got {precision!r} "
                             "(int8 comes from a quantized graph)")
    if path.is_dir():
        raise UserInputError(f"{path} is a folder; the estimate reads an exported graph, a .onnx file or an OpenVINO "
                             ".xml (export a checkpoint first with `edgeres export`)")
    if not path.is_file():
        raise UserInputError(f"{path}: no such file (expected an exported .onnx file or OpenVINO .xml)")
    readers = {".onnx": _read_onnx, ".xml": _read_openvino}
    if path.suffix not in readers:
        raise UserInputError(f"{path}: the estimate reads an exported graph, a .onnx file or an OpenVINO .xml "
                             "(export a checkpoint first with `edgeres export`)")
    graph = readers[path.suffix](path, batch)
    float_precision, layers = _layers(graph, precision)
    return GraphCost(str(path), graph.batch, float_precision, tuple(layers))


@dataclasses.dataclass
class _Folded:
    """A graph with constant subgraphs folded and views / (de)quantizers seen through."""

    leaves: dict[str, set[str]]        # constant tensor -> the stored tensors it is computed from
    alias: dict[str, tuple[str, bool]]  # view or (de)quantizer output -> (its input, whether it quantizes)
    real: list[_Node]                  # the nodes that run
    int8: set[str]                     # outputs of quantization-agnostic nodes fed only int8 values

    def resolve(self, name: str) -> tuple[str, bool]:
        """The tensor that holds `name`'s data, and whether it is read as int8 (through a quantizer, or made
        in int8 by a quantization-agnostic node)."""
        quantized = False
        while name in self.alias:
            name, q = self.alias[name]
            quantized |= q
        return name, quantized or name in self.int8

    def data(self, node: _Node) -> list[tuple[str, bool]]:
        return [self.resolve(i) for i in node.inputs if i and i not in self.leaves]


def _fold(graph: _Graph) -> _Folded:
    folded = _Folded({n: {n} for n, v in graph.tensors.items() if v.constant}, {}, [], set())
    for node in graph.nodes:
        if node.op in METADATA or not folded.data(node):  # shape arithmetic and constant subgraphs
            for o in node.outputs:
                folded.leaves[o] = (set() if node.op in METADATA else {o} if not any(node.inputs)  # ONNX Constant
                                    else set().union(*(folded.leaves[i] for i in node.inputs if i)))
        elif node.op in VIEWS | QUANTIZERS | DEQUANTIZERS:
            folded.alias[node.outputs[0]] = (node.inputs[0], node.op not in VIEWS)
        else:
            folded.real.append(node)
            if node.op in QUANTIZATION_AGNOSTIC and all(q for _, q in folded.data(node)):
                folded.int8.update(node.outputs)
    return folded


def _layers(graph: _Graph, precision: str | None) -> tuple[str, list[LayerCost]]:
    """The float precision and the fused layers of a graph."""
    t, g = graph.tensors, _fold(graph)
    precision = precision or _stored_float(g, t)
    float_bytes = PRECISION_BYTES[precision]

    def size(name: str, int8: bool = False) -> int:
        v = t.get(name) or _Tensor(None, 4, True)
        return v.numel * (1 if int8 else min(v.itemsize, float_bytes) if v.is_float else v.itemsize)

    readers: dict[str, list[bool]] = {}  # tensor -> per reader, whether it reads through a quantizer
    for node in g.real:
        for root, q in g.data(node):
            readers.setdefault(root, []).append(q)
    for o in graph.outputs:
        readers.setdefault(g.resolve(o)[0], []).append(False)
    held_int8 = {n for n, qs in readers.items() if all(qs)}

    layers: list[_Layer] = []
    producer: dict[str, _Layer] = {}
    for node in g.real:
        data = g.data(node)
        macs, ops = _work(node, t)
        host = None
        if node.op in ELEMENTWISE:  # fuse into the kernel that makes an input nothing else reads
            fusable = [producer[r] for r, _ in data if r in producer and len(readers[r]) == 1]
            host = max(fusable, key=layers.index) if fusable else None
        if host is None:
            host = _Layer(node.name, [], "int8" if _runs_int8(node, data, g, t) else precision, 0, 0, 0, {}, [])
            layers.append(host)
        host.kinds.append(node.op)
        host.macs += macs
        host.ops += ops
        host.const_bytes += sum(size(leaf) for i in node.inputs if i in g.leaves for leaf in g.leaves[i])
        for root, q in data:
            if root not in host.outputs:
                host.inputs[root] = size(root, q or root in held_int8)
            elif len(readers[root]) == 1:  # made and used only inside this layer: never stored
                host.outputs.remove(root)
        host.outputs += node.outputs
        producer.update({o: host for o in node.outputs})
    # An output nobody reads (OpenVINO MaxPool's indices) is never stored.
    return precision, [LayerCost(h.name, "+".join(h.kinds), h.precision, h.macs, h.ops, sum(h.inputs.values())
                                 + h.const_bytes + sum(size(o, o in held_int8) for o in h.outputs if o in readers))
                       for h in layers]


def _runs_int8(node: _Node, data: list[tuple[str, bool]], g: _Folded, t: dict[str, _Tensor]) -> bool:
    """Whether a node computes in int8: every data input read as int8 and, for a weighted op, int8 weights
    (a convolution kept in float behind a quantized tensor dequantizes it and computes in float)."""
    if not all(q for _, q in data):
        return False
    if node.op not in MAC_OPS or len(node.inputs) < 2 or node.inputs[1] not in g.leaves:
        return True
    stored = [t[leaf] for leaf in g.leaves[node.inputs[1]] if leaf in t]
    return any(w.itemsize == 1 and not w.is_float for w in stored)


def _stored_float(g: _Folded, t: dict[str, _Tensor]) -> str:
    """fp16 when every float weight of the MAC layers is stored in fp16, else fp32."""
    weights = [t[leaf] for n in g.real if n.op in MAC_OPS for i in n.inputs[1:] if i in g.leaves
               for leaf in g.leaves[i] if leaf in t]
    sizes = {w.itemsize for w in weights if w.is_float and w.numel > 1}
    return "fp16" if sizes == {2} else "fp32"


def _work(node: _Node, t: dict[str, _Tensor]) -> tuple[int, int]:
    """(MACs, ops) of one node."""
    out, data = t.get(node.outputs[0]), t.get(node.inputs[0])
    out_numel = out.numel if out else 0
    if node.op in MAC_OPS:
        weight = t.get(node.inputs[1])
        if weight is None or weight.shape is None:
            return 0, 0
        if node.op in CONVOLUTIONS | TRANSPOSED_CONVOLUTIONS:
            # MACs per output (per input, transposed) element: the weight's size over its leading channel
            # dims, i.e. Cin/groups x kernel (ONNX Conv: [Cout, Cin/g, k...]; OpenVINO GroupConvolution: [g, ...]).
            lead = 2 if node.op.startswith("Group") else 1
            per = weight.numel // max(math.prod(weight.shape[:lead]), 1)
            n = (data.numel if data else 0) if node.op in TRANSPOSED_CONVOLUTIONS else out_numel
            macs = n * per
        else:
            a = data
            if a is None or a.shape is None:
                return 0, 0
            transposed = node.attrs.get("transA") or node.attrs.get("transpose_a")
            k = a.shape[-2] if transposed and len(a.shape) > 1 else a.shape[-1]
            macs = out_numel * k
        return macs, 2 * macs
    if node.op in ELEMENTWISE:
        return 0, out_numel
    if node.op in WINDOWED:
        kernel = node.attrs.get("kernel_shape") or node.attrs.get("kernel") or [1]
        return 0, out_numel * math.prod(kernel)
    if node.op in REDUCTIONS:
        return 0, data.numel if data else 0
    return 0, 0


# ---------------------------------------------------------------- the roofline on a device

@dataclasses.dataclass(frozen=True)
class Roofline:
    """What an estimate divides by on one device and engine."""

    device: str
    engine: str
    bandwidth_gbps: float
    peaks_tops: dict[str, float]       # precision -> dense TOPS (TFLOPS for floats)
    efficiency: dict[str, Efficiency]  # precision -> factors

    def layer_ms(self, precision: str, ops: float, nbytes: float) -> tuple[float, str]:
        """Estimated milliseconds of one layer and what bounds it."""
        e = self.efficiency[precision]
        compute = ops / (self.peaks_tops[precision] * 1e12 * e.compute)
        memory = nbytes / (self.bandwidth_gbps * 1e9 * e.memory)
        return (max(compute, memory) + e.overhead_us * 1e-6) * 1e3, "compute" if compute >= memory else "memory"


def device_roofline(device: Device, precisions: Sequence[str], engine: str | None = None,
                    efficiency: dict[str, Efficiency] | None = None) -> Roofline:
    """The peaks, bandwidth and efficiency factors of a device profile for `precisions` on `engine`
    (default: its main engine); `efficiency` replaces the profile's factors."""
    engine = engine or device.main_engine
    if engine not in device.compute:
        raise UserInputError(f"device {device.name} has no {engine!r} engine; it has {sorted(device.compute)}")
    unsupported = [p for p in precisions if p not in device.precisions]
    if unsupported:
        raise UserInputError(f"the graph has {'/'.join(unsupported)} layers; device {device.name} runs "
                             f"{', '.join(device.precisions)}")
    factors = {**device.efficiency, **(efficiency or {})}
    return Roofline(device.name, engine, device.memory.bandwidth_gbps,
                    {p: device.peak(p, engine) for p in precisions}, {p: factors[p] for p in precisions})


@dataclasses.dataclass(frozen=True)
class LayerEstimate:
    name: str
    op: str
    precision: str
    macs: int
    bytes: int
    bound: str  # "compute" | "memory"
    estimate_ms: float


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A roofline latency estimate: per layer and total, for one artifact on one device."""

    artifact: str
    batch: int
    roofline: Roofline
    layers: tuple[LayerEstimate, ...]

    @property
    def total_ms(self) -> float:
        return sum(layer.estimate_ms for layer in self.layers)

    def top(self, k: int | None = None) -> list[LayerEstimate]:
        """The `k` layers with the largest estimated time, largest first."""
        return sorted(self.layers, key=lambda layer: -layer.estimate_ms)[:k]

    def title(self) -> str:
        r = self.roofline
        return (f"latency {LABEL}: {Path(self.artifact).name} on {r.device} ({r.engine}), batch {self.batch}: "
                f"{self.total_ms:.3f} ms estimated over {len(self.layers)} layers")

    def rows(self, k: int | None = None) -> tuple[list[str], list[tuple]]:
        """Columns and formatted rows of the per-layer table (top `k`), every time labelled as an estimate."""
        total = self.total_ms or 1.0
        columns = ["layer", "op", "precision", "MMACs", "MB moved", "bound (estimate)", "estimate ms",
                   "estimate share %"]
        return columns, [(e.name, e.op, e.precision, f"{e.macs / 1e6:,.3f}", f"{e.bytes / 1e6:,.3f}", e.bound,
                          f"{e.estimate_ms:.4f}", f"{100.0 * e.estimate_ms / total:.1f}") for e in self.top(k)]

    def to_dict(self) -> dict[str, Any]:
        r = self.roofline
        return {"kind": "estimate", "method": "roofline: sum over fused layers of max(ops / (peak x compute), "
                                              "bytes / (bandwidth x memory)) + overhead_us",
                "artifact": self.artifact, "device": r.device, "engine": r.engine, "batch": self.batch,
                "estimate_total_ms": self.total_ms, "macs": sum(e.macs for e in self.layers),
                "bytes": sum(e.bytes for e in self.layers), "bandwidth_gbps": r.bandwidth_gbps,
                "peaks_tops": r.peaks_tops, "efficiency": {p: e.model_dump() for p, e in r.efficiency.items()},
                "layers": [dataclasses.asdict(e) for e in self.layers]}


def roofline(cost: GraphCost, device: Device, engine: str | None = None,
             efficiency: dict[str, Efficiency] | None = None) -> Estimate:
    """The estimate of a graph's cost on a device profile (with `efficiency` in place of its factors)."""
    r = device_roofline(device, sorted({layer.precision for layer in cost.layers}), engine, efficiency)
    layers = []
    for layer in cost.layers:
        ms, bound = r.layer_ms(layer.precision, layer.ops, layer.bytes)
        layers.append(LayerEstimate(layer.name, layer.op, layer.precision, layer.macs, layer.bytes, bound, ms))
    return Estimate(cost.artifact, cost.batch, r, tuple(layers))


def estimate(artifact: str | Path, device: str | Path | Device, *, batch: int | None = None, engine: str | None = None,
             precision: str | None = None) -> Estimate:
    """Roofline latency estimate of an exported graph (.onnx or OpenVINO .xml) on `device`: a profile name,
    a profile file, or a loaded profile. `precision` as in `graph_cost`."""
    if isinstance(device, (str, Path)):
        from edgeres.deploy.devices import load_device

        device = load_device(device)
    return roofline(graph_cost(artifact, batch, precision), device, engine)


# ---------------------------------------------------------------- calibration

def fit_efficiency(costs: Sequence[GraphCost], measured_ms: Sequence[float], device: Device,
                   engine: str | None = None) -> dict[str, Efficiency]:
    """Efficiency factors that make the estimates of `costs` on `device` match `measured_ms` (p50s) best:
    least squares on log(estimate / measured); compute per precision, memory and overhead shared."""
    import itertools

    from scipy.optimize import least_squares

    precisions = sorted({layer.precision for c in costs for layer in c.layers})
    if len(costs) != len(measured_ms) or len(costs) < len(precisions) + 2:
        raise UserInputError(f"fitting {len(precisions) + 2} factors needs at least as many measured graphs, "
                             f"one time each; got {len(costs)} graphs and {len(measured_ms)} times")
    if any(not (m > 0) for m in measured_ms):
        raise UserInputError(f"measured times must be positive milliseconds, got {list(measured_ms)}")
    r = device_roofline(device, precisions, engine)
    k, target = len(precisions), np.log(np.asarray(measured_ms, dtype=float))
    per_graph = [{p: np.array([(layer.ops / (r.peaks_tops[p] * 1e12), layer.bytes / (r.bandwidth_gbps * 1e9))
                               for layer in c.layers if layer.precision == p]).reshape(-1, 2)
                  for p in precisions} for c in costs]

    def predicted_ms(x: np.ndarray) -> np.ndarray:
        compute, memory, overhead = np.exp(x[:k]), np.exp(x[k]), np.exp(x[k + 1]) * 1e-6
        return np.array([sum(np.maximum(a[:, 0] / compute[i], a[:, 1] / memory).sum() + overhead * len(a)
                             for i, a in enumerate(g[p] for p in precisions)) for g in per_graph]) * 1e3

    # The ranges a profile accepts (edgeres.deploy.devices.Efficiency); above 1 means a peak or bandwidth
    # the profile understates (caches at batch 1, a turbo clock).
    low, high = np.array([1e-4] * k + [1e-3, 1e-2]), np.array([10.0] * k + [10.0, 1e4])
    starts = itertools.product(*[np.log([0.05, 0.5])] * k, np.log([0.3, 3.0]), np.log([3.0, 30.0]))
    best = min((least_squares(lambda x: np.log(predicted_ms(x)) - target, np.array(x0),
                              bounds=(np.log(low), np.log(high))) for x0 in starts), key=lambda res: res.cost)
    factors = np.clip(np.exp(best.x), low, high)  # exp(log(10)) may round past the bound a profile accepts
    return {p: Efficiency(compute=float(factors[i]), memory=float(factors[k]), overhead_us=float(factors[k + 1]))
            for i, p in enumerate(precisions)}



def pruning_roofline(device: str | Path | Device, precision: str = "int8") -> dict[str, float]:
    """The roofline of `device` as plain numbers, for latency-aware pruning (`PruneConfig(target="latency")`):
    effective ops/s and bytes/s (peaks times the profile's efficiency factors), per-layer overhead, element size."""
    if isinstance(device, (str, Path)):
        from edgeres.deploy.devices import load_device

        device = load_device(device)
    r = device_roofline(device, [precision])
    e = r.efficiency[precision]
    return {"ops_per_s": r.peaks_tops[precision] * 1e12 * e.compute, "bytes_per_s": r.bandwidth_gbps * 1e9 * e.memory,
            "overhead_s": e.overhead_us * 1e-6, "element_bytes": {"int8": 1, "fp16": 2}.get(precision, 4)}
