"""OpenVINO export, NNCF INT8 quantization and the OpenVINO Runner, on tiny models at 32x32."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import openvino as ov
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeres import models
from edgeres.checkpoint import ModelMeta
from edgeres.errors import UserInputError
from edgeres.export.openvino.convert import export_openvino
from edgeres.export.openvino.quantize import (
    find_attention,
    quantize_openvino,
    quantize_openvino_with_accuracy_control,
)
from edgeres.export.validate import TOLERANCES, compare_outputs, judge
from edgeres.runtime import load
from edgeres.runtime.openvino import execution_precision

IMG, CLASSES = 32, 10
SHA = "ab" * 32


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten classes, each a fixed smooth pattern, plus noise: learnable in a few dozen steps."""
    templates = torch.from_numpy(np.random.default_rng(0).standard_normal((CLASSES, 3, 4, 4)).astype(np.float32))
    templates = F.interpolate(templates, size=(IMG, IMG), mode="bilinear", align_corners=False)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = templates.numpy()[y] + 0.7 * rng.standard_normal((n, 3, IMG, IMG)).astype(np.float32)
    return x.astype(np.float32), y


def _train(name: str, steps: int = 30) -> nn.Module:
    torch.manual_seed(0)
    model = models.create(name, num_classes=CLASSES, in_chans=3)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = _data(steps * 16, seed=1)
    for i in range(0, len(x), 16):
        loss = F.cross_entropy(model(torch.from_numpy(x[i:i + 16])), torch.from_numpy(y[i:i + 16]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _meta(name: str) -> ModelMeta:
    return ModelMeta(arch=name, num_classes=CLASSES, img_size=IMG, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                     class_names=[f"c{i}" for i in range(CLASSES)], metrics={"top1": 0.5})


def _torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def trained() -> dict[str, nn.Module]:
    return {name: _train(name) for name in ("test_se_resnet", "test_simam_resnet")}


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return _data(48, seed=2)[0]


@pytest.fixture(scope="module")
def irs(trained, tmp_path_factory) -> dict[str, object]:
    """Float and INT8 IRs of both models, exported once; records keyed like the paths."""
    out = tmp_path_factory.mktemp("ov")
    calib = [_data(32, seed=3)[0], _data(32, seed=4)[0]]
    found = {}
    exports = {"fp32": {}, "static": {"dynamic_batch": False}, "fp16": {"precision": "fp16"}}
    for name, model in trained.items():
        for tag, kw in exports.items() if name == "test_se_resnet" else [("fp32", {})]:
            path = out / f"{name}.{tag}.xml"
            found[f"{name}.{tag}"] = (path, export_openvino(model, _meta(name), path, source_sha256=SHA, **kw))
        for ignore in (True, False):
            path = out / f"{name}.int8.{ignore}.xml"
            record = quantize_openvino(found[f"{name}.fp32"][0], calib, path, ignored_attention=ignore)
            found[f"{name}.int8.{ignore}"] = (path, record)
    return found


@pytest.mark.parametrize("key", ["test_se_resnet.fp32", "test_se_resnet.static", "test_simam_resnet.fp32"])
def test_fp32_export_matches_torch(irs, trained, batch, key):
    path, record = irs[key]
    runner = load(path, precision="fp32")
    x = batch if record["dynamic_batch"] else batch[:1]
    assert judge(compare_outputs(_torch(trained[key.split(".")[0]], x), runner(x)), TOLERANCES["fp32"]) == []
    assert runner.info.precision == "fp32"
    assert runner.info.input_shape == ((None if record["dynamic_batch"] else 1), 3, IMG, IMG)
    assert record["input_shape"] == list(runner.info.input_shape)


def test_fp16_weights_match_torch_and_are_reported(irs, trained, batch):
    path, record = irs["test_se_resnet.fp16"]
    runner = load(path, precision="fp32")
    assert record["precision"] == "fp16"
    assert runner.info.precision == "fp16-weights/fp32"
    assert judge(compare_outputs(_torch(trained["test_se_resnet"], batch), runner(batch)), TOLERANCES["fp16"]) == []


def test_metadata_round_trips_through_the_xml_alone(irs, tmp_path):
    path, record = irs["test_simam_resnet.fp32"]
    runner = load(path, threads=1)
    assert runner.meta == _meta("test_simam_resnet")
    assert runner.info.extra["export_source_sha256"] == SHA == record["source_sha256"]
    assert runner.info.threads == 1 and runner.info.backend == "openvino"
    assert record["openvino_version"] == ov.get_version()
    assert sorted(p.name for p in path.parent.glob("test_simam_resnet.fp32*")) == [
        "test_simam_resnet.fp32.bin", "test_simam_resnet.fp32.xml"]
    int8_runner = load(irs["test_simam_resnet.int8.True"][0])
    assert int8_runner.meta == runner.meta
    assert int8_runner.info.extra["export_source_sha256"] == SHA


def test_runner_reports_what_executes(irs):
    fp32 = load(irs["test_se_resnet.fp32"][0], precision="fp32")
    assert fp32.info.extra["inference_precision_hint"] == "f32"
    int8 = load(irs["test_se_resnet.int8.True"][0], precision="int8")
    # The float layers of an INT8 IR run in bf16 on CPUs with native bf16: "int8/bf16" names that.
    hint = int8.info.extra["inference_precision_hint"]
    assert int8.info.precision == {"f32": "int8", "bf16": "int8/bf16", "f16": "int8/fp16"}[hint]
    assert int8.info.extra["int8"]


@pytest.mark.parametrize("hint, flags, label", [
    ("f32", {}, "fp32"),
    ("bf16", {}, "bf16"),
    ("f32", {"fp16_weights": True}, "fp16-weights/fp32"),
    ("bf16", {"fp16_weights": True}, "fp16-weights/bf16"),
    ("f16", {"fp16_weights": True}, "fp16"),
    ("f32", {"int8": True}, "int8"),
    ("bf16", {"int8": True}, "int8/bf16"),
    ("f32", {"int8_weights": True}, "int8-weights/fp32"),
])
def test_precision_labels(hint, flags, label):
    args = {"int8": False, "fp16_weights": False, **flags}
    assert execution_precision(hint, **args) == label


@pytest.mark.parametrize("name", ["test_se_resnet", "test_simam_resnet"])
@pytest.mark.parametrize("ignore", [True, False])
def test_int8_agrees_with_fp32(irs, batch, name, ignore):
    fp32 = load(irs[f"{name}.fp32"][0], precision="fp32")(batch)
    path, record = irs[f"{name}.int8.{ignore}"]
    runner = load(path)
    assert runner.info.precision.split("/")[0] == "int8"  # "int8/bf16" on CPUs with native bf16
    assert record["calibration_samples"] == 64
    assert judge(compare_outputs(fp32, runner(batch)), TOLERANCES["int8"]) == []
    assert bool(record["ignored_attention"]) == ignore


_LOW_BIT = {"i8", "u8", "i4", "u4", "nf4", "f8e4m3", "f8e5m2"}


def _low_bit_weight(node) -> bool:
    """A low-bit constant, or a constant-only Convert/Subtract/Multiply chain dequantizing one."""
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_element_type().get_type_name() in _LOW_BIT
    if kind in ("Convert", "Subtract", "Multiply", "Reshape"):
        sources = [i.get_source_output().get_node() for i in node.inputs()]
        return (all(s.get_type_name() == "Constant" or _low_bit_weight(s) for s in sources)
                and any(_low_bit_weight(s) for s in sources))
    return False


def _from_quantizer(node) -> bool:
    return node.get_type_name() in ("FakeQuantize", "FakeConvert") or _low_bit_weight(node)


def _quantized(ir, names: set[str]) -> set[str]:
    """Those of `names` that read an input from a quantizer; refuses names the IR does not hold."""
    ops = {op.get_friendly_name(): op for op in ir.get_ops()}
    assert names <= set(ops), f"not in the IR: {sorted(names - set(ops))}"
    return {n for n in names if any(_from_quantizer(i.get_source_output().get_node()) for i in ops[n].inputs())}


@pytest.mark.parametrize("name", ["test_se_resnet", "test_simam_resnet"])
def test_ignored_attention_stays_float(irs, name):
    sites = find_attention(ov.Core().read_model(irs[f"{name}.fp32"][0]))
    kept = {n for site in sites for n in site["ignore"]}
    assert kept and set(irs[f"{name}.int8.True"][1]["ignored_attention"]) == kept
    with_scope, without = (ov.Core().read_model(irs[f"{name}.int8.{flag}"][0]) for flag in (True, False))
    assert _quantized(with_scope, kept) == set(), "a FakeQuantize feeds an attention op meant to stay float"
    # The same ops are quantized when nothing keeps them float: the scope is what protects them.
    for site in sites:
        assert _quantized(without, set(site["ignore"])), site


def test_attention_found_by_op_pattern(irs, trained):
    def convert(model):
        return ov.convert_model(model, example_input=torch.zeros(1, 3, 8, 8))

    se, simam = (find_attention(ov.Core().read_model(irs[f"{n}.fp32"][0]))
                 for n in ("test_se_resnet", "test_simam_resnet"))
    gates = sum(isinstance(m, nn.Sigmoid) for m in trained["test_se_resnet"].modules())
    assert len(se) == gates > 0
    assert all(s["kind"] == "sigmoid-gate" and s["op_types"] == ["Multiply", "Sigmoid"] for s in se)
    assert len(simam) == sum(isinstance(m, nn.Sigmoid) for m in trained["test_simam_resnet"].modules())
    for site in simam:
        assert {"ReduceMean", "Subtract", "Power", "Divide", "Sigmoid", "Multiply"} <= set(site["op_types"])
        # The energy term and its sigmoid stay float; readers of the bias-less conv output do not.
        kept = set(site["ignore"])
        assert any("Power" in n for n in kept) and any("igmoid" in n for n in kept) and len(kept) < len(site["nodes"])
    assert find_attention(convert(models.create("test_resnet", num_classes=CLASSES).eval())) == []
    softmax = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Softmax(dim=1))
    assert [s["kind"] for s in find_attention(convert(softmax))] == ["softmax"]
    silu = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SiLU())  # an activation, not a gate
    assert find_attention(convert(silu)) == []


def test_accuracy_control_keeps_sensitive_layers_float(irs, trained, tmp_path):
    x, _ = _data(64, seed=5)
    labels = _torch(trained["test_se_resnet"], x).argmax(1)
    val = [(x[:32], labels[:32]), (x[32:], labels[32:])]
    out = tmp_path / "ac.int8.xml"
    record = quantize_openvino_with_accuracy_control(irs["test_se_resnet.fp32"][0], [x[:32]], val, out,
                                                     max_drop=0.0, max_reverted=2)
    assert record["validation_samples"] == 64
    ir = ov.Core().read_model(out)
    kept, reverted = set(record["ignored_attention"]), set(record["reverted_by_nncf"])
    assert kept and _quantized(ir, kept) == set(), "attention ops must stay float here too"
    assert _quantized(ir, reverted) == set(), "a layer NNCF reports as reverted still reads a quantizer"
    runner = load(out)
    assert runner.info.precision.split("/")[0] == "int8" and runner.meta == _meta("test_se_resnet")
    assert (runner(x)["logits"].argmax(1) == labels).mean() >= 0.9


def test_plain_openvino_loads_the_ir(irs, trained, batch):
    path, _ = irs["test_simam_resnet.fp32"]
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    logits = compiled({"input": batch})["logits"]
    assert (logits.argmax(1) == _torch(trained["test_simam_resnet"], batch).argmax(1)).all()


def test_runner_reads_writeable_and_read_only_batches_alike(irs, batch):
    """A writeable batch is bound in place as a shared tensor, a read-only one copied by OpenVINO: the same logits,
    and a batch bound on one call does not linger into the next (dynamic batch: the shapes differ too)."""
    runner = load(irs["test_se_resnet.fp32"][0], precision="fp32")
    frozen = batch.copy()
    frozen.flags.writeable = False
    first = runner(batch.copy())["logits"]
    other = runner(batch[:1][:, :, ::-1].copy())["logits"]
    again = runner(frozen)["logits"]
    assert other.shape[0] == 1 and not np.allclose(other[0], first[0])
    np.testing.assert_array_equal(first, again)


def test_wrong_input_gives_a_clear_error(irs):
    dynamic, static = load(irs["test_se_resnet.fp32"][0]), load(irs["test_se_resnet.static"][0])
    with pytest.raises(UserInputError, match=r"\(N, 3, 32, 32\)"):
        dynamic(np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(UserInputError, match=r"\(1, 3, 32, 32\)"):
        static(np.zeros((2, 3, IMG, IMG), np.float32))
    with pytest.raises(UserInputError, match="float32"):
        dynamic(np.zeros((1, 3, IMG, IMG)))


def test_bad_user_input_is_refused(irs, trained, tmp_path):
    model, fp32 = trained["test_se_resnet"], irs["test_se_resnet.fp32"][0]
    for kwargs in ({"precision": "int8"}, {"precision": "fp64"}):
        with pytest.raises(UserInputError, match="precision"):
            export_openvino(model, _meta("x"), tmp_path / "m.xml", **kwargs)
    with pytest.raises(UserInputError, match=r"\.xml"):
        export_openvino(model, _meta("x"), tmp_path / "m.onnx")
    with pytest.raises(UserInputError, match="quantized IR"):
        load(fp32, precision="int8")
    with pytest.raises(UserInputError, match="precision"):
        load(fp32, precision="int4")
    with pytest.raises(UserInputError, match="no such file"):
        load(tmp_path / "missing.xml", backend="openvino")
    plain = tmp_path / "plain.xml"
    ov.save_model(ov.convert_model(nn.Conv2d(3, 2, 1), example_input=torch.zeros(1, 3, 4, 4)), plain)
    with pytest.raises(UserInputError, match="not an edgeres export"):
        load(plain)
    (tmp_path / "broken.xml").write_text("<net>")
    (tmp_path / "broken.bin").write_bytes(b"")
    with pytest.raises(UserInputError, match="cannot read this IR"):
        load(tmp_path / "broken.xml")
    with pytest.raises(UserInputError, match="already quantized"):
        quantize_openvino(irs["test_se_resnet.int8.True"][0], [np.zeros((1, 3, IMG, IMG), np.float32)], tmp_path / "q.xml")
    with pytest.raises(UserInputError, match=r"\(N, 3, 32, 32\)"):
        quantize_openvino(fp32, [np.zeros((4, 3, 8, 8), np.float32)], tmp_path / "q.xml")
    with pytest.raises(UserInputError, match="max_drop"):
        quantize_openvino_with_accuracy_control(fp32, [], [], tmp_path / "q.xml", max_drop=1.5)


def test_importing_the_backend_modules_needs_no_vendor_library():
    # The runtime module first: it imports the export package, which must not import it back.
    code = ("import sys, edgeres.runtime.openvino, edgeres.export.openvino; "
            "print(sorted({'openvino', 'nncf'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
