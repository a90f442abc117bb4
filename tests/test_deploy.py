"""`edgeres deploy`: a bundle for a classifier and a detector runs in a fresh environment holding only numpy, Pillow
and the runtime (no torch, no edgeres), predicts what `edgeres predict` predicts, checks itself, and a corrupted
model file fails that check naming the file."""
import json
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from edgeres.data.detect.shapes_det import render_scene
from edgeres.deploy.bundle import META, SUMS, DeployConfig, deploy
from edgeres.errors import UserInputError
from edgeres.predict import PREDICTIONS_FILE, predict_images
from lean_env import importable, lean_python

RUNTIMES = {"onnxruntime": ("numpy", "pillow", "onnxruntime"), "openvino": ("numpy", "pillow", "openvino")}


@pytest.fixture(scope="module")
def lean_envs(tmp_path_factory):
    """{backend: python of a venv that has only numpy, Pillow and that runtime}."""
    root = tmp_path_factory.mktemp("lean")
    envs = {backend: lean_python(root / backend, dists) for backend, dists in RUNTIMES.items()}
    for backend, python in envs.items():
        assert not importable(python, "torch") and not importable(python, "edgeres")
        assert importable(python, backend) and importable(python, "PIL")
    return envs


@pytest.fixture(scope="module")
def digit_images(tiny_checkpoint, tmp_path_factory):
    """Six digits as PNG files, drawn at 40 px (the model takes 24): infer.py must resize as edgeres does."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digits")
    for k, image in enumerate(load_digits().images[:6]):
        pixels = (image / 16 * 255).round().astype(np.uint8)
        Image.fromarray(pixels, mode="L").resize((40, 40), Image.NEAREST).save(folder / f"digit_{k}.png")
    return folder


@pytest.fixture(scope="module")
def detector(random_detector):
    return random_detector


@pytest.fixture(scope="module")
def scene_images(tmp_path_factory):
    """Shapes scenes cropped to frames that are not square (letterbox pads them)."""
    folder = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(3)
    for k, (h, w) in enumerate([(90, 160), (120, 100), (128, 128)]):
        pixels, _, _ = render_scene(max(h, w), rng)
        Image.fromarray(pixels[:h, :w]).save(folder / f"scene_{k}.jpg", quality=95)
    return folder


def _run(python, bundle, *args):
    return subprocess.run([str(python), "infer.py", *map(str, args)], cwd=bundle, capture_output=True, text=True,
                          timeout=300)


def _on_device(bundle, tmp_path):
    """The bundle as a device receives it: copied somewhere else, alone."""
    target = tmp_path / "device" / bundle.name
    shutil.copytree(bundle, target)
    return target


def _compare(ours, reference, task):
    assert [p["file"] for p in ours] == [p["file"] for p in reference]
    for a, b in zip(ours, reference):
        assert (a["width"], a["height"]) == (b["width"], b["height"])
        if task == "classification":
            assert a["class_id"] == b["class_id"], (a, b)
            np.testing.assert_allclose([t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]],
                                       atol=2e-3)
        else:
            assert len(a["detections"]) == len(b["detections"]), (a["file"], a["detections"], b["detections"])
            for da, db in zip(a["detections"], b["detections"]):
                assert da["class_id"] == db["class_id"]
                assert abs(da["score"] - db["score"]) < 2e-3
                np.testing.assert_allclose(da["box_xyxy"], db["box_xyxy"], atol=0.5)


@pytest.mark.parametrize("kind,device,backend", [
    ("classifier", "raspberry-pi-5", "onnxruntime"),
    ("classifier", "x86-cpu", "openvino"),
    ("detector", "raspberry-pi-5", "onnxruntime"),
    ("detector", "x86-cpu", "openvino"),
])
def test_bundle_runs_without_torch_and_predicts_as_edgeres(kind, device, backend, tiny_checkpoint, detector,
                                                            digit_images, scene_images, lean_envs, tmp_path):
    source, images = (tiny_checkpoint, digit_images) if kind == "classifier" else (detector, scene_images)
    out = tmp_path / "bundle"
    result = deploy(source, out, DeployConfig(device=device, precision="fp32", preprocess=False, measure=False))
    meta = json.loads((out / META).read_text())
    assert result["backend"] == meta["backend"] == backend
    assert meta["task"] == ("classification" if kind == "classifier" else "detection")
    for name in ("infer.py", "letterbox.py", "requirements.txt", "README.md", SUMS, meta["model"],
                 meta["golden"]["inputs"], meta["golden"]["expected"]):
        assert (out / name).is_file(), name
    assert backend in (out / "requirements.txt").read_text() and "torch" not in (out / "requirements.txt").read_text()

    bundle = _on_device(out, tmp_path)
    python = lean_envs[backend]
    check = _run(python, bundle, "--selftest")
    assert check.returncode == 0, check.stdout + check.stderr
    run = _run(python, bundle, images, "--out", tmp_path / "pred")
    assert run.returncode == 0, run.stdout + run.stderr
    ours = json.loads((tmp_path / "pred" / PREDICTIONS_FILE).read_text())["predictions"]
    reference = predict_images(out / meta["model"], images, tmp_path / "ref", precision="fp32")["predictions"]
    _compare(ours, reference, meta["task"])
    if kind == "detector":
        assert sum(len(p["detections"]) for p in reference) > 0  # the comparison compared boxes

    model = bundle / meta["model"]  # one flipped byte in the weights
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    broken = _run(python, bundle, "--selftest")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert meta["model"] in broken.stdout + broken.stderr


def test_selftest_catches_a_model_that_computes_differently(tiny_checkpoint, lean_envs, tmp_path):
    """Golden outputs that no longer match (as an engine built wrongly on the device would give) fail the check,
    even when every file's sum is right."""
    out = tmp_path / "bundle"
    deploy(tiny_checkpoint, out, DeployConfig(device="raspberry-pi-5", precision="fp32", preprocess=False,
                                              measure=False))
    meta = json.loads((out / META).read_text())
    expected = dict(np.load(out / meta["golden"]["expected"]))
    expected["logits"] = expected["logits"][::-1].copy()  # another image's answers
    with open(out / meta["golden"]["expected"], "wb") as f:
        np.savez(f, **expected)
    from edgeres.deploy.bundle import _write_sums

    _write_sums(out)
    check = _run(lean_envs["onnxruntime"], out, "--selftest")
    assert check.returncode == 1, check.stdout + check.stderr


def test_archive_readme_figures_and_replacing_a_bundle(tiny_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    result = deploy(tiny_checkpoint, out, DeployConfig(device="raspberry-pi-5", precision="fp32", preprocess=False,
                                                       archive=True))
    readme = (out / "README.md").read_text()
    measured = result["measured"]
    assert measured["host_p50_ms"] > 0 and measured["estimate_ms"] > 0 and 20 < measured["selftest_peak_mb"] < 1000
    assert f"{measured['host_p50_ms']:.3f} ms | measured on this host" in readme
    assert f"{measured['estimate_ms']:.3f} ms | **estimate**" in readme
    assert json.loads((out / META).read_text())["golden"]["origin"].startswith("the first 4 test-split images")
    with tarfile.open(tmp_path / "bundle.tar.gz") as tar:
        names = tar.getnames()
    assert all(n == "bundle" or n.startswith("bundle/") for n in names) and f"bundle/{SUMS}" in names
    (out / "stale.txt").write_text("from an earlier bundle")
    deploy(tiny_checkpoint, out, DeployConfig(device="raspberry-pi-5", precision="fp32", preprocess=False,
                                              measure=False))
    assert not (out / "stale.txt").exists() and "README.md" in (out / SUMS).read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no scratch left behind


def test_deploy_refuses_bad_input_with_exit_2(tiny_checkpoint, tmp_path):
    user_folder = tmp_path / "mine"
    user_folder.mkdir()
    (user_folder / "notes.txt").write_text("keep me")
    with pytest.raises(UserInputError, match="not a bundle"):
        deploy(tiny_checkpoint, user_folder, DeployConfig(device="raspberry-pi-5", measure=False))
    assert (user_folder / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserInputError, match="not a checkpoint"):
        deploy(tmp_path / "nothing", tmp_path / "b", DeployConfig(device="raspberry-pi-5", measure=False))
    for args in (["--device", "no-such-board"], ["--device", "raspberry-pi-5", "--frame", "640by480"],
                 ["--device", "raspberry-pi-5", "--precision", "int4"]):
        res = subprocess.run([sys.executable, "-m", "edgeres.cli", "deploy", str(tiny_checkpoint), "--out",
                              str(tmp_path / "c"), *args], capture_output=True, text=True)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Camera-sized frames: digits and shapes scenes as 64x48 RGB pictures, the size the graph is built for."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("frames")
    for k, image in enumerate(load_digits().images[:3]):
        pixels = (image / 16 * 255).round().astype(np.uint8)
        Image.fromarray(pixels, mode="L").convert("RGB").resize((64, 48), Image.NEAREST).save(folder / f"d{k}.png")
    rng = np.random.default_rng(5)
    for k in range(3):
        pixels, _, _ = render_scene(64, rng)
        Image.fromarray(pixels[:48]).save(folder / f"s{k}.png")
    return folder


@pytest.mark.parametrize("kind,device,backend", [
    ("classifier", "raspberry-pi-5", "onnxruntime"),
    ("detector", "x86-cpu", "openvino"),
])
def test_in_graph_preprocessing_takes_frames_and_predicts_as_edgeres(kind, device, backend, tiny_checkpoint,
                                                                      detector, frames, lean_envs, tmp_path):
    """With --frame the graph takes the camera's uint8 frames (resize or letterbox, layout, normalisation inside);
    infer.py on those frames predicts what edgeres predicts from the same pictures with its host preprocessing."""
    source = tiny_checkpoint if kind == "classifier" else detector
    out = tmp_path / "bundle"
    deploy(source, out, DeployConfig(device=device, precision="fp32", frame=(48, 64), measure=False))
    meta = json.loads((out / META).read_text())
    assert meta["backend"] == backend
    assert meta["input"]["in_graph_preprocess"] and meta["input"]["dtype"] == "uint8"
    assert list(meta["input"]["frame"]) == [48, 64]
    assert np.load(out / meta["golden"]["inputs"]).dtype == np.uint8  # the golden inputs are frames too
    # OpenVINO copies a read-only frame: the README says what to hand it
    assert ("writeable C-contiguous" in (out / "README.md").read_text()) == (backend == "openvino")
    bundle = _on_device(out, tmp_path)
    python = lean_envs[backend]
    check = _run(python, bundle, "--selftest")
    assert check.returncode == 0, check.stdout + check.stderr
    images = tmp_path / "images"
    images.mkdir()
    for f in frames.glob("d*.png" if kind == "classifier" else "s*.png"):
        shutil.copy(f, images / f.name)
    run = _run(python, bundle, images, "--out", tmp_path / "pred")
    assert run.returncode == 0, run.stdout + run.stderr
    ours = json.loads((tmp_path / "pred" / PREDICTIONS_FILE).read_text())["predictions"]
    reference = predict_images(source, images, tmp_path / "ref")["predictions"]
    _compare(ours, reference, meta["task"])
