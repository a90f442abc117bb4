"""TensorRT bundles (checked here, no GPU needed) and engine build/run (skipped without an NVIDIA GPU + TensorRT)."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torchvision.models.resnet import BasicBlock, ResNet
from onnx import numpy_helper
from torch import nn

from edgeres.checkpoint import ModelMeta
from edgeres.errors import UserInputError
from edgeres.export.onnx import export_onnx, quantize_onnx, tensorrt_qdq_problems
from edgeres.export.tensorrt import build_engine, prepare_tensorrt
from edgeres.export.validate import TOLERANCES, Tolerance, compare_outputs, judge
from edgeres.models.attention import SqueezeExcite
from edgeres.runtime import load
from edgeres.runtime.tensorrt import unavailable_reason

IMG = 32
# Random weights give near-tied logits: cosine is checked tightly, top-1 loosely (see tests/test_onnx.py).
INT8_RANDOM_WEIGHTS = Tolerance(max_abs_diff=None, min_cosine=0.995, min_top1_agreement=0.8)
NO_TRT = unavailable_reason()
needs_trt = pytest.mark.skipif(NO_TRT is not None, reason=f"TensorRT engine tests need an NVIDIA GPU: {NO_TRT}")


def batches(n: int, size: int = 8, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((size, 3, IMG, IMG)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    model.layer1.add_module("se", SqueezeExcite(64, reduction=8))
    path = tmp_path_factory.mktemp("trt") / "model.onnx"
    export_onnx(model.eval(), ModelMeta(arch="resnet10_se", num_classes=10, img_size=IMG), path)
    return path


@pytest.fixture(scope="module")
def int8_bundle(fp32_onnx, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bundle_int8")
    record = prepare_tensorrt(fp32_onnx, out, precision="int8", calibration=batches(4),
                              min_batch=1, opt_batch=2, max_batch=4, workspace_mb=512)
    return out, record


def test_fp16_bundle_holds_the_onnx_scripts_and_sidecar(fp32_onnx, tmp_path):
    record = prepare_tensorrt(fp32_onnx, tmp_path, precision="fp16", opt_batch=2, max_batch=4, workspace_mb=512)
    assert set(record["files"]) == {"model.onnx", "build_engine.sh", "build_engine.py", "engine_meta.json"}
    assert (tmp_path / "model.onnx").read_bytes() == fp32_onnx.read_bytes()
    assert record["trtexec"] == [
        "trtexec", "--onnx=model.onnx", "--saveEngine=model.fp16.engine", "--fp16",
        "--minShapes=input:1x3x32x32", "--optShapes=input:2x3x32x32", "--maxShapes=input:4x3x32x32",
        "--memPoolSize=workspace:512", "--timingCacheFile=timing.cache",
    ]
    # The script picks its flags by the TensorRT version it finds: what it would run on TensorRT 10.3.
    planned = subprocess.run(["bash", str(tmp_path / "build_engine.sh"), "--dry-run", "--tensorrt-version", "10.3"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert "--int8" not in planned and "--fp16" in planned and "--maxShapes=input:4x3x32x32" in planned
    assert os.access(tmp_path / "build_engine.sh", os.X_OK)
    subprocess.run(["bash", "-n", str(tmp_path / "build_engine.sh")], check=True)
    sidecar = json.loads((tmp_path / "engine_meta.json").read_text())
    assert sidecar["precision"] == "fp16" and sidecar["meta"]["arch"] == "resnet10_se"


def test_int8_command_uses_the_qdq_onnx_without_a_calibrator(int8_bundle):
    out, record = int8_bundle
    assert record["onnx"] == "model.int8.qdq.onnx" and (out / "model.int8.qdq.onnx").is_file()
    assert "--int8" in record["trtexec"] and "--fp16" in record["trtexec"]
    assert "--onnx=model.int8.qdq.onnx" in record["trtexec"]
    assert not any(a.startswith("--calib") for a in record["trtexec"])
    script = (out / "build_engine.sh").read_text()
    assert "ONNX=model.int8.qdq.onnx" in script.splitlines()
    planned = subprocess.run(["bash", str(out / "build_engine.sh"), "--dry-run", "--tensorrt-version", "10.3"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert "--int8" in planned and not any(a.startswith("--calib") for a in planned)
    subprocess.run(["bash", "-n", str(out / "build_engine.sh")], check=True)


def test_int8_qdq_onnx_is_symmetric_signed_per_channel(int8_bundle):
    out, record = int8_bundle
    proto = onnx.load(str(out / "model.int8.qdq.onnx"))
    inits = {t.name: t for t in proto.graph.initializer}
    qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero = inits[node.input[2]]
        assert zero.data_type == onnx.TensorProto.INT8 and not numpy_helper.to_array(zero).any(), node.name
    producer_of_weight = {n.input[1]: n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")}
    weight_dq = {n.output[0]: n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    assert set(producer_of_weight) <= set(weight_dq), "every Conv/Gemm weight is quantized"
    for name, layer in producer_of_weight.items():
        dq = weight_dq[name]
        weight, scale = inits[dq.input[0]], numpy_helper.to_array(inits[dq.input[1]])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        assert weight.data_type == onnx.TensorProto.INT8 and axis == 0, layer.name
        assert scale.shape == (weight.dims[0],) and (scale > 0).all(), layer.name
    assert not any(inits[n.input[0]].data_type == onnx.TensorProto.INT32 for n in weight_dq.values())
    assert tensorrt_qdq_problems(proto) == []
    quant = record["quantization"]
    assert quant["mode"] == "tensorrt" and quant["symmetric"] == {"activations": True, "weights": True}
    assert {n.split("/")[-1] for n in quant["kept_in_float"]} == {"Sigmoid", "Mul"}


def test_int8_qdq_onnx_runs_in_onnxruntime_and_agrees(fp32_onnx, int8_bundle):
    runner = load(int8_bundle[0] / "model.int8.qdq.onnx")
    assert runner.info.precision == "int8"
    x = batches(1, 32, seed=3)[0]
    stats = compare_outputs(load(fp32_onnx)(x), runner(x))
    assert judge(stats, INT8_RANDOM_WEIGHTS) == [], stats


def test_build_script_is_standalone(int8_bundle):
    out, _ = int8_bundle
    script = out / "build_engine.py"
    subprocess.run([sys.executable, "-m", "py_compile", str(script)], check=True)
    tree = ast.parse(script.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "argparse", "json", "sys", "pathlib", "tensorrt"}, imported
    defaults = next(ast.literal_eval(n.value) for n in tree.body
                    if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "DEFAULTS")
    assert defaults == {"onnx": "model.int8.qdq.onnx", "engine": "model.int8.engine", "precision": "int8",
                        "min_batch": 1, "opt_batch": 2, "max_batch": 4, "workspace_mb": 512,
                        "fp16_fallback": True, "timing_cache": "timing.cache", "meta": "engine_meta.json"}
    if NO_TRT is not None and "not installed" in NO_TRT:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        assert done.returncode == 1 and "tensorrt" in done.stderr


def test_shell_script_runs_trtexec_as_written(int8_bundle, tmp_path):
    """Run build_engine.sh against a stand-in trtexec that records its arguments and writes the engine."""
    out, record = int8_bundle
    fake = tmp_path / "trtexec"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n'
                    'for a in "$@"; do case "$a" in --saveEngine=*) echo engine > "${a#--saveEngine=}";; esac; done\n')
    fake.chmod(0o755)
    engine = tmp_path / "out dir" / "m.engine"
    engine.parent.mkdir()
    env = dict(os.environ, TRTEXEC=str(fake), ARGS_FILE=str(tmp_path / "args"))
    subprocess.run(["bash", str(out / "build_engine.sh"), str(engine)], check=True, env=env, capture_output=True)
    args = (tmp_path / "args").read_text().splitlines()
    flag_path = {a.split("=", 1)[0]: Path(a.split("=", 1)[1]).resolve() for a in (args[0], args[1], args[-1])}
    assert flag_path == {"--onnx": (out / "model.int8.qdq.onnx").resolve(), "--saveEngine": engine.resolve(),
                         "--timingCacheFile": (out / "timing.cache").resolve()}
    assert args[2:-1] == record["trtexec"][3:-1]
    assert engine.is_file() and json.loads(Path(f"{engine}.json").read_text())["precision"] == "int8"


def test_static_batch_bundle_has_no_shape_flags(tmp_path):
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).eval()
    export_onnx(model, ModelMeta(arch="resnet10", num_classes=10, img_size=IMG), tmp_path / "s.onnx",
                dynamic_batch=False, batch_size=2)
    record = prepare_tensorrt(tmp_path / "s.onnx", tmp_path / "b", precision="fp32")
    assert not any("Shapes=" in a for a in record["trtexec"])
    assert not any(a in ("--fp16", "--int8") for a in record["trtexec"])
    assert "fixed batch of 2" in record["notes"][0]


def test_bad_requests_are_refused(fp32_onnx, int8_bundle, tmp_path):
    with pytest.raises(UserInputError, match="min_batch <= opt_batch <= max_batch"):
        prepare_tensorrt(fp32_onnx, tmp_path, min_batch=4, max_batch=2)
    with pytest.raises(UserInputError, match="precision must be one of"):
        prepare_tensorrt(fp32_onnx, tmp_path, precision="int4")
    with pytest.raises(UserInputError, match="needs calib_onnx_int8"):
        prepare_tensorrt(fp32_onnx, tmp_path, precision="int8")
    with pytest.raises(UserInputError, match="int8 only"):
        prepare_tensorrt(fp32_onnx, tmp_path, precision="fp16", calibration=batches(1))
    with pytest.raises(UserInputError, match="no QuantizeLinear"):
        prepare_tensorrt(fp32_onnx, tmp_path, precision="int8", calib_onnx_int8=fp32_onnx)


def test_given_qdq_onnx_is_checked_before_it_is_used(fp32_onnx, int8_bundle, tmp_path):
    record = prepare_tensorrt(fp32_onnx, tmp_path / "ok", precision="int8",
                              calib_onnx_int8=int8_bundle[0] / "model.int8.qdq.onnx")
    assert record["quantization"]["mode"] == "tensorrt"
    quantize_onnx(fp32_onnx, tmp_path / "cpu.onnx", batches(1), mode="cpu")
    with pytest.raises(UserInputError, match="zero point"):
        prepare_tensorrt(fp32_onnx, tmp_path / "bad", precision="int8", calib_onnx_int8=tmp_path / "cpu.onnx")


@pytest.mark.skipif(NO_TRT is None, reason="a GPU with TensorRT is present; the no-GPU errors do not apply")
def test_without_a_gpu_build_and_run_say_what_is_needed(fp32_onnx, tmp_path):
    with pytest.raises(UserInputError, match="needs an NVIDIA GPU and the tensorrt package"):
        build_engine(fp32_onnx, tmp_path / "m.engine")
    (tmp_path / "m.engine").write_bytes(b"not an engine")
    with pytest.raises(UserInputError, match="needs an NVIDIA GPU and TensorRT"):
        load(tmp_path / "m.engine")


@needs_trt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_builds_and_agrees_with_onnxruntime(precision, fp32_onnx, int8_bundle, tmp_path):
    onnx_path = fp32_onnx if precision == "fp16" else int8_bundle[0] / "model.int8.qdq.onnx"
    built = build_engine(onnx_path, tmp_path / "m.engine", precision=precision, max_batch=4,
                         timing_cache=tmp_path / "timing.cache")
    assert Path(built["sidecar"]).is_file() and (tmp_path / "timing.cache").is_file()
    runner = load(tmp_path / "m.engine")
    assert runner.info.backend == "tensorrt" and runner.info.precision == precision
    x = batches(1, 4, seed=11)[0]
    stats = compare_outputs(load(fp32_onnx)(x), runner(x))
    assert judge(stats, TOLERANCES["fp16"] if precision == "fp16" else INT8_RANDOM_WEIGHTS) == [], stats
    with pytest.raises(UserInputError, match="at most 4"):
        runner(batches(1, 5)[0])


@needs_trt
def test_bundle_build_script_runs_on_this_gpu(int8_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(int8_bundle[0], bundle)
    subprocess.run([sys.executable, str(bundle / "build_engine.py"), "--engine", str(tmp_path / "m.engine")],
                   check=True)
    assert load(tmp_path / "m.engine").info.precision == "int8"
