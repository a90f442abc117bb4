"""ONNX export, the ONNX Runtime runner and INT8 QDQ quantization, on small ResNets with and without attention."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torchvision.models.resnet import BasicBlock, ResNet
from torch import nn

from edgeres.checkpoint import ModelMeta
from edgeres.errors import UserInputError
from edgeres.export.onnx import export_onnx, find_attention_nodes, quantize_onnx, read_onnx_meta
from edgeres.export.validate import Tolerance, compare_outputs, judge
from edgeres.models import create, list_models, model_task, variant_args
from edgeres.runtime import load
from edgeres.runtime.base import run_any_batch

IMG = 32
# Random-weight ResNets have near-tied logits, so a top-1 flip there is mostly a tie broken by rounding
# (one flip came with a max abs logit difference of 0.009): the logits' shape (cosine) is checked tightly and
# top-1 loosely. Measured (ResNet-10, 32x32, 32 calibration / 64 held-out samples, 3 seeds): cosine >= 0.999
# and top-1 0.95-1.0 in both the cpu and the tensorrt mode, with and without SE / SimAM.
INT8_RANDOM_WEIGHTS = Tolerance(max_abs_diff=None, min_cosine=0.995, min_top1_agreement=0.8)


class SE(nn.Module):
    """Squeeze-and-excitation, written here so the tests do not depend on the model zoo."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, channels // 8, 1), nn.Conv2d(channels // 8, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class SimAM(nn.Module):
    def forward(self, x):
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        return x * torch.sigmoid(d / (4 * (d.sum(dim=(2, 3), keepdim=True) / n + 1e-4)) + 0.5)


def resnet(attn: str | None = None) -> nn.Module:
    """A torchvision ResNet-10 (BasicBlock, one per stage, 10 classes), attention after layer1 and layer3."""
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    if attn:
        for name, channels in (("layer1", 64), ("layer3", 256)):
            getattr(model, name).add_module(attn, SE(channels) if attn == "se" else SimAM())
    return model.eval()


def make_meta(arch: str = "resnet10") -> ModelMeta:
    return ModelMeta(arch=arch, num_classes=10, img_size=IMG, class_names=[f"c{i}" for i in range(10)],
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def batches(n: int, size: int = 8, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((size, 3, IMG, IMG)).astype(np.float32) for _ in range(n)]


def torch_out(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    model, path = resnet(), tmp_path_factory.mktemp("onnx") / "model.onnx"
    record = export_onnx(model, make_meta(), path, source_sha256="ab" * 32)
    return model, path, record


@pytest.fixture(scope="module")
def plain_int8(plain, tmp_path_factory):
    _, path, _ = plain
    out = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    return out, quantize_onnx(path, out, batches(4), mode="cpu")


def test_export_is_checker_clean_with_a_full_record(plain):
    _, path, record = plain
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert record["opset"] == 17 and record["dynamic_batch"] and record["exporter"] == "torchscript"
    assert record["input_shape"] == [None, 3, IMG, IMG]
    assert record["simplifier"]["name"] == "onnxslim" and record["simplifier"]["version"]
    assert 0 < record["nodes"] <= record["nodes_before_simplify"]
    assert set(record["versions"]) == {"torch", "onnx"}
    assert record["validation"]["top1_agreement"] == 1.0 and record["validation"]["samples"] == 2


def test_metadata_round_trips(plain):
    _, path, _ = plain
    assert read_onnx_meta(path).to_dict() == make_meta().to_dict()
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["class_names"]) == [f"c{i}" for i in range(10)]
    assert json.loads(props["mean"]) == [0.5] * 3 and json.loads(props["std"]) == [0.25] * 3
    assert json.loads(props["input_size"]) == [3, IMG, IMG]
    assert props["source_sha256"] == "ab" * 32


def test_dynamic_batch_runner_matches_torch(plain):
    model, path, _ = plain
    runner = load(path, threads=1)
    assert (runner.info.backend, runner.info.precision, runner.info.threads) == ("onnxruntime", "fp32", 1)
    assert runner.info.input_shape == (None, 3, IMG, IMG)
    assert runner.meta.class_names == make_meta().class_names
    for size in (1, 5):
        x = batches(1, size, seed=size)[0]
        stats = compare_outputs(torch_out(model, x), runner(x))
        assert stats["top1_agreement"] == 1.0 and stats["max_abs_diff"] < 1e-4, stats


def test_static_batch(tmp_path):
    model = resnet()
    record = export_onnx(model, make_meta(), tmp_path / "static.onnx", dynamic_batch=False, batch_size=2)
    assert record["input_shape"] == [2, 3, IMG, IMG] and not record["dynamic_batch"]
    runner = load(tmp_path / "static.onnx")
    assert runner.info.input_shape == (2, 3, IMG, IMG)
    x = batches(1, 2)[0]
    assert compare_outputs(torch_out(model, x), runner(x))["max_abs_diff"] < 1e-4
    with pytest.raises(UserInputError, match=r"\(2, 3, 32, 32\)"):
        runner(batches(1, 3)[0])
    # Any batch through a fixed-batch runner: chunks of its size, the last one padded, outputs by name.
    x5 = batches(1, 5, seed=3)[0]
    outputs = run_any_batch(runner, x5)
    assert list(outputs) == ["logits"] and outputs["logits"].shape == (5, 10)
    np.testing.assert_allclose(outputs["logits"], torch_out(model, x5), rtol=0, atol=1e-4)


def test_wrong_input_is_refused_with_the_expected_shape(plain):
    runner = load(plain[1])
    with pytest.raises(UserInputError, match=r"input shape must be \(N, 3, 32, 32\) float32, got \(1, 3, 16, 16\)"):
        runner(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(UserInputError, match="float32"):
        runner(np.zeros((1, 3, IMG, IMG), np.float64))


def test_plain_onnxruntime_loads_the_export(plain):
    model, path, _ = plain
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"] and [o.name for o in session.get_outputs()] == ["logits"]
    x = batches(1, 3, seed=7)[0]
    plain_out = session.run(None, {"input": x})[0]
    np.testing.assert_allclose(plain_out, load(path)(x)["logits"], rtol=0, atol=1e-5)
    assert compare_outputs(torch_out(model, x), plain_out)["top1_agreement"] == 1.0


def test_foreign_onnx_and_wrong_precision_are_refused(plain, tmp_path):
    proto = onnx.load(str(plain[1]))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    with pytest.raises(UserInputError, match="not an edgeres ONNX export: metadata key 'edgeres' is missing"):
        load(tmp_path / "foreign.onnx")
    with pytest.raises(UserInputError, match="fp32 graph"):
        load(plain[1], precision="int8")


def test_fp16_graph_reports_fp16_and_takes_float32(tmp_path):
    """A half-precision graph (hand-built: fp16 input, weights and output) runs from float32 and says fp16."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((2, 3), 0.5, np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1)],
        "half", [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["batch", 2])], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "edgeres", json.dumps(ModelMeta(arch="half", num_classes=2, img_size=8).to_dict())
    onnx.save(proto, str(tmp_path / "half.onnx"))
    runner = load(tmp_path / "half.onnx")
    assert runner.info.precision == "fp16" and runner.info.input_shape == (None, 3, 8, 8)
    out = runner(np.ones((2, 3, 8, 8), np.float32))["logits"]
    assert out.dtype == np.float32 and np.allclose(out, 1.5)


def test_int8_qdq_agrees_with_fp32(plain, plain_int8):
    _, fp32_path, _ = plain
    path, record = plain_int8
    runner = load(path)
    assert runner.info.precision == "int8"
    assert record["calibration_samples"] == 32 and record["method"] == "minmax" and record["per_channel"]
    assert record["kept_in_float"] == [] and record["validation"]["samples"] == 8
    held_out = batches(1, 32, seed=99)[0]
    stats = compare_outputs(load(fp32_path)(held_out), runner(held_out))
    assert judge(stats, INT8_RANDOM_WEIGHTS) == [], stats


def test_bad_calibration_is_refused(plain, tmp_path):
    with pytest.raises(UserInputError, match="at least one batch"):
        quantize_onnx(plain[1], tmp_path / "q.onnx", [])
    with pytest.raises(UserInputError, match=r"calibration batch 0 must be a float32 NCHW array \(N, 3, 32, 32\)"):
        quantize_onnx(plain[1], tmp_path / "q.onnx", [np.zeros((2, 3, 8, 8), np.float32)])
    with pytest.raises(UserInputError, match="unknown quantization mode"):
        quantize_onnx(plain[1], tmp_path / "q.onnx", batches(1), mode="gpu")


def _float_edges_only(proto, kept: list[str]) -> bool:
    """True if no kept node reads a kept node's output through a Q/DQ pair."""
    producer = {out: node for node in proto.graph.node for out in node.output}
    nodes = {node.name: node for node in proto.graph.node}
    for name in kept:
        for tensor in nodes[name].input:
            dq = producer.get(tensor)
            if dq is not None and dq.op_type == "DequantizeLinear":
                q = producer.get(dq.input[0])
                if q is not None and q.op_type == "QuantizeLinear" and producer.get(q.input[0]) is not None \
                        and producer[q.input[0]].name in kept:
                    return False
    return True


@pytest.mark.parametrize("attn, expected_ops", [
    ("se", {"Sigmoid", "Mul"}),
    ("simam", {"ReduceMean", "Sub", "Pow", "ReduceSum", "Div", "Add", "Mul", "Sigmoid"}),
])
def test_attention_is_found_and_kept_in_float(attn, expected_ops, tmp_path):
    model = resnet(attn)
    export_onnx(model, make_meta(f"resnet10_{attn}"), tmp_path / "m.onnx")
    found = find_attention_nodes(onnx.load(str(tmp_path / "m.onnx")))
    ops = {node.name: node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert {ops[n] for n in found} == expected_ops
    assert sum(ops[n] == "Sigmoid" for n in found) == 2  # one gate per attention module, nothing else
    record = quantize_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", batches(2))
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    qops = {node.name: node.op_type for node in quantized.graph.node}
    kept = record["kept_in_float"]
    assert {qops[n] for n in kept} == expected_ops and len(kept) == len(found)
    assert _float_edges_only(quantized, kept)
    x = batches(1, 32, seed=5)[0]
    assert judge(compare_outputs(torch_out(model, x), load(tmp_path / "q.onnx")(x)), INT8_RANDOM_WEIGHTS) == []


def test_plain_resnet_has_no_attention(plain):
    assert find_attention_nodes(onnx.load(str(plain[1]))) == []


@pytest.mark.parametrize("name", [m for m in list_models("test_*") if model_task(m) == "classification"])
def test_model_zoo_tiny_variants_export(name, tmp_path):
    """Every tiny registered variant exports, matches torch, and has exactly its declared attention found."""
    model = create(name, num_classes=10, in_chans=3).eval()
    export_onnx(model, make_meta(name), tmp_path / "m.onnx")
    x = batches(1, 2)[0]
    assert compare_outputs(torch_out(model, x), load(tmp_path / "m.onnx")(x))["max_abs_diff"] < 1e-4
    proto = onnx.load(str(tmp_path / "m.onnx"))
    op_of = {node.name: node.op_type for node in proto.graph.node}
    found = {op_of[n] for n in find_attention_nodes(proto)}
    attn = variant_args(name).get("attn_layer")
    if attn == "se":
        assert found == {"Sigmoid", "Mul"}
    elif attn == "simam":
        assert {"Sigmoid", "Mul", "Sub", "Pow", "Div"} <= found
    else:
        assert found <= {"Softmax"}, found
