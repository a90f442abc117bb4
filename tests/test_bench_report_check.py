import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from edgeres.artifacts import read_json
from edgeres.bench.run import BenchConfig, bench_artifacts
from edgeres.compress.job import FinetuneConfig, compress_checkpoint
from edgeres.errors import UserInputError
from edgeres.export import ExportConfig, export_checkpoint
from edgeres.report.render import render_report

CLI = [sys.executable, "-m", "edgeres.cli"]


@pytest.fixture(scope="module")
def onnx_file(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_exports")
    export_checkpoint(tiny_checkpoint, out, ExportConfig(formats=("onnx",), precisions=("fp32",)))
    return out / "model.fp32.onnx"


@pytest.fixture(scope="module")
def results(tiny_checkpoint, onnx_file):
    config = BenchConfig(runs=20, warmup=3, budget_s=5, min_seconds=0)
    return bench_artifacts([tiny_checkpoint, onnx_file], config)


@pytest.mark.slow
def test_bench_measures_latency_size_memory_accuracy(results, tiny_checkpoint):
    env = results["environment"]
    assert env["cpu"] and env["cores"] >= 1 and "torch" in env["versions"]
    torch_entry, onnx_entry = results["artifacts"]
    assert results["baseline"] == torch_entry["name"]
    for e in (torch_entry, onnx_entry):
        engine = e["latency"]["engine"]
        assert len(engine["samples_ms"]) == engine["runs"] and 5 <= engine["runs"] <= 20
        assert 0 < engine["p50_ms"] <= engine["p90_ms"] <= engine["p99_ms"]
        assert e["latency"]["end_to_end"]["p50_ms"] > 0
        assert e["size_bytes"] > 0 and e["threads"] == 2
        memory = e["memory"]
        assert 0 < memory["runtime_baseline_mb"] < memory["runtime_peak_mb"] and memory["harness_peak_mb"] > 50
        assert e["load"]["wall_s"] > 0 and len(e["load"]["loadavg_before"]) == 3
        assert e["params"] == torch_entry["params"] and e["macs"] == torch_entry["macs"]
    # The ONNX file's runtime process holds onnxruntime and the model; the harness holds torch and the data too.
    assert onnx_entry["memory"]["imported"]["torch"] is False and torch_entry["memory"]["imported"]["torch"] is True
    assert onnx_entry["memory"]["runtime_peak_mb"] < onnx_entry["memory"]["harness_peak_mb"]
    assert torch_entry["backend"] == "torch" and onnx_entry["backend"] == "onnxruntime"
    reference = read_json(tiny_checkpoint / "metrics.json")["test"]["accuracy"]
    assert torch_entry["metrics"]["accuracy"] == reference
    assert onnx_entry["metrics"]["accuracy"] == pytest.approx(reference, abs=1 / 359)


def test_bench_refuses_unknown_artifact(tmp_path):
    with pytest.raises(UserInputError, match="no such file"):
        bench_artifacts([tmp_path / "missing.onnx"])


@pytest.mark.parametrize("option,value,message", [
    ("--budget", -1, "--budget (budget_s) must be a number of seconds > 0, got -1.0"),
    ("--budget", 0, "--budget (budget_s) must be a number of seconds > 0, got 0.0"),
    ("--min-seconds", -5, "--min-seconds (min_seconds) must be a number of seconds >= 0, got -5.0")])
def test_bench_refuses_impossible_time_limits(edgeres, tmp_path, option, value, message):
    # Refused while the config is made, before anything is measured: the artifact need not even exist.
    code, out = edgeres("bench", tmp_path / "model.onnx", "-o", tmp_path / "out", option, value)
    assert code == 2 and message in out.replace("\n", " ")
    assert not (tmp_path / "out").exists()
    assert BenchConfig(budget_s=None, min_seconds=0).budget_s is None  # no budget and no minimum stay valid


@pytest.mark.parametrize("limits", [dict(budget_s=0), dict(budget_s=float("nan")), dict(min_seconds=-5)])
def test_time_calls_refuses_impossible_time_limits(limits):
    from edgeres.bench.latency import time_calls

    calls = []
    with pytest.raises(UserInputError, match="budget_s must be None or seconds > 0 and min_seconds seconds >= 0"):
        time_calls(lambda: calls.append(1), warmup=1, runs=5, **limits)
    assert calls == []  # refused before any call


def test_bench_out_that_is_a_file_is_refused(tmp_path):
    from edgeres.bench.run import check_out, write_results

    afile = tmp_path / "afile.txt"
    afile.write_text("keep me")
    for refuse in (check_out, lambda out: write_results({}, out)):
        with pytest.raises(UserInputError, match=r"is a file; expected a folder for results.json"):
            refuse(afile)
    assert afile.read_text() == "keep me"


def test_check_refuses_report_paths_it_cannot_write_before_evaluating(tmp_path):
    from edgeres.check import check_outputs

    folder = tmp_path / "reports"
    folder.mkdir()
    with pytest.raises(UserInputError, match=r"^--junit .*reports is a folder; expected a file path"):
        check_outputs(junit=folder, json=tmp_path / "j.json")
    afile = tmp_path / "afile.txt"
    afile.write_text("")
    with pytest.raises(UserInputError, match=r"^--json .*afile.txt is a file, so the report cannot be written"):
        check_outputs(junit=None, json=afile / "sub" / "j.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.txt", "reports"]  # nothing was written
    check_outputs(junit=tmp_path / "new" / "junit.xml", json=None)  # a missing folder is made when writing


def _chromium():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name) and shutil.which("chromedriver"):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None, reason="no Chromium + chromedriver on this machine (.ci/run installs "
                                                "Debian's chromium and chromium-driver)")
def test_report_html_renders_in_a_real_browser(results, tmp_path):
    pytest.importorskip("selenium", reason="selenium drives the browser")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    files = render_report(results, tmp_path)
    options = webdriver.ChromeOptions()
    options.binary_location = _chromium()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(files["report.html"].resolve().as_uri())
        rows = driver.execute_script("return document.querySelectorAll('#summary tbody tr').length")
        images = driver.execute_script(
            "return [...document.images].map(i => [i.complete && i.naturalWidth > 0, i.alt])")
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
    assert rows == len(results["artifacts"])
    assert images and all(ok for ok, _ in images), images
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.slow
def test_cli_bench_and_report(tiny_checkpoint, tmp_path):
    res = subprocess.run([*CLI, "bench", str(tiny_checkpoint), "--out", str(tmp_path), "--runs", "10",
                          "--warmup", "2", "--min-seconds", "0", "--no-accuracy"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "results.json").is_file() and (tmp_path / "report.html").is_file()
    again = subprocess.run([*CLI, "report", str(tmp_path / "results.json"), "--out", str(tmp_path / "r2")],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "r2" / "report.md").is_file()
    bad = subprocess.run([*CLI, "report", str(tmp_path / "nope.json")], capture_output=True, text=True)
    assert bad.returncode == 2


@pytest.fixture(scope="module")
def broken(tiny_checkpoint, tmp_path_factory):
    """Most weights zeroed and no fine-tuning: a compression gone wrong that the gate must catch."""
    out = tmp_path_factory.mktemp("broken") / "b"
    compress_checkpoint(tiny_checkpoint, out, None, FinetuneConfig(epochs=0), sparsity=0.9)
    return out


@pytest.mark.slow
def test_gate_passes_identical_and_fails_broken(tiny_checkpoint, onnx_file, broken, tmp_path):
    ok = subprocess.run([*CLI, "check", "--baseline", str(tiny_checkpoint), "--candidate", str(onnx_file),
                         "--max-drop", "0.5"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    junit = tmp_path / "gate.xml"
    bad = subprocess.run([*CLI, "check", "--baseline", str(tiny_checkpoint), "--candidate", str(broken),
                          "--max-drop", "0.5", "--max-class-drop", "2", "--junit", str(junit),
                          "--json", str(tmp_path / "gate.json")], capture_output=True, text=True)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "accuracy dropped" in bad.stderr and "fail" in bad.stdout.lower()
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == "2" and suite.get("tests") == "2"
    gate = read_json(tmp_path / "gate.json")
    assert gate["passed"] is False and gate["delta_ci_points"][1] < 0


def test_gate_refuses_mismatched_models(tiny_checkpoint, tmp_path):
    from edgeres.data import DataConfig
    from edgeres.train.config import TrainConfig
    from edgeres.train.loop import train

    other = tmp_path / "shapes"
    train(TrainConfig(model="test_resnet", data=DataConfig("shapes", img_size=24, shapes_per_class=6),
                      out=str(other), epochs=1))
    res = subprocess.run([*CLI, "check", "--baseline", str(tiny_checkpoint), "--candidate", str(other)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "different classes" in res.stderr
