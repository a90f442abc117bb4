"""INT8 choices an optimizer can search over (ExportConfig.int8_preset / int8_per_channel / int8_method):
refused when unknown, applied by both backends, and recorded as what was actually used."""
import json

import numpy as np
import onnx
import pytest

from edgeres.artifacts import read_json
from edgeres.errors import UserInputError
from edgeres.export import ExportConfig, export_checkpoint
from edgeres.export.onnx.quantize import QUANT_KEY


def _int8(doc, fmt):
    (entry,) = [a for a in doc["artifacts"] if a["format"] == fmt and a["precision"] == "int8"]
    return entry["quantization"]


def _onnx_quantization(path):
    """(zero points of every activation QuantizeLinear, scales of every weight DequantizeLinear)."""
    from onnx import TensorProto, numpy_helper

    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    zero_points, weight_scales = [], []
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            zero_points.append(numpy_helper.to_array(inits[node.input[2]]))
        data = inits.get(node.input[0])
        if node.op_type == "DequantizeLinear" and data is not None and data.data_type == TensorProto.INT8 \
                and len(data.dims) > 1:
            weight_scales.append(numpy_helper.to_array(inits[node.input[1]]))
    assert zero_points and weight_scales
    return zero_points, weight_scales


def _asymmetric_fake_quantizes(xml):
    """Names of activation FakeQuantize ops whose range is neither [0, high] nor NNCF's signed symmetric one."""
    import openvino as ov

    found, activations = [], 0
    for op in ov.Core().read_model(xml).get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        if op.input(0).get_source_output().get_node().get_type_name() in ("Constant", "Convert"):
            continue  # a weight's
        activations += 1
        low, high = (op.input(i).get_source_output().get_node().get_data() for i in (1, 2))
        levels = op.get_levels()
        symmetric = -high * (levels // 2) / (levels // 2 - 1)
        if not (np.allclose(low, 0) or np.allclose(low, symmetric, rtol=1e-4)):
            found.append(op.get_friendly_name())
    assert activations
    return found


@pytest.mark.parametrize("bad, field", [
    (dict(int8_preset="fast"), "int8_preset"),
    (dict(int8_preset="Performance"), "int8_preset"),
    (dict(int8_per_channel="yes"), "int8_per_channel"),
    (dict(int8_method="kl"), "int8_method"),
    (dict(int8_method=["minmax"]), "int8_method"),
])
def test_bad_int8_options_are_refused(bad, field):
    with pytest.raises(UserInputError, match=field) as info:
        ExportConfig(**bad)
    assert repr(next(iter(bad.values()))) in str(info.value)


def test_cli_refuses_a_bad_preset_in_one_line(edgeres, tmp_path):
    code, out = edgeres("export", tmp_path / "ckpt", "--precision", "int8", "--int8-preset", "fast")
    assert code == 2
    assert "int8_preset" in out and "'performance'" in out and "Traceback" not in out


@pytest.fixture(scope="module")
def default_onnx(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    return out, export_checkpoint(tiny_checkpoint, out, ExportConfig(formats=("onnx",), precisions=("int8",),
                                                                     calib_size=32))


@pytest.fixture(scope="module")
def performance_per_tensor(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("performance")
    config = ExportConfig(formats=("onnx", "openvino"), precisions=("int8",), calib_size=32,
                          int8_preset="performance", int8_per_channel=False, int8_method="percentile")
    return out, export_checkpoint(tiny_checkpoint, out, config)


def test_onnx_default_is_mixed_per_channel(default_onnx):
    out, doc = default_onnx
    record = _int8(doc, "onnx")
    assert record["preset"] == "mixed" and record["symmetric"] == {"activations": False, "weights": True}
    assert record["per_channel"] is True and record["method"] == "minmax"
    zero_points, weight_scales = _onnx_quantization(out / "model.int8.onnx")
    assert any(np.any(z != 0) for z in zero_points)
    assert any(s.size > 1 for s in weight_scales)


def test_onnx_performance_per_tensor(performance_per_tensor):
    out, doc = performance_per_tensor
    assert doc["failed"] == []
    record = _int8(doc, "onnx")
    assert record["preset"] == "performance" and record["symmetric"] == {"activations": True, "weights": True}
    assert record["per_channel"] is False and record["method"] == "percentile"
    assert read_json(out / "export.json")["artifacts"][0]["quantization"]["preset"] == "performance"
    embedded = {p.key: p.value for p in onnx.load(str(out / "model.int8.onnx")).metadata_props}
    assert json.loads(embedded[QUANT_KEY])["preset"] == "performance"  # the file itself says so too
    zero_points, weight_scales = _onnx_quantization(out / "model.int8.onnx")
    assert all(np.all(z == 0) for z in zero_points)
    assert all(s.ndim == 0 for s in weight_scales)


def test_openvino_performance_is_symmetric_and_says_what_does_not_apply(performance_per_tensor):
    out, doc = performance_per_tensor
    record = _int8(doc, "openvino")
    assert record["preset"] == "performance" and record["symmetric"]["activations"] is True
    assert record["per_channel"] is True  # NNCF's, whatever int8_per_channel asked
    assert set(record["not_applied"]) == {"int8_per_channel", "int8_method"}
    assert _asymmetric_fake_quantizes(out / "model.int8.xml") == []


def test_cli_mixed_preset_reaches_openvino_and_its_record(edgeres, tiny_checkpoint, tmp_path):
    code, out = edgeres("export", tiny_checkpoint, "--to", "openvino", "--precision", "int8", "--calib-size", "32",
                        "--int8-preset", "mixed", "--int8-per-tensor", "--out", tmp_path)
    assert code == 0, out
    # NNCF's own progress bars stay out of the user's terminal (they show with --verbose)
    assert "Statistics collection" not in out and "Fast Bias correction" not in out, out
    doc = read_json(tmp_path / "export.json")
    assert doc["config"]["int8_preset"] == "mixed" and doc["config"]["int8_per_channel"] is False
    record = _int8(doc, "openvino")
    assert record["preset"] == "mixed" and record["symmetric"]["activations"] is False
    assert _asymmetric_fake_quantizes(tmp_path / "model.int8.xml")
