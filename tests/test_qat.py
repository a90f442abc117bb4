"""Quantization-aware training: a tiny SE-ResNet on 16x16 digits, fake-quantized by NNCF, fine-tuned one
short epoch, exported to INT8 IR and QDQ ONNX, and measured through the Runners."""
from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import onnx
import pytest
import torch

from edgeres import models, runtime
from edgeres.artifacts import read_json
from edgeres.checkpoint import ModelMeta, save_checkpoint
from edgeres.compress.qat import (
    QAT_ONNX,
    QAT_XML,
    QATConfig,
    fold_batchnorm,
    quantization_aware_training,
    recommend_qat,
)
from edgeres.data import DataConfig, load_data
from edgeres.errors import UserInputError
from edgeres.evaluate import predict
from edgeres.train.config import TrainConfig
from edgeres.train.loop import train

DATA = DataConfig("digits", img_size=16)
CALIB = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("qat") / "fp32"
    train(TrainConfig(model="test_se_resnet", data=DATA, out=str(out), epochs=2, lr=3e-3))
    return out


@pytest.fixture(scope="module")
def bundle():
    full = load_data(DATA)
    # A fifth of the training split keeps the fake-quantized epoch short; val and test stay whole.
    return dataclasses.replace(full, indices={**full.indices, "train": full.indices["train"][:256]})


@pytest.fixture(scope="module")
def qat(trained, bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("qat") / "int8"
    record = quantization_aware_training(trained, out, QATConfig(epochs=1, calib_size=CALIB), bundle=bundle)
    return out, record


def test_exports_open_through_runtime_load_as_int8(qat):
    out, _ = qat
    for name, backend in ((QAT_XML, "openvino"), (QAT_ONNX, "onnxruntime")):
        runner = runtime.load(out / name)
        assert runner.info.backend == backend
        # OpenVINO names the float part too on CPUs that run it in bf16: "int8/bf16".
        assert runner.info.precision.split("/")[0] == "int8", (name, runner.info.precision)
        assert runner.meta.arch == "test_se_resnet" and runner.meta.compression["quantization"]["method"] == "qat"
        assert {k: v.shape for k, v in runner(np.zeros((3, 1, 16, 16), np.float32)).items()} == {"logits": (3, 10)}


def test_onnx_export_is_qdq(qat):
    ops = {node.op_type for node in onnx.load(str(qat[0] / QAT_ONNX)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "FakeQuantize" not in ops
    assert "BatchNormalization" not in ops, "BatchNorm is folded into the convolutions before QAT"


def test_exports_agree_with_fp32_model(trained, bundle, qat):
    reference = predict(runtime.load(trained, backend="torch"), bundle).predicted
    for name in (QAT_XML, QAT_ONNX):
        agreement = float((predict(runtime.load(qat[0] / name), bundle).predicted == reference).mean())
        # Fine-tuning moves some borderline digits of an under-trained model; most must stay put.
        assert agreement >= 0.8, (name, agreement)


def _accuracy(runner, bundle) -> float:
    p = predict(runner, bundle)
    return float((p.predicted == p.labels).mean())


def test_record_is_written_and_consistent(trained, bundle, qat):
    out, _ = qat
    record = read_json(out / "qat.json")
    # The saved figures against ones measured here from the files, not against the dict they came from.
    measured = {"fp32": _accuracy(runtime.load(trained, backend="torch"), bundle),
                "qat_int8_openvino": _accuracy(runtime.load(out / QAT_XML), bundle),
                "qat_int8_onnx": _accuracy(runtime.load(out / QAT_ONNX), bundle)}
    for key, value in measured.items():
        assert record["accuracy"][key] == pytest.approx(value, abs=1e-9), key
    for key in ("openvino", "onnx", "ptq_openvino"):
        path = out / record["files"][key]["path"]
        assert record["files"][key]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), key
    assert record["calibration"] == {"split": "train", "augmented": False, "samples": CALIB}
    assert record["epochs"] == 1 and len(record["history"]) == 1 and record["history"][0]["samples"] == 256
    assert record["config"] == dataclasses.asdict(QATConfig(epochs=1, calib_size=CALIB))
    acc = record["accuracy"]
    assert set(acc) == {"fp32", "ptq_int8_openvino", "qat_int8_openvino", "qat_int8_onnx"}
    assert acc["fp32"] > 0.3 and all(abs(acc["fp32"] - v) < 0.1 for v in acc.values())
    for key, drop in record["drop_points"].items():
        assert drop == pytest.approx((acc["fp32"] - acc[key]) * 100, abs=1e-3)
    assert record["precision"]["fp32"] == "fp32" and record["precision"]["qat_int8_onnx"] == "int8"
    assert record["batchnorm_folded"] > 0 and record["test_samples"] == 359
    for key in ("openvino", "onnx"):
        assert record["files"][key]["validation"]["top1_agreement"] >= 0.85
    assert {"torch", "nncf", "openvino", "onnx", "onnxruntime"} <= set(record["versions"])


def test_fold_batchnorm_keeps_outputs():
    torch.manual_seed(0)
    model = models.create("test_se_resnet", num_classes=10, in_chans=1)
    with torch.no_grad():  # non-trivial running statistics, so a wrong fold would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        before = model(x)
        folded = fold_batchnorm(model)
        after = model(x)
    assert folded > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("epochs", 1.5), ("lr", 0.0), ("lr", math.inf), ("lr", "1e-4"), ("batch_size", 0),
    ("calib_size", -1), ("seed", -1), ("seed", True),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(UserInputError, match=field):
        QATConfig(**{field: value})


def test_checkpoint_without_data_is_refused(tmp_path):
    model = models.create("test_resnet", num_classes=10, in_chans=1)
    save_checkpoint(model, ModelMeta(arch="test_resnet", num_classes=10, in_chans=1, img_size=16), tmp_path / "c")
    with pytest.raises(UserInputError, match="no training data"):
        quantization_aware_training(tmp_path / "c", tmp_path / "out", QATConfig())


def test_recommend_qat():
    assert recommend_qat(2.0, 1.0) is True
    assert recommend_qat(0.4, 1.0) is False
    assert recommend_qat(1.0, 1.0) is False  # exactly on budget is within budget
    assert recommend_qat(-0.3, 0.0) is False  # INT8 that gains accuracy needs no QAT
    with pytest.raises(UserInputError, match="budget_points"):
        recommend_qat(1.0, -1.0)
    with pytest.raises(UserInputError, match="ptq_drop_points"):
        recommend_qat(float("nan"), 1.0)
