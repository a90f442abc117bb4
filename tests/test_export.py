import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeres.artifacts import read_json
from edgeres.errors import UserInputError
from edgeres.evaluate import evaluate_artifact
from edgeres.export import ExportConfig, export_checkpoint


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    doc = export_checkpoint(tiny_checkpoint, out, ExportConfig(formats=("onnx", "openvino"),
                                                               precisions=("fp32", "int8"), calib_size=128))
    return out, doc


@pytest.fixture(scope="module")
def published_fp32(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32") / "export"
    doc = export_checkpoint(tiny_checkpoint, out, ExportConfig(formats=("onnx", "openvino"), precisions=("fp32",)))
    return out, doc


def _strings(value, where=()):
    """(key path, text) of every string in a JSON document."""
    if isinstance(value, dict):
        for key, v in value.items():
            yield from _strings(v, (*where, key))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, (*where, i))
    elif isinstance(value, str):
        yield where, value


def _assert_names_only_published_paths(out, doc):
    """No value of export.json points into the staging folder (deleted once published); every path exists."""
    texts = list(_strings(read_json(out / "export.json")))
    assert texts and read_json(out / "export.json") == doc
    for where, text in texts:
        assert ".staging." not in text, (where, text)
        if where[-1] in ("file", "path", "bin_path", "source", "source_ir", "sidecar") or text.startswith(str(out)):
            assert Path(text).exists(), (where, text)


def test_export_json_names_no_staging_path(published_fp32):
    out, doc = published_fp32
    _assert_names_only_published_paths(out, doc)
    openvino = next(a for a in doc["artifacts"] if a["format"] == "openvino")
    assert openvino["path"] == openvino["file"] == str(out / "model.fp32.xml")
    assert openvino["bin_path"] == str(out / "model.fp32.bin")


def test_narrower_rerun_warns_about_the_files_it_replaces(published_fp32, tiny_checkpoint, tmp_path, caplog):
    out = tmp_path / "export"
    shutil.copytree(published_fp32[0], out)
    onnx_only = ExportConfig(formats=("onnx",), precisions=("fp32",))
    with caplog.at_level(logging.WARNING, logger="edgeres"):
        export_checkpoint(tiny_checkpoint, out, onnx_only)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(out) in warnings[0] and "model.fp32.xml, model.fp32.bin are not part" in warnings[0]
    assert "model.fp32.onnx" not in warnings[0] and "--to onnx,openvino --precision fp32" in warnings[0]
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.fp32.onnx"]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgeres"):
        export_checkpoint(tiny_checkpoint, out, onnx_only)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_every_export_validated_and_recorded(exported):
    out, doc = exported
    assert doc == read_json(out / "export.json")
    _assert_names_only_published_paths(out, doc)
    assert {(a["backend"], a["precision"]) for a in doc["artifacts"]} == {
        ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8")}
    assert doc["failed"] == [] and not (out / ".staging").exists()
    for a in doc["artifacts"]:
        v = a["validation"]
        assert a["status"] == "ok" and v["failures"] == [] and v["samples"] == 64
        if a["precision"] == "fp32":
            assert v["top1_agreement"] == 1.0 and v["max_abs_diff"] < 1e-3
            assert v["executed_precision"] == "fp32"
    assert doc["calibration"] == {"data": "digits", "split": "train", "samples": 128}
    assert doc["source_sha256"] and doc["versions"]["onnxruntime"]
    for name in ("model.fp32.onnx", "model.int8.onnx", "model.fp32.xml", "model.fp32.bin", "model.int8.xml"):
        assert (out / name).is_file(), name


def test_exported_files_evaluate_like_the_checkpoint(exported, tiny_checkpoint, tmp_path):
    out, _ = exported
    reference = read_json(tiny_checkpoint / "metrics.json")["test"]["accuracy"]
    for name in ("model.fp32.onnx", "model.fp32.xml"):
        metrics, _ = evaluate_artifact(out / name, out=tmp_path / name, precision="fp32")
        assert metrics["test"]["accuracy"] == pytest.approx(reference, abs=1 / 359)
    for name in ("model.int8.onnx", "model.int8.xml"):
        metrics, _ = evaluate_artifact(out / name, out=tmp_path / name)
        assert metrics["test"]["accuracy"] > reference - 0.05, name


PLAIN = r"""
import sys, json, numpy as np
sys.modules["edgeres"] = None  # prove the files need nothing from edgeres
x = np.load(sys.argv[2])
if sys.argv[1].endswith(".onnx"):
    import onnxruntime as ort
    s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    y = s.run(None, {s.get_inputs()[0].name: x})[0]
else:
    import openvino as ov
    y = ov.Core().compile_model(sys.argv[1], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
print(json.dumps(np.asarray(y).argmax(1).tolist()))
"""


@pytest.mark.parametrize("name", ["model.fp32.onnx", "model.int8.onnx", "model.fp32.xml", "model.int8.xml"])
def test_plain_runtimes_load_exports_without_edgeres(exported, tiny_checkpoint, tmp_path, name):
    from edgeres import runtime
    from edgeres.data import DataConfig, load_data

    out, _ = exported
    runner = runtime.load(out / name, precision="fp32" if "fp32" in name else None)
    x, _ = next(load_data(DataConfig.from_dict(runner.meta.data)).batches("test", 32))
    np.save(tmp_path / "x.npy", x)
    res = subprocess.run([sys.executable, "-c", PLAIN, str(out / name), str(tmp_path / "x.npy")],
                         capture_output=True, text=True, check=True)
    assert json.loads(res.stdout) == runner(x)["logits"].argmax(1).tolist()


@pytest.mark.parametrize("name", ["model.int8.onnx", "model.int8.xml"])
def test_runners_over_exported_files_need_no_torch(exported, name):
    # A deploy bundle runs where torch is not installed: the Runner and the metadata readers must not import it.
    out, _ = exported
    code = ("import sys, numpy as np, edgeres.runtime as rt\n"
            f"r = rt.load({str(out / name)!r})\n"
            "n, c, h, w = r.info.input_shape\n"
            "y = r(np.zeros((n or 1, c, h, w), np.float32))['logits']\n"
            "print(y.shape[1], r.meta.num_classes, 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    classes, num_classes, torch_loaded = res.stdout.split()
    assert classes == num_classes == "10" and torch_loaded == "False"


def test_failed_validation_is_not_left_looking_finished(tiny_checkpoint, tmp_path, monkeypatch):
    from edgeres.export import validate

    impossible = validate.Tolerance(max_abs_diff=None, min_cosine=2.0, min_top1_agreement=2.0)
    monkeypatch.setitem(validate.TOLERANCES, "int8", impossible)
    (tmp_path / "model.int8.onnx").write_text("stale file from an earlier run")
    doc = export_checkpoint(tiny_checkpoint, tmp_path, ExportConfig(formats=("onnx",), precisions=("int8",),
                                                                    calib_size=32))
    assert doc["artifacts"] == [] and doc["failed"][0]["status"] == "failed"
    assert "cosine" in doc["failed"][0]["validation"]["failures"][0]
    assert not (tmp_path / "model.int8.onnx").exists()
    assert (tmp_path / "failed" / "model.int8.onnx").is_file()
    _assert_names_only_published_paths(tmp_path, doc)
    assert doc["failed"][0]["quantization"]["path"] == str(tmp_path / "failed" / "model.int8.onnx")


def test_exporter_error_is_a_failed_entry(tiny_checkpoint, tmp_path, monkeypatch):
    from edgeres.export import validate

    monkeypatch.setitem(validate.TOLERANCES, "fp32", validate.Tolerance(max_abs_diff=-1.0))
    doc = export_checkpoint(tiny_checkpoint, tmp_path, ExportConfig(formats=("onnx",), precisions=("fp32",)))
    assert doc["artifacts"] == [] and "does not match" in doc["failed"][0]["error"]
    assert not list(tmp_path.glob("*.onnx"))


def test_tensorrt_bundle_prepared(tiny_checkpoint, tmp_path):
    doc = export_checkpoint(tiny_checkpoint, tmp_path, ExportConfig(formats=("tensorrt",),
                                                                    precisions=("fp16", "int8"), calib_size=32))
    names = {a["precision"]: a for a in doc["artifacts"]}
    assert set(names) == {"fp16", "int8"}
    for precision in ("fp16", "int8"):
        bundle = tmp_path / f"tensorrt-{precision}"
        assert (bundle / "build_engine.sh").is_file() and (bundle / "build_engine.py").is_file()
        assert f"--{precision}" in (bundle / "build_engine.sh").read_text()
    assert (tmp_path / "tensorrt-int8" / "model.int8.qdq.onnx").is_file()


def test_bad_export_config():
    with pytest.raises(UserInputError, match="formats"):
        ExportConfig(formats=("tflite",))
    with pytest.raises(UserInputError, match="precisions"):
        ExportConfig(precisions=("int4",))


@pytest.mark.slow
def test_cli_export_and_eval(tiny_checkpoint, tmp_path):
    cli = [sys.executable, "-m", "edgeres.cli"]
    res = subprocess.run([*cli, "export", str(tiny_checkpoint), "--to", "onnx", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "model.fp32.onnx" in res.stdout
    res = subprocess.run([*cli, "eval", str(tmp_path / "model.fp32.onnx")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "model.fp32.onnx.eval" / "metrics.json").is_file()
    bad = subprocess.run([*cli, "export", str(tiny_checkpoint), "--to", "caffe", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "formats" in bad.stderr


def test_every_backend_names_its_outputs_and_the_task_reads_them_alike(exported, tiny_checkpoint):
    from edgeres import runtime
    from edgeres.data import DataConfig, load_data
    from edgeres.tasks import get_task

    out, _ = exported
    torch_runner = runtime.load(tiny_checkpoint)
    task = get_task(torch_runner.meta.task)
    x, _ = next(load_data(DataConfig.from_dict(torch_runner.meta.data)).batches("test", 16))
    reference = task.postprocess(torch_runner(x)).argmax(1)
    for name in ("model.fp32.onnx", "model.fp32.xml"):
        outputs = runtime.load(out / name, precision="fp32")(x)
        assert list(outputs) == ["logits"] and outputs["logits"].shape == (16, torch_runner.meta.num_classes), name
        assert (task.postprocess(outputs).argmax(1) == reference).all(), name
