"""`edgeres bench` hardening: worker errors as one line, memory figures that belong to the artifact, load."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from edgeres.bench.load import CpuSample, contention
from edgeres.bench.run import BenchConfig, bench_artifacts, worker_result
from edgeres.bench.runtime_memory import measure_runtime_memory
from edgeres.errors import UserInputError

CLI = [sys.executable, "-m", "edgeres.cli"]


def _bench(*args):
    return subprocess.run([*CLI, "bench", *map(str, args), "--runs", "3", "--warmup", "0", "--min-seconds", "0",
                           "--no-accuracy", "--no-report"], capture_output=True, text=True)


def test_bench_huge_batch_is_refused_before_allocating(tiny_checkpoint, tmp_path):
    res = _bench(tiny_checkpoint, "--out", tmp_path, "--batch-sizes", "100000000")
    assert res.returncode == 2, res.stderr
    assert "batch" in res.stderr and "GiB" in res.stderr and "Traceback" not in res.stderr + res.stdout


def test_bench_huge_img_size_is_refused_in_one_line(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    meta = json.loads((ckpt / "model.json").read_text())
    meta["img_size"] = 100000
    (ckpt / "model.json").write_text(json.dumps(meta))
    res = _bench(ckpt, "--out", tmp_path / "out")
    assert res.returncode == 2, res.stderr
    assert "img_size" in res.stderr and "Traceback" not in res.stderr + res.stdout


def _done(returncode: int, stdout: str = "", stderr: str = "") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(["worker"], returncode, stdout, stderr)


def test_worker_result_reraises_user_errors_and_names_the_setting_of_a_crash():
    what = "model.onnx at batch 8, threads 2"
    with pytest.raises(UserInputError, match="^wrong input shape$"):
        worker_result(_done(2, json.dumps({"error": "user_input", "message": "wrong input shape"}) + "\n"), what)
    crash = json.dumps({"error": "crash", "type": "ZeroDivisionError", "message": "division by zero"})
    with pytest.raises(RuntimeError, match="model.onnx at batch 8, threads 2.*ZeroDivisionError: division by zero"):
        worker_result(_done(1, crash + "\n", "Traceback ...\nZeroDivisionError: division by zero\n"), what)
    with pytest.raises(RuntimeError, match="model.onnx at batch 8, threads 2.*signal 9"):
        worker_result(_done(-9), what)
    assert worker_result(_done(0, "log line\n" + json.dumps({"name": "m"}) + "\n"), what) == {"name": "m"}


@pytest.fixture(scope="module")
def onnx_sizes(tmp_path_factory):
    """A test_resnet (~0.1 MB) and a resnet18 (~45 MB) ONNX file, same 1x32x32 input."""
    from edgeres.checkpoint import ModelMeta
    from edgeres.export.onnx.convert import export_onnx
    from edgeres.models import create

    out = tmp_path_factory.mktemp("onnx_sizes")
    files = {}
    for arch in ("test_resnet", "resnet18"):
        model = create(arch, num_classes=10, in_chans=1).eval()
        meta = ModelMeta(arch=arch, num_classes=10, in_chans=1, img_size=32, mean=(0.5,), std=(0.5,))
        export_onnx(model, meta, out / f"{arch}.onnx", simplify=False, validate=False)
        files[arch] = out / f"{arch}.onnx"
    return files


def test_runtime_memory_grows_with_the_model_and_carries_no_torch(onnx_sizes):
    small, big = (measure_runtime_memory(onnx_sizes[a], "onnxruntime", [1, 1, 32, 32], 1)
                  for a in ("test_resnet", "resnet18"))
    for m in (small, big):
        assert m["imported"] == {"torch": False, "edgeres": False, "onnxruntime": True, "openvino": False}
        assert 0 < m["runtime_baseline_mb"] < m["runtime_peak_mb"]
    weights_mb = (onnx_sizes["resnet18"].stat().st_size - onnx_sizes["test_resnet"].stat().st_size) / 2**20
    # The runtime must hold the bigger model's weights at least once, so its increment grows by at least that.
    assert big["runtime_increment_mb"] - small["runtime_increment_mb"] >= weights_mb


def _samples(machine_busy_s: float, own_s: float, wall_s: float = 10.0):
    return CpuSample(0.0, 0.0, 0.0, (0.1, 0.1, 0.1)), CpuSample(machine_busy_s, own_s, wall_s, (2.0, 1.0, 0.5))


@pytest.mark.parametrize("machine_busy_s,own_s,cores,threads,others,contended", [
    (20.0, 19.8, 2, 2, 0.02, False),  # 2 threads on 2 cores, others took 0.2 s of 20: quiet
    (20.0, 10.0, 2, 2, 1.0, True),    # a busy loop held one of the two cores
    (28.0, 19.0, 4, 2, 0.9, False),   # others used most of a core the measurement left free
    (38.0, 20.0, 4, 2, 1.8, False),   # ... and nearly all of both free cores: still no competition
    (45.0, 20.0, 4, 2, 2.5, True),    # half a core beyond the free ones: 25% of the measured two
])
def test_contention_from_cpu_counters(machine_busy_s, own_s, cores, threads, others, contended):
    result = contention(*_samples(machine_busy_s, own_s), cores=cores, threads=threads)
    assert result["other_cores"] == pytest.approx(others) and result["contended"] is contended
    assert result["loadavg_before"] == [0.1, 0.1, 0.1] and result["loadavg_after"] == [2.0, 1.0, 0.5]


def test_contention_unknown_without_proc_stat():
    before, after = CpuSample(None, 0.0, 0.0, None), CpuSample(None, 1.0, 1.0, None)
    assert contention(before, after, 2, 2)["contended"] is None


@pytest.mark.slow  # ~8 s on a quiet machine; the busy loops slow the worker's start-up far past that on a shared one
def test_bench_flags_a_measurement_made_beside_busy_loops(onnx_sizes):
    config = BenchConfig(runs=20, warmup=2, budget_s=None, min_seconds=1.5, accuracy=False, end_to_end=False)
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        entry = bench_artifacts([onnx_sizes["test_resnet"]], config)["artifacts"][0]
    finally:
        for p in loops:
            p.kill()
            p.wait()
    load = entry["load"]
    assert load["contended"] is True and load["other_cores"] > 0.5 and load["wall_s"] >= 1.5
    assert entry["memory"]["runtime_peak_mb"] < entry["memory"]["harness_peak_mb"]  # the harness carries torch


def test_runtime_memory_of_an_openvino_ir_carries_no_torch(tmp_path):
    from edgeres.checkpoint import ModelMeta
    from edgeres.export.openvino.convert import export_openvino
    from edgeres.models import create

    meta = ModelMeta(arch="test_resnet", num_classes=10, in_chans=1, img_size=32, mean=(0.5,), std=(0.5,))
    xml = export_openvino(create("test_resnet", num_classes=10, in_chans=1).eval(), meta, tmp_path / "m.xml")["path"]
    m = measure_runtime_memory(xml, "openvino", [1, 1, 32, 32], 1, {"INFERENCE_PRECISION_HINT": "f32"})
    assert m["imported"] == {"torch": False, "edgeres": False, "onnxruntime": False, "openvino": True}
    assert 0 < m["runtime_baseline_mb"] < m["runtime_peak_mb"]
    assert measure_runtime_memory(xml, "tensorrt", [1, 1, 32, 32], 1) is None  # no probe for TensorRT here


def test_harness_figure_is_the_workers_own_not_its_parents(onnx_sizes):
    # Linux carries a parent's RSS high-water mark across fork + exec into ru_maxrss: a worker started by a
    # big process once reported the parent's 1.3 GB for every model. Make this process big, then measure.
    import numpy as np

    ballast = np.ones(1_500 * 2**20, dtype=np.uint8)  # 1.5 GiB, touched so that it is resident
    config = BenchConfig(runs=3, warmup=0, min_seconds=0, budget_s=5, accuracy=False, end_to_end=False)
    entry = bench_artifacts([onnx_sizes["test_resnet"]], config)["artifacts"][0]
    assert ballast[-1] == 1
    assert entry["memory"]["harness_peak_mb"] < 1_500, entry["memory"]
