"""The roofline latency estimate: exact MACs and bytes of hand-built graphs, MACs of real exports against
edgeres's own counter, INT8 byte savings, the roofline's bound, the calibration fit, and the CLI."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeres.bench.profile import count_macs
from edgeres.checkpoint import ModelMeta
from edgeres.deploy.devices import Device, Efficiency
from edgeres.deploy.estimate import fit_efficiency, graph_cost, roofline
from edgeres.errors import UserInputError
from edgeres.models import create


def _init(name: str, *shape: int, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(shape, dtype), name)


def _save(tmp_path, nodes, inputs, outputs, initializers, name="g.onnx"):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def conv_gemm(tmp_path):
    """[N,3,16,16] -> Conv 3x3 s2 (8) -> Relu -> depthwise Conv 3x3 -> GlobalAveragePool -> Flatten -> Gemm (10)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4,
                              strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], name="dw", kernel_shape=[3, 3], pads=[1] * 4, group=8),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "W3", "B3"], ["y"], name="fc", transB=1)]
    inits = [_init("W1", 8, 3, 3, 3), _init("B1", 8), _init("W2", 8, 1, 3, 3), _init("W3", 10, 8), _init("B3", 10)]
    return _save(tmp_path, nodes, [x], [y], inits)


def _device(bandwidth_gbps=20.0, fp32=1.0, int8=4.0, efficiency=None) -> Device:
    """A CPU profile (edgeres.deploy.devices' schema) with these peaks (TOPS; int8=None: none) and bandwidth."""
    peaks = {"fp32": fp32, **({"int8": int8} if int8 else {})}
    factors = efficiency or {p: Efficiency(compute=0.5, memory=0.5, overhead_us=2.0) for p in peaks}
    return Device.model_validate({
        "name": "test-device", "description": "a profile for tests", "kind": "cpu", "preset": "x86-cpu",
        "memory": {"size_gb": 4, "bandwidth_gbps": bandwidth_gbps}, "compute": {"cpu": peaks},
        "cpu": {"model": "test", "cores": 2}, "precisions": list(peaks), "dla_cores": 0, "software": {},
        "efficiency": {p: e.model_dump() for p, e in factors.items()}})


def test_conv_gemm_macs_and_bytes_are_exact(conv_gemm):
    cost = graph_cost(conv_gemm)
    layers = {layer.name: layer for layer in cost.layers}
    # conv1: 8x8x8 outputs x (3 in x 3x3); depthwise: 8x8x8 x (1 x 3x3); fc: 10 outputs x 8 inputs.
    assert layers["conv1"].macs == 8 * 8 * 8 * 27
    assert layers["dw"].macs == 8 * 8 * 8 * 9
    assert layers["fc"].macs == 10 * 8
    assert cost.macs == 8 * 8 * 8 * 36 + 80
    # The Relu runs inside conv1's kernel: its input never goes to memory.
    assert layers["conv1"].op == "Conv+Relu" and "relu1" not in layers
    # conv1 reads its input and weights+bias and writes its (relu'd) output, all fp32.
    assert layers["conv1"].bytes == 4 * (3 * 16 * 16 + 8 * 27 + 8 + 8 * 8 * 8)
    assert layers["conv1"].ops == 2 * 8 * 8 * 8 * 27 + 8 * 8 * 8
    assert graph_cost(conv_gemm, batch=3).macs == 3 * cost.macs


def test_matmul_and_conv_transpose_macs(tmp_path):
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 4, 5])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("m", "t")]
    nodes = [helper.make_node("MatMul", ["a", "B"], ["m"], name="mm"),
             helper.make_node("ConvTranspose", ["x", "W"], ["t"], name="up", kernel_shape=[2, 2], strides=[2, 2])]
    cost = graph_cost(_save(tmp_path, nodes, [a, x], outs, [_init("B", 5, 6), _init("W", 8, 4, 2, 2)]))
    layers = {layer.name: layer.macs for layer in cost.layers}
    assert layers == {"mm": 2 * 4 * 6 * 5, "up": 8 * 8 * 8 * (4 * 2 * 2)}


def test_qdq_conv_is_int8_only_with_int8_weights(tmp_path):
    """x -> Q -> DQ feeds a conv with int8 weights (runs int8) and one with float weights (dequantizes, runs fp32)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y1", "y2")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["Wq", "s"], ["Wd"], name="dqw"),
             helper.make_node("Conv", ["xd", "Wd"], ["y1"], name="conv_int8"),
             helper.make_node("Conv", ["xd", "Wf"], ["y2"], name="conv_float")]
    inits = [_init("s", dtype=np.float32), _init("z", dtype=np.uint8), _init("Wq", 4, 4, 1, 1, dtype=np.int8),
             _init("Wf", 4, 4, 1, 1)]
    layers = {layer.name: layer for layer in graph_cost(_save(tmp_path, nodes, [x], outs, inits)).layers}
    assert layers["conv_int8"].precision == "int8" and layers["conv_float"].precision == "fp32"
    # Both read the int8 input (256 B); int8 weights 16 B + scale 4 B, float weights 64 B; fp32 outputs 1024 B.
    assert layers["conv_int8"].bytes == 256 + 16 + 4 + 1024
    assert layers["conv_float"].bytes == 256 + 64 + 1024


@pytest.mark.parametrize("arch, size", [("test_resnet", 32), ("test_se_resnet", 32), ("test_yolo", 64)])
def test_export_macs_match_count_macs(arch, size, tmp_path):
    from edgeres.export.onnx import export_onnx

    model = create(arch, num_classes=5).eval()
    meta = ModelMeta(arch=arch, num_classes=5, img_size=size,
                     task="detection" if arch == "test_yolo" else "classification")
    export_onnx(model, meta, tmp_path / "m.onnx", validate=False)
    expected = count_macs(model, (3, size, size))
    assert graph_cost(tmp_path / "m.onnx").macs == pytest.approx(expected, rel=0.01)


@pytest.fixture(scope="module")
def resnet_exports(tmp_path_factory):
    """test_resnet at 32x32: ONNX fp32 + INT8 QDQ, OpenVINO fp32 + INT8."""
    from edgeres.export.onnx import export_onnx, quantize_onnx
    from edgeres.export.openvino import export_openvino, quantize_openvino

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("estimate")
    model = create("test_resnet", num_classes=10).eval()
    meta = ModelMeta(arch="test_resnet", num_classes=10, img_size=32)
    calib = [np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)]
    export_onnx(model, meta, out / "m.onnx", validate=False)
    quantize_onnx(out / "m.onnx", out / "m.int8.onnx", calib)
    export_openvino(model, meta, out / "m.xml")
    quantize_openvino(out / "m.xml", calib, out / "m.int8.xml", subset_size=8)
    return {"macs": count_macs(model, (3, 32, 32)), **{k: out / f"m.{k}" for k in ("onnx", "int8.onnx", "xml",
                                                                                  "int8.xml")}}


@pytest.mark.parametrize("fp32, int8", [("onnx", "int8.onnx"), ("xml", "int8.xml")])
def test_int8_graph_moves_fewer_bytes(resnet_exports, fp32, int8):
    f, q = graph_cost(resnet_exports[fp32]), graph_cost(resnet_exports[int8])
    assert f.macs == q.macs == pytest.approx(resnet_exports["macs"], rel=0.01)
    assert {layer.precision for layer in f.layers} == {"fp32"}
    int8_convs = [layer for layer in q.layers if layer.precision == "int8" and layer.macs]
    assert len(int8_convs) >= 5  # the convolutions are quantized (the classifier may stay float)
    assert q.bytes < 0.6 * f.bytes
    # The same conv moves fewer bytes in int8 than in fp32.
    by_macs = {layer.macs: layer.bytes for layer in f.layers if layer.macs}
    assert all(layer.bytes < by_macs[layer.macs] for layer in int8_convs if layer.macs in by_macs)


def test_openvino_ir_and_onnx_agree(resnet_exports):
    onnx_cost, ir_cost = graph_cost(resnet_exports["onnx"]), graph_cost(resnet_exports["xml"])
    assert ir_cost.macs == onnx_cost.macs
    assert ir_cost.bytes == pytest.approx(onnx_cost.bytes, rel=0.05)


def test_bound_follows_bandwidth(conv_gemm):
    cost = graph_cost(conv_gemm)
    starved, flooded = roofline(cost, _device(bandwidth_gbps=1e-3)), roofline(cost, _device(bandwidth_gbps=1e6))
    assert {e.bound for e in starved.layers} == {"memory"}
    assert {e.bound for e in flooded.layers} == {"compute"}
    assert starved.total_ms > 100 * flooded.total_ms
    # Per layer: max(ops / (peak x compute), bytes / (bandwidth x memory)) + overhead.
    conv = next(e for e in starved.layers if e.name == "conv1")
    layer = next(layer for layer in cost.layers if layer.name == "conv1")
    assert conv.estimate_ms == pytest.approx((layer.bytes / (1e-3 * 1e9 * 0.5) + 2e-6) * 1e3)


def test_int8_graph_on_a_device_without_int8_is_refused(resnet_exports):
    with pytest.raises(UserInputError, match="int8"):
        roofline(graph_cost(resnet_exports["int8.onnx"]), _device(int8=None))


def test_fit_recovers_the_factors_it_was_generated_with(conv_gemm, resnet_exports):
    truth = {"fp32": Efficiency(compute=0.3, memory=0.8, overhead_us=5.0),
             "int8": Efficiency(compute=0.15, memory=0.8, overhead_us=5.0)}
    device = _device(bandwidth_gbps=2.0, fp32=0.05, int8=0.2, efficiency=truth)
    costs = [graph_cost(p, batch=b) for p in (conv_gemm, resnet_exports["onnx"], resnet_exports["int8.onnx"])
             for b in (1, 4)]
    measured = [roofline(c, device).total_ms for c in costs]
    fitted = fit_efficiency(costs, measured, _device(bandwidth_gbps=2.0, fp32=0.05, int8=0.2))
    again = [roofline(c, device, efficiency=fitted).total_ms for c in costs]
    assert again == pytest.approx(measured, rel=0.01)
    assert fitted["fp32"].compute == pytest.approx(0.3, rel=0.05)
    assert fitted["fp32"].overhead_us == pytest.approx(5.0, rel=0.05)
    with pytest.raises(UserInputError, match="at least"):
        fit_efficiency(costs[:2], measured[:2], device)


def test_bad_artifacts_are_refused(tmp_path, conv_gemm):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    (tmp_path / "model.engine").write_bytes(b"x")
    for path, words in ((tmp_path / "missing.onnx", "no such file"), (tmp_path / "junk.onnx", "ONNX"),
                        (tmp_path / "model.engine", ".onnx")):
        with pytest.raises(UserInputError, match=words):
            graph_cost(path)
    with pytest.raises(UserInputError, match="precision"):
        graph_cost(conv_gemm, precision="int8")



def test_cli_prints_a_labelled_estimate_and_refuses_bad_input(edgeres, conv_gemm, resnet_exports, tmp_path):
    code, out = edgeres("estimate", conv_gemm, "--device", "jetson-nano", "--layers", "2",
                        "--json", tmp_path / "e.json")
    assert code == 0, out
    assert "estimate" in out and "estimated total" in out
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["kind"] == "estimate" and len(saved["layers"]) == 4 and saved["estimate_total_ms"] > 0
    for args, word in (((tmp_path / "missing.onnx", "--device", "jetson-nano"), "no such file"),
                       ((conv_gemm, "--device", "no-such-device"), "no-such-device"),
                       ((resnet_exports["int8.onnx"], "--device", "jetson-nano"), "int8")):
        code, out = edgeres("estimate", *args)
        assert code == 2 and "Traceback" not in out and word in out, out
