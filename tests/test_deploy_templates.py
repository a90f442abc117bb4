"""The on-target templates a bundle carries (export/templates/): infer.py predicts what `edgeres predict` predicts
without torch or edgeres and checks itself against golden outputs; the TensorRT builders pick the calls and flags
of TensorRT 8.x, 10.x and 11.x (checked against stand-ins here, against the real one where a GPU exists); the
DeepStream configs carry the model's preprocessing."""
from __future__ import annotations

import configparser
import dataclasses
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import edgeres.letterbox
from edgeres import runtime
from edgeres.artifacts import sha256_file
from edgeres.data.detect.shapes_det import render_scene
from edgeres.deploy import templates
from edgeres.export.onnx import export_onnx
from edgeres.export.tensorrt import prepare_tensorrt
from edgeres.export.tensorrt.convert import engine_builder
from edgeres.letterbox import letterbox_boxes, letterbox_geometry
from edgeres.meta import ModelMeta
from edgeres.models import create
from edgeres.predict import PREDICTIONS_FILE, predict_images
from edgeres.runtime.tensorrt import unavailable_reason
from edgeres.tasks import get_task
from edgeres.tasks.classify_predict import TOP_K
from edgeres.tasks.detect_compare import compare_detections
from edgeres.tasks.detect_metrics import MAX_DET
from edgeres.tasks.detect_predict import PREDICT_CONF

CLS_IMG, DET_IMG = 24, 64
# Runs infer.py as a device would: torch, torchvision and edgeres cannot be imported, and none may be loaded after.
ON_DEVICE = """
import runpy, sys
AWAY = ("torch", "torchvision", "edgeres")
class NotOnTheDevice:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in AWAY:
            raise ImportError(f"{name} is not installed on the device")
sys.meta_path.insert(0, NotOnTheDevice())
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
    code = 0
except SystemExit as e:
    code = e.code
leaked = sorted({m.split(".")[0] for m in sys.modules} & set(AWAY))
if leaked:
    print(f"infer.py imported {leaked}", file=sys.stderr)
    sys.exit(99)
sys.exit(code)
"""


def run_infer(bundle: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ON_DEVICE, "infer.py", *map(str, args)], cwd=bundle,
                          capture_output=True, text=True, timeout=120)


def make_bundle(folder: Path, model: Path, meta: dict, golden: np.ndarray, extra: tuple[Path, ...] = ()) -> Path:
    """A minimal bundle as the contract lays it out: infer.py, letterbox.py, the model, meta.json, golden inputs
    with the outputs edgeres's own Runner gives for them, and SHA256SUMS over all of it."""
    folder.mkdir(parents=True)
    shutil.copyfile(templates.template_path("infer.py"), folder / "infer.py")
    shutil.copyfile(edgeres.letterbox.__file__, folder / "letterbox.py")
    for path in (model, *extra):
        shutil.copyfile(path, folder / path.name)
    (folder / "golden").mkdir()
    np.save(folder / "golden" / "inputs.npy", golden, allow_pickle=False)
    if golden.dtype == np.uint8:  # frames for a graph that preprocesses: the Runner would feed floats
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": golden})))
    else:
        expected = runtime.load(model, precision="fp32").run(golden)
    np.savez(folder / "golden" / "expected.npz", **expected)
    (folder / "meta.json").write_text(json.dumps(dict(meta, model=model.name)))
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}" for p in sorted(folder.rglob("*")) if p.is_file()]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return folder


def contract_meta(model: Path, input_fields: dict, postprocess: dict, outputs: list[str]) -> dict:
    m = runtime.load(model).meta
    return {"format_version": 1, "task": m.task, "backend": "onnxruntime", "model": model.name, "onnx": None,
            "precision": "fp32", "threads": 1,
            "input": {"name": "input", "img_size": m.img_size, "in_chans": m.in_chans, "mean": list(m.mean),
                      "std": list(m.std), "color": "RGB", "in_graph_preprocess": False, "layout": "NCHW",
                      "dtype": "float32", **input_fields},
            "outputs": outputs, "class_names": list(m.class_names), "postprocess": postprocess,
            "tolerance": dataclasses.asdict(get_task(m.task).tolerance("fp32")),
            "golden": {"inputs": "golden/inputs.npy", "expected": "golden/expected.npz"},
            "source": {"checkpoint_sha256": None, "artifact": model.name, "edgeres_version": None}}


def golden_inputs(model: Path, frames: list[np.ndarray]) -> np.ndarray:
    runner = runtime.load(model)
    task = get_task(runner.meta.task)
    return np.stack([task.prepare(Image.fromarray(f), runner.meta)[0] for f in frames])


# --- fixtures: a tiny classifier and a tiny detector, exported to ONNX, and images of every awkward kind ---

@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A random test_se_resnet whose head is scaled up, so its classes are far apart (no near-ties to flip)."""
    torch.manual_seed(0)
    model = create("test_se_resnet", num_classes=5).eval()
    with torch.no_grad():
        model.fc.weight.mul_(20)
    meta = ModelMeta(arch="test_se_resnet", num_classes=5, img_size=CLS_IMG,
                     class_names=["ant", "bee", "cat", "dog", "eel"], mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    path = tmp_path_factory.mktemp("cls") / "model.onnx"
    export_onnx(model, meta, path)
    return path


@pytest.fixture(scope="module")
def detector(random_detector, tmp_path_factory) -> Path:
    """The random test_yolo of conftest (it finds boxes) as an ONNX file."""
    from edgeres.checkpoint import load_checkpoint

    model, meta = load_checkpoint(random_detector)
    path = tmp_path_factory.mktemp("det") / "model.onnx"
    export_onnx(model.eval(), meta, path)
    return path


def smooth_rgb(rng, h: int, w: int) -> np.ndarray:
    coarse = rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Larger and smaller than the input, grey, 16-bit grey, RGBA, and a JPEG turned by its EXIF orientation."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    Image.fromarray(smooth_rgb(rng, 40, 56)).save(folder / "big.png")
    Image.fromarray(smooth_rgb(rng, 15, 18)).save(folder / "small.png")
    Image.fromarray(smooth_rgb(rng, 30, 30)).convert("L").save(folder / "grey.png")
    Image.fromarray((smooth_rgb(rng, 26, 31)[..., 0].astype(np.uint16) * 200)).save(folder / "deep.png")
    Image.fromarray(np.dstack([smooth_rgb(rng, 33, 27), np.full((33, 27), 200, np.uint8)])).save(folder / "alpha.png")
    (folder / "nested").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown turned 90 degrees
    Image.fromarray(smooth_rgb(rng, 30, 50)).save(folder / "nested" / "turned.jpg", exif=exif, quality=95)
    return folder


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """shapes-det scenes cropped to frames that are not square (letterbox pads them), one turned by EXIF."""
    folder = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(3)
    for k, (h, w) in enumerate([(90, 160), (120, 100), (128, 128), (70, 110)]):
        pixels, _, _ = render_scene(max(h, w), rng)
        exif = Image.Exif()
        exif[0x0112] = 8 if k == 3 else 1
        Image.fromarray(pixels[:h, :w]).save(folder / f"scene_{k}.jpg", quality=95, exif=exif)
    return folder


@pytest.fixture(scope="module")
def cls_bundle(classifier, tmp_path_factory) -> Path:
    rng = np.random.default_rng(7)
    meta = contract_meta(classifier, {"resize": "resize"}, {"top_k": TOP_K}, ["logits"])
    golden = golden_inputs(classifier, [smooth_rgb(rng, 30, 40) for _ in range(4)])
    return make_bundle(tmp_path_factory.mktemp("b") / "cls", classifier, meta, golden)


@pytest.fixture(scope="module")
def det_bundle(detector, tmp_path_factory) -> Path:
    rng = np.random.default_rng(8)
    meta = contract_meta(detector, {"resize": "letterbox", "pad_value": 114},
                         {"conf": PREDICT_CONF, "iou": 0.6, "max_det": MAX_DET, "nms_in_graph": False},
                         ["boxes", "scores"])
    golden = golden_inputs(detector, [render_scene(DET_IMG, rng)[0][:50] for _ in range(3)])
    return make_bundle(tmp_path_factory.mktemp("b") / "det", detector, meta, golden)


@pytest.fixture(scope="module")
def infer(tmp_path_factory):
    """export/templates/infer.py as a module (with the letterbox.py a bundle puts beside it), to check its parts."""
    folder = tmp_path_factory.mktemp("infer")
    shutil.copyfile(templates.template_path("infer.py"), folder / "infer.py")
    shutil.copyfile(edgeres.letterbox.__file__, folder / "letterbox.py")
    spec = importlib.util.spec_from_file_location("bundle_infer", folder / "infer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- (1) infer.py predicts what `edgeres predict` predicts, without torch or edgeres ---

def test_classifier_bundle_predicts_as_edgeres_predict(cls_bundle, classifier, photos, tmp_path):
    done = run_infer(cls_bundle, photos, "--out", tmp_path / "ours")
    assert done.returncode == 0, done.stderr
    ours = json.loads((tmp_path / "ours" / PREDICTIONS_FILE).read_text())
    reference = predict_images(classifier, photos, tmp_path / "ref")
    assert ours["task"] == "classification" and ours["images"] == 6
    assert [p["file"] for p in ours["predictions"]] == [p["file"] for p in reference["predictions"]]
    for a, b in zip(ours["predictions"], reference["predictions"]):
        assert (a["width"], a["height"], a["class"], a["class_id"]) == (b["width"], b["height"], b["class"],
                                                                        b["class_id"]), a["file"]
        assert [t["class_id"] for t in a["top"]] == [t["class_id"] for t in b["top"]]
        np.testing.assert_allclose([t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]],
                                   atol=1e-3)
    turned = next(p for p in ours["predictions"] if p["file"] == "nested/turned.jpg")
    assert (turned["width"], turned["height"]) == (30, 50)  # EXIF orientation applied, as edgeres does
    assert len({p["class_id"] for p in ours["predictions"]}) > 1  # the comparison compared different answers


def test_detector_bundle_predicts_as_edgeres_predict(det_bundle, detector, scenes, tmp_path):
    done = run_infer(det_bundle, scenes, "--out", tmp_path / "ours", "--batch-size", "3")
    assert done.returncode == 0, done.stderr
    ours = json.loads((tmp_path / "ours" / PREDICTIONS_FILE).read_text())["predictions"]
    reference = predict_images(detector, scenes, tmp_path / "ref")["predictions"]
    assert [p["file"] for p in ours] == [p["file"] for p in reference]
    for a, b in zip(ours, reference):
        assert (a["width"], a["height"]) == (b["width"], b["height"])
        assert [d["class_id"] for d in a["detections"]] == [d["class_id"] for d in b["detections"]], a["file"]
        for da, db in zip(a["detections"], b["detections"]):
            assert abs(da["score"] - db["score"]) < 1e-3
            np.testing.assert_allclose(da["box_xyxy"], db["box_xyxy"], atol=0.5)
    assert sum(len(p["detections"]) for p in reference) >= 4  # boxes were compared
    assert (ours[3]["width"], ours[3]["height"]) == (70, 110)  # EXIF-turned scene


def test_numpy_nms_keeps_what_torchvision_batched_nms_keeps(infer):
    from torchvision.ops import batched_nms

    nms = infer.nms
    rng = np.random.default_rng(0)
    # Over 1000 candidates: torchvision runs NMS class by class on the boxes as they are (below that it shifts
    # each class's boxes apart, which rounds their coordinates differently).
    for trial in range(5):
        xy = rng.uniform(0, 60, (300, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + rng.uniform(2, 25, (300, 2)).astype(np.float32)], axis=1)
        scores = rng.uniform(0, 1, (300, 4)).astype(np.float32)
        ours = nms(boxes, scores, conf=0.1, iou=0.5, max_det=50 + trial * 40)
        box_i, cls = np.nonzero(scores > 0.1)
        assert len(box_i) > 1000
        keep = batched_nms(torch.from_numpy(boxes[box_i]), torch.from_numpy(scores[box_i, cls]),
                           torch.from_numpy(cls), 0.5)[:50 + trial * 40].numpy()
        assert len(ours) == len(keep) > 10
        np.testing.assert_array_equal(ours[:, :4], boxes[box_i[keep]])
        np.testing.assert_array_equal(ours[:, 5], cls[keep])


@pytest.mark.parametrize("classes", [10, 100])  # either side of SMALL_SOFTMAX: plain Python, then numpy
def test_bundle_classify_ranks_and_scores_as_edgeres_describe(infer, classes):
    from edgeres.tasks.classify_predict import TOP_K, describe

    assert (classes > infer.SMALL_SOFTMAX) == (classes == 100)
    rng = np.random.default_rng(classes)
    logits = rng.normal(0, 3, (6, classes)).astype(np.float32)
    logits[1, :4] = logits[1].max() + 1  # a four-way tie on top: both keep the lower class id first
    logits[2] = 0  # every class tied
    names = [f"c{i}" for i in range(classes)]
    ours = infer.classify({"logits": logits}, [None] * 6, {"class_names": names, "postprocess": {"top_k": TOP_K}})
    theirs = describe({"logits": logits}, [None] * 6, names)
    assert [[t["class_id"] for t in r["top"]] for r in ours] == [[t["class_id"] for t in r["top"]] for r in theirs]
    assert [t["class_id"] for t in ours[1]["top"][:4]] == [0, 1, 2, 3]
    assert [r["class"] for r in ours] == [r["class"] for r in theirs] and len(ours[0]["top"]) == TOP_K
    np.testing.assert_allclose([[t["probability"] for t in r["top"]] for r in ours],
                               [[t["probability"] for t in r["top"]] for r in theirs], rtol=1e-12)
    assert all(type(r["class_id"]) is int and type(r["probability"]) is float for r in ours)


def test_frames_for_a_graph_that_preprocesses_map_boxes_back(infer):
    """uint8 frames go to the graph as they are (resized only to a fixed frame); boxes the graph finds in its
    letterboxed input map back to the image through the same geometry."""
    image = Image.fromarray(smooth_rgb(np.random.default_rng(2), 100, 200))
    truth = np.array([[20.0, 10.0, 150.0, 90.0]], np.float32)
    for fixed in (None, [50, 50]):
        inp = {"img_size": DET_IMG, "frame": fixed, "in_graph_preprocess": True}
        x, context = infer.frame(image, inp)
        assert x.dtype == np.uint8 and x.shape == ((100, 200, 3) if fixed is None else (50, 50, 3))
        if fixed is None:
            np.testing.assert_array_equal(x, np.asarray(image))
        fh, fw = x.shape[:2]
        scale, _, pad = letterbox_geometry(fw, fh, DET_IMG)
        in_frame = truth * np.array([fw / 200, fh / 100, fw / 200, fh / 100], np.float32)
        in_graph = letterbox_boxes(in_frame, scale, pad)
        outputs = {"detections": np.concatenate([in_graph, [[0.9, 1]]], axis=1)[None].astype(np.float32)}
        meta = {"class_names": ["a", "b"], "postprocess": {"conf": 0.25, "iou": 0.6, "max_det": 10}}
        found = infer.detect(outputs, [context], meta)[0]["detections"]
        assert [d["class"] for d in found] == ["b"]
        np.testing.assert_allclose(found[0]["box_xyxy"], truth[0], atol=0.05)


@pytest.mark.parametrize("kind", ["cls", "det"])
def test_bundle_with_preprocessing_in_the_graph_feeds_frames_and_predicts_alike(kind, classifier, detector, tmp_path):
    """infer.py hands a graph with preprocessing inside the uint8 RGB frame itself and maps a detector's boxes
    back through the graph's letterbox; predictions agree with `edgeres predict` on the plain model (the graph
    does not round its resize to integers as PIL does, so within export tolerance rather than exactly)."""
    preprocess = pytest.importorskip("edgeres.export.preprocess")
    plain = classifier if kind == "cls" else detector
    rng = np.random.default_rng(11)
    frame = (48, 80)
    images = tmp_path / "frames"
    images.mkdir()
    for k in range(3):
        pixels = smooth_rgb(rng, *frame) if kind == "cls" else render_scene(max(frame), rng)[0][:frame[0], :frame[1]]
        Image.fromarray(pixels).save(images / f"frame_{k}.png")
    graph = tmp_path / "graph" / "model.onnx"
    graph.parent.mkdir()
    spec = preprocess.add_onnx_preprocess(plain, graph, frame=None if kind == "cls" else frame)
    task = "classification" if kind == "cls" else "detection"
    meta = contract_meta(plain, {"resize": "resize"} if kind == "cls" else {"resize": "letterbox", "pad_value": 114},
                         {"top_k": TOP_K} if kind == "cls" else
                         {"conf": PREDICT_CONF, "iou": 0.6, "max_det": MAX_DET, "nms_in_graph": False},
                         ["logits"] if kind == "cls" else ["boxes", "scores"])
    meta["input"].update(spec, in_graph_preprocess=True)
    assert meta["input"]["layout"] == "NHWC" and meta["input"]["dtype"] == "uint8" and meta["task"] == task
    golden = np.stack([np.asarray(Image.open(p)) for p in sorted(images.iterdir())])
    bundle = make_bundle(tmp_path / "bundle", graph, meta, golden)
    done = run_infer(bundle, "--selftest")
    assert done.returncode == 0, done.stdout + done.stderr
    done = run_infer(bundle, images, "--out", tmp_path / "ours")
    assert done.returncode == 0, done.stderr
    ours = json.loads((tmp_path / "ours" / PREDICTIONS_FILE).read_text())["predictions"]
    reference = predict_images(plain, images, tmp_path / "ref")["predictions"]
    for a, b in zip(ours, reference):
        if kind == "cls":
            assert a["class_id"] == b["class_id"]
            np.testing.assert_allclose([t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]],
                                       atol=2e-2)
    if kind == "det":  # near-tied scores may swap places: compare as the export comparator does, matched boxes
        rows = [[np.array([[*d["box_xyxy"], d["score"], d["class_id"]] for d in p["detections"]], np.float32)
                 .reshape(-1, 6) for p in side] for side in (reference, ours)]
        stats = compare_detections(*rows)
        assert stats["reference_detections"] >= 4 and stats["mean_iou"] > 0.98, stats
        assert stats["reference_found"] >= 0.95 and stats["candidate_found"] >= 0.95, stats


# --- (2) --selftest: sums, then the golden outputs ---

@pytest.mark.parametrize("kind", ["cls", "det"])
def test_selftest_passes_and_names_a_changed_model_file(kind, cls_bundle, det_bundle, tmp_path):
    bundle = shutil.copytree(cls_bundle if kind == "cls" else det_bundle, tmp_path / "device")
    done = run_infer(bundle, "--selftest")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "selftest passed" in done.stdout and ("logit_cosine" if kind == "cls" else "mean_iou") in done.stdout
    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    broken = run_infer(bundle, "--selftest")
    assert broken.returncode == 1 and "model.onnx changed" in broken.stdout, broken.stdout + broken.stderr
    (bundle / "golden" / "inputs.npy").unlink()
    gone = run_infer(bundle, "--selftest")
    assert gone.returncode == 1 and "golden/inputs.npy is missing" in gone.stdout


def test_selftest_fails_when_the_device_computes_something_else(cls_bundle, tmp_path):
    """Golden outputs that the model does not reproduce (SHA256SUMS updated, so only the comparison can tell)."""
    bundle = shutil.copytree(cls_bundle, tmp_path / "device")
    with np.load(bundle / "golden" / "expected.npz") as npz:
        logits = npz["logits"]
    np.savez(bundle / "golden" / "expected.npz", logits=logits[:, ::-1].copy())
    lines = [line if not line.endswith("golden/expected.npz") else
             f"{sha256_file(bundle / 'golden' / 'expected.npz')}  golden/expected.npz"
             for line in (bundle / "SHA256SUMS").read_text().splitlines()]
    (bundle / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    done = run_infer(bundle, "--selftest")
    assert done.returncode == 1 and "top-1 agreement" in done.stdout and "logit cosine" in done.stdout, done.stdout


def test_bad_input_exits_2_with_one_line(cls_bundle, photos, tmp_path):
    cases = [(("nowhere", "--out", tmp_path / "o"), "does not exist"),
             ((photos, "--threads", "0", "--out", tmp_path / "o"), "--threads must be a positive"),
             ((photos,), "give IMAGES and --out"),
             ((photos, "--out", tmp_path / "o", "--backend", "tensorrt"), "cannot run on tensorrt")]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    cases.append(((broken, "--out", tmp_path / "o"), "cannot read image"))
    for args, message in cases:
        done = run_infer(cls_bundle, *args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(cls_bundle / "infer.py", alone / "infer.py")
    shutil.copyfile(cls_bundle / "letterbox.py", alone / "letterbox.py")
    done = run_infer(alone, "--selftest")
    assert done.returncode == 2 and "meta.json is missing" in done.stderr


@pytest.mark.slow
def test_openvino_bundle_predicts_as_edgeres_predict(classifier, photos, tmp_path):
    """The same classifier as an OpenVINO IR: fp32 bundles compute in f32 (the plugin would pick bf16 here)."""
    from edgeres.export.openvino import export_openvino

    torch.manual_seed(0)
    model = create("test_se_resnet", num_classes=5).eval()
    with torch.no_grad():
        model.fc.weight.mul_(20)
    xml = tmp_path / "ir" / "model.xml"
    export_openvino(model, runtime.load(classifier).meta, xml)
    meta = contract_meta(xml, {"resize": "resize"}, {"top_k": TOP_K}, ["logits"])
    golden = golden_inputs(xml, [smooth_rgb(np.random.default_rng(5), 28, 28) for _ in range(2)])
    bundle = make_bundle(tmp_path / "bundle", xml, dict(meta, backend="openvino"), golden,
                         extra=(xml.with_suffix(".bin"),))
    done = run_infer(bundle, "--selftest")
    assert done.returncode == 0, done.stdout + done.stderr
    done = run_infer(bundle, photos, "--out", tmp_path / "ours")
    assert done.returncode == 0, done.stderr
    ours = json.loads((tmp_path / "ours" / PREDICTIONS_FILE).read_text())
    reference = predict_images(xml, photos, tmp_path / "ref", precision="fp32")
    assert ours["runner"]["backend"] == "openvino" and ours["runner"]["inference_precision"] == "f32"
    for a, b in zip(ours["predictions"], reference["predictions"]):
        assert a["class_id"] == b["class_id"], a["file"]
        np.testing.assert_allclose([t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]],
                                   atol=1e-3)


# --- (3) the TensorRT builders against stand-ins of TensorRT 8.2, 8.5, 10 and 11 ---

FAKE_TENSORRT = '''
"""A stand-in for the tensorrt package at FAKE_TRT_VERSION: records calls; what that version lacks raises."""
import json
import os

__version__ = os.environ["FAKE_TRT_VERSION"]
MAJOR, MINOR = (int(v) for v in __version__.split(".")[:2])
CALLS = []
INPUT_SHAPE = tuple(json.loads(os.environ.get("FAKE_TRT_INPUT", "[-1, 3, 32, 32]")))


def record(*call):
    CALLS.append(list(call))
    if os.environ.get("FAKE_TRT_LOG"):
        with open(os.environ["FAKE_TRT_LOG"], "a") as f:
            f.write(json.dumps(list(call)) + "\\n")


class Names:
    """An enum holding only this version's members; reading a deprecated one is recorded."""

    def __init__(self, kind, present, deprecated=()):
        self._kind, self._present, self._deprecated = kind, present, set(deprecated)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._deprecated:
            record("deprecated", self._kind + "." + name)
        if name not in self._present:
            raise AttributeError(f"tensorrt {__version__} has no {self._kind}.{name}")
        return self._present[name]


if MAJOR < 10:
    NetworkDefinitionCreationFlag = Names("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0})
elif MAJOR == 10:
    NetworkDefinitionCreationFlag = Names("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
                                          deprecated={"EXPLICIT_BATCH"})
else:
    NetworkDefinitionCreationFlag = Names("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1},
                                          deprecated={"STRONGLY_TYPED"})
BuilderFlag = Names("BuilderFlag", {} if MAJOR >= 11 else {"FP16": "FP16", "INT8": "INT8"})
if (MAJOR, MINOR) >= (8, 4):
    MemoryPoolType = Names("MemoryPoolType", {"WORKSPACE": "WORKSPACE"})
LayerType = Names("LayerType", {k: k for k in ("CONVOLUTION", "QUANTIZE", "DEQUANTIZE")})
DataType = Names("DataType", {"FLOAT": "FLOAT", "HALF": "HALF"})


class Logger:
    WARNING, VERBOSE = 2, 4

    def __init__(self, level):
        pass


def init_libnvinfer_plugins(logger, namespace):
    record("init_libnvinfer_plugins")


class Tensor:
    def __init__(self, name, shape, dtype):
        self.name, self.shape, self.dtype = name, shape, dtype


class Layer:
    num_outputs = 1

    def __init__(self, kind, dtype):
        self.type, self._out = kind, Tensor("out", (), dtype)

    def get_output(self, i):
        return self._out


class Network:
    num_inputs = 1

    def __init__(self):
        conv = Layer("CONVOLUTION", "HALF" if os.environ.get("FAKE_TRT_HALF") else "FLOAT")
        qdq = [Layer("QUANTIZE", "FLOAT"), Layer("DEQUANTIZE", "FLOAT")] if os.environ.get("FAKE_TRT_QDQ") else []
        self._layers = [conv, *qdq]
        self.num_layers = len(self._layers)

    def get_layer(self, i):
        return self._layers[i]

    def get_input(self, i):
        return Tensor("input", INPUT_SHAPE, "FLOAT")


class OnnxParser:
    num_errors = 0

    def __init__(self, network, logger):
        pass

    def parse_from_file(self, path):
        record("parse_from_file", os.path.basename(path))
        return True


class Profile:
    def set_shape(self, name, lo, opt, hi):
        record("set_shape", name, list(lo), list(opt), list(hi))


class TimingCache:
    def serialize(self):
        return b"timings"


class Config:
    def __setattr__(self, name, value):
        if name == "max_workspace_size" and MAJOR < 10:
            record("max_workspace_size", value)
            return
        raise AttributeError(f"tensorrt {__version__}: IBuilderConfig has no attribute {name}")

    if (MAJOR, MINOR) >= (8, 4):
        def set_memory_pool_limit(self, pool, size):
            record("set_memory_pool_limit", pool, size)

    def set_flag(self, flag):
        record("set_flag", flag)

    def add_optimization_profile(self, profile):
        record("add_optimization_profile")

    def create_timing_cache(self, data):
        return TimingCache()

    def set_timing_cache(self, cache, ignore_mismatch):
        record("set_timing_cache")

    def get_timing_cache(self):
        return TimingCache()


class Builder:
    def __init__(self, logger):
        pass

    def create_network(self, flags):
        record("create_network", flags)
        return Network()

    def create_builder_config(self):
        return Config()

    def create_optimization_profile(self):
        return Profile()

    def build_serialized_network(self, network, config):
        record("build_serialized_network")
        return b"a serialized engine"
'''


@pytest.fixture
def fake_tensorrt(tmp_path, monkeypatch):
    """fake(version, qdq=False, half=False): the stand-in imported as `tensorrt` here (and by subprocesses given
    PYTHONPATH=its folder); returns its recorded calls."""
    folder = tmp_path / "fake_trt"
    (folder / "tensorrt").mkdir(parents=True)
    (folder / "tensorrt" / "__init__.py").write_text(FAKE_TENSORRT)

    def fake(version: str, qdq: bool = False, half: bool = False):
        monkeypatch.setenv("FAKE_TRT_VERSION", version)
        for name, on in (("FAKE_TRT_QDQ", qdq), ("FAKE_TRT_HALF", half)):
            monkeypatch.setenv(name, "1") if on else monkeypatch.delenv(name, raising=False)
        spec = importlib.util.spec_from_file_location("tensorrt", folder / "tensorrt" / "__init__.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        return module.CALLS

    fake.folder = folder
    return fake


def _build(tmp_path, precision: str, **kwargs):
    return engine_builder().build(str(tmp_path / "model.onnx"), str(tmp_path / "m.engine"), precision=precision,
                                  min_batch=1, opt_batch=2, max_batch=4, workspace_mb=512,
                                  timing_cache=str(tmp_path / "timing.cache"), **kwargs)


def _names(calls, kind):
    return [c[1:] for c in calls if c[0] == kind]


@pytest.mark.parametrize("version,flags,workspace", [
    ("8.2.1", 1, ("max_workspace_size", 512 << 20)),  # EXPLICIT_BATCH; JetPack 4.6 has no memory pools
    ("8.5.2", 1, ("set_memory_pool_limit", "WORKSPACE", 512 << 20)),
    ("10.3.0", 0, ("set_memory_pool_limit", "WORKSPACE", 512 << 20)),  # explicit batch is the only mode
])
def test_weakly_typed_builds_before_11_set_precision_flags(version, flags, workspace, fake_tensorrt, tmp_path):
    calls = fake_tensorrt(version, qdq=True)
    built = _build(tmp_path, "int8")
    assert _names(calls, "create_network") == [[flags]]
    assert [c for c in calls if c[0] == workspace[0]] == [list(workspace)]
    assert _names(calls, "set_flag") == [["FP16"], ["INT8"]]  # int8 from the QDQ scales, float layers in fp16
    assert _names(calls, "set_shape") == [["input", [1, 3, 32, 32], [2, 3, 32, 32], [4, 3, 32, 32]]]
    assert not _names(calls, "deprecated") and ["build_serialized_network"] in calls
    assert (tmp_path / "m.engine").read_bytes() == b"a serialized engine"
    assert (tmp_path / "timing.cache").read_bytes() == b"timings"
    assert built["strongly_typed"] is False and built["tensorrt"] == version
    calls.clear()
    _build(tmp_path, "fp32")
    assert _names(calls, "set_flag") == []
    with pytest.raises(ValueError, match="explicitly quantized"):
        fake_tensorrt(version, qdq=False)
        _build(tmp_path, "int8")


def test_tensorrt_10_strongly_typed_takes_types_from_the_onnx(fake_tensorrt, tmp_path):
    calls = fake_tensorrt("10.3.0", qdq=True)
    built = _build(tmp_path, "int8", strongly_typed=True)
    assert _names(calls, "create_network") == [[1 << 1]] and _names(calls, "set_flag") == []
    assert built["strongly_typed"] is True and built["fp16_fallback"] is False
    fake_tensorrt("8.5.2", qdq=True)
    with pytest.raises(ValueError, match="need TensorRT 10"):
        _build(tmp_path, "int8", strongly_typed=True)


def test_tensorrt_11_builds_strongly_typed_without_the_removed_flags(fake_tensorrt, tmp_path):
    calls = fake_tensorrt("11.0.0", qdq=True)
    built = _build(tmp_path, "int8")  # BuilderFlag.INT8 / FP16 would raise on this stand-in
    assert _names(calls, "create_network") == [[0]] and _names(calls, "set_flag") == []
    assert not _names(calls, "deprecated") and built["strongly_typed"] is True
    assert "QDQ" in built["notes"][0]
    fake_tensorrt("11.0.0")
    with pytest.raises(ValueError, match="modelopt.onnx.autocast"):
        _build(tmp_path, "fp16")  # a float32 ONNX cannot become fp16 without weak typing
    calls = fake_tensorrt("11.0.0", half=True)
    _build(tmp_path, "fp16")
    assert ["build_serialized_network"] in calls


def test_frames_of_any_size_need_a_frame_range(fake_tensorrt, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRT_INPUT", "[-1, -1, -1, 3]")
    calls = fake_tensorrt("10.3.0")
    with pytest.raises(ValueError, match="--frame-sizes"):
        _build(tmp_path, "fp32")
    _build(tmp_path, "fp32", frame_sizes=[[240, 320], [480, 640], [1080, 1920]])
    assert _names(calls, "set_shape") == [["input", [1, 240, 320, 3], [2, 480, 640, 3], [4, 1080, 1920, 3]]]


BUNDLE_DEFAULTS = {"onnx": "model.int8.qdq.onnx", "engine": "model.engine", "precision": "int8", "min_batch": 1,
                   "opt_batch": 2, "max_batch": 4, "workspace_mb": 512, "fp16_fallback": True,
                   "timing_cache": "timing.cache", "meta": "meta.json"}


def test_rendered_build_engine_py_runs_on_each_version(fake_tensorrt, tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "build_engine.py").write_text(templates.render_build_engine(BUNDLE_DEFAULTS))
    (bundle / "meta.json").write_text(json.dumps({"task": "classification"}))
    (bundle / "model.int8.qdq.onnx").write_bytes(b"onnx")
    for version, flags in (("8.5.2", [["FP16"], ["INT8"]]), ("10.3.0", [["FP16"], ["INT8"]]), ("11.0.0", [])):
        log = tmp_path / f"calls-{version}.jsonl"
        env = dict(os.environ, PYTHONPATH=str(fake_tensorrt.folder), FAKE_TRT_VERSION=version, FAKE_TRT_QDQ="1",
                   FAKE_TRT_LOG=str(log))
        done = subprocess.run([sys.executable, "build_engine.py"], cwd=bundle, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        assert _names(calls, "set_flag") == flags and ["parse_from_file", "model.int8.qdq.onnx"] in calls
        sidecar = json.loads((bundle / "model.engine.json").read_text())
        assert sidecar["task"] == "classification" and sidecar["build"]["tensorrt"] == version
    env.update(FAKE_TRT_VERSION="11.0.0", FAKE_TRT_QDQ="")
    done = subprocess.run([sys.executable, "build_engine.py", "--precision", "fp16"], cwd=bundle, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 1 and "autocast" in done.stderr and "Traceback" not in done.stderr


def render_sh(tmp_path, **changes) -> Path:
    script = tmp_path / "build_engine.sh"
    defaults = {**BUNDLE_DEFAULTS, "input_shape": [None, 3, 32, 32], **changes}
    script.write_text(templates.render_build_engine_sh(defaults))
    return script


def dry_run(script: Path, *args) -> list[str]:
    done = subprocess.run(["bash", str(script), "--dry-run", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return shlex.split(done.stdout)


@pytest.mark.parametrize("version,precision_flags,workspace", [
    ("8.2", ["--fp16", "--int8"], "--workspace=512"),
    ("8.5", ["--fp16", "--int8"], "--memPoolSize=workspace:512"),
    ("10.3", ["--fp16", "--int8"], "--memPoolSize=workspace:512"),
    ("11.0", [], "--memPoolSize=workspace:512"),  # strongly typed always: int8 from the QDQ ONNX
])
def test_build_engine_sh_writes_the_trtexec_command_of_each_version(version, precision_flags, workspace, tmp_path):
    script = render_sh(tmp_path)
    subprocess.run(["bash", "-n", str(script)], check=True)
    args = dry_run(script, "--tensorrt-version", version)
    here = str(tmp_path)
    assert args[1:3] == [f"--onnx={here}/model.int8.qdq.onnx", f"--saveEngine={here}/model.engine"]
    assert args[3:] == [*precision_flags, "--minShapes=input:1x3x32x32", "--optShapes=input:2x3x32x32",
                        "--maxShapes=input:4x3x32x32", workspace, f"--timingCacheFile={here}/timing.cache"]


def test_build_engine_sh_options_and_refusals(tmp_path):
    script = render_sh(tmp_path)
    assert "--stronglyTyped" in dry_run(script, "--tensorrt-version", "10.3", "--strongly-typed")
    assert "--fp16" not in dry_run(script, "--tensorrt-version", "10.3", "--strongly-typed")
    fp16 = dry_run(script, "--tensorrt-version", "10.3", "--precision", "fp16", "--max-batch", "8", "out.engine")
    assert "--int8" not in fp16 and "--maxShapes=input:8x3x32x32" in fp16 and "--saveEngine=out.engine" in fp16
    for args, message in ((["--tensorrt-version", "11.0", "--precision", "fp16"], "modelopt.onnx.autocast"),
                          (["--tensorrt-version", "8.5", "--strongly-typed"], "needs TensorRT 10"),
                          (["--precision", "int4"], "fp32, fp16 or int8"),
                          (["--max-batch", "0"], "min batch <= opt batch <= max batch"),
                          (["--frobnicate"], "unknown option")):
        done = subprocess.run(["bash", str(script), "--dry-run", *args], capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
    fixed = render_sh(tmp_path, input_shape=[1, 3, 32, 32])
    assert not any("Shapes=" in a for a in dry_run(fixed, "--tensorrt-version", "10.3"))
    frames = render_sh(tmp_path, input_shape=[None, None, None, 3], frame_sizes=[[240, 320], [480, 640], [720, 1280]])
    assert "--maxShapes=input:4x720x1280x3" in dry_run(frames, "--tensorrt-version", "10.3")


@pytest.mark.parametrize("banner,expected", [
    ("[TensorRT v8201]", "--workspace=512"), ("[TensorRT v8502]", "--int8"), ("[TensorRT v100300]", "--int8"),
    ("[TensorRT v110000]", None)])
def test_build_engine_sh_reads_the_version_from_trtexec_and_runs_it(banner, expected, tmp_path):
    """A stand-in trtexec prints its banner for --help, records the build's arguments and writes the engine."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    script = render_sh(bundle)
    (bundle / "model.int8.qdq.onnx").write_bytes(b"onnx")
    (bundle / "meta.json").write_text("{}")
    fake = tmp_path / "trtexec"
    fake.write_text('#!/usr/bin/env bash\nif [ "$1" = --help ]; then echo "&&&& RUNNING TensorRT.trtexec '
                    f'{banner} # trtexec --help"; exit 0; fi\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n'
                    'for a in "$@"; do case "$a" in --saveEngine=*) echo engine > "${a#--saveEngine=}";; esac; done\n')
    fake.chmod(0o755)
    env = dict(os.environ, TRTEXEC=str(fake), ARGS_FILE=str(tmp_path / "args"))
    done = subprocess.run(["bash", str(script), str(tmp_path / "out.engine")], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    args = (tmp_path / "args").read_text().splitlines()
    assert f"--saveEngine={tmp_path / 'out.engine'}" in args and (tmp_path / "out.engine.json").is_file()
    if expected:
        assert expected in args
    else:
        assert not {"--int8", "--fp16", "--stronglyTyped"} & set(args)


def test_prepare_tensorrt_writes_the_templates_scripts(classifier, tmp_path):
    record = prepare_tensorrt(classifier, tmp_path / "trt", precision="fp16", opt_batch=2, max_batch=4,
                              workspace_mb=256)
    out = tmp_path / "trt"
    assert record["trtexec"][3:] == ["--fp16", "--minShapes=input:1x3x24x24", "--optShapes=input:2x3x24x24",
                                     "--maxShapes=input:4x3x24x24", "--memPoolSize=workspace:256",
                                     "--timingCacheFile=timing.cache"]
    args = dry_run(out / "build_engine.sh", "--tensorrt-version", "10.3")
    assert [a.split("=")[0] for a in args[1:]] == [a.split("=")[0] for a in record["trtexec"][1:]]
    assert args[3:-1] == record["trtexec"][3:-1]
    def body(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("DEFAULTS = ")]

    source = (out / "build_engine.py").read_text()
    assert "DEFAULTS = {'onnx': 'model.onnx', 'engine': 'model.fp16.engine', 'precision': 'fp16'" in source
    assert body(source) == body(templates.template_path("build_engine.py").read_text())


def test_build_script_defaults_are_checked():
    with pytest.raises(ValueError, match="lack"):
        templates.render_build_engine({"onnx": "model.onnx"})
    with pytest.raises(ValueError, match="inside the bundle"):
        templates.render_build_engine({**BUNDLE_DEFAULTS, "onnx": "../elsewhere.onnx"})
    with pytest.raises(ValueError, match="input_shape"):
        templates.render_build_engine_sh(BUNDLE_DEFAULTS)
    with pytest.raises(Exception, match="no template"):
        templates.template_path("../edgeres/cli.py")


# --- (4) the real TensorRT, where there is one ---

NO_TRT = unavailable_reason()


@pytest.mark.skipif(NO_TRT is not None, reason=f"building and running an engine needs an NVIDIA GPU: {NO_TRT}")
def test_real_tensorrt_engine_built_by_the_bundle_script_passes_selftest(cls_bundle, tmp_path):
    if importlib.util.find_spec("cuda") is None and importlib.util.find_spec("pycuda") is None:
        pytest.skip("infer.py's TensorRT runtime needs cuda-python or pycuda for device memory; neither is installed")
    bundle = shutil.copytree(cls_bundle, tmp_path / "trt")
    defaults = {**BUNDLE_DEFAULTS, "onnx": "model.onnx", "precision": "fp16", "meta": None}
    (bundle / "build_engine.py").write_text(templates.render_build_engine(defaults))
    subprocess.run([sys.executable, "build_engine.py"], cwd=bundle, check=True, timeout=600)
    meta = json.loads((bundle / "meta.json").read_text())
    meta.update(backend="tensorrt", model="model.engine", onnx="model.onnx", precision="fp16",
                tolerance=dataclasses.asdict(get_task("classification").tolerance("fp16")))
    (bundle / "meta.json").write_text(json.dumps(meta))
    lines = [line for line in (bundle / "SHA256SUMS").read_text().splitlines() if not line.endswith("meta.json")]
    (bundle / "SHA256SUMS").write_text("\n".join(lines + [f"{sha256_file(bundle / 'meta.json')}  meta.json"]) + "\n")
    done = run_infer(bundle, "--selftest")
    assert done.returncode == 0, done.stdout + done.stderr


# --- DeepStream ---

def _ini(text: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read_string(text)
    return parser


@pytest.mark.parametrize("kind", ["cls", "det"])
def test_deepstream_config_carries_the_model_preprocessing(kind, cls_bundle, det_bundle):
    meta = json.loads(((cls_bundle if kind == "cls" else det_bundle) / "meta.json").read_text())
    text = templates.render_deepstream(meta)
    config = _ini(text)["property"]
    inp = meta["input"]
    assert config["network-type"] == ("1" if kind == "cls" else "0")  # DeepStream: 0 detector, 1 classifier
    assert config["onnx-file"] == "../model.onnx" and config["labelfile-path"] == "labels.txt"
    assert config["network-mode"] == "0" and config["model-color-format"] == "0"
    assert config["infer-dims"] == f"3;{inp['img_size']};{inp['img_size']}"
    offsets = [float(v) for v in config["offsets"].split(";")]
    np.testing.assert_allclose(offsets, np.asarray(inp["mean"]) * 255, rtol=1e-5)
    np.testing.assert_allclose(float(config["net-scale-factor"]), 1 / (255 * np.mean(inp["std"])), rtol=1e-6)
    assert "{" not in text and "}" not in text
    if kind == "cls":
        assert config["maintain-aspect-ratio"] == "0" and "approximated by their mean 0.2500" in text
        assert templates.deepstream_labels(meta) == "ant;bee;cat;dog;eel\n"
    else:
        assert config["maintain-aspect-ratio"] == "1" and config["symmetric-padding"] == "1"
        assert config["cluster-mode"] == "2" and config["num-detected-classes"] == str(len(meta["class_names"]))
        assert _ini(text)["class-attrs-all"]["pre-cluster-threshold"] == str(PREDICT_CONF)
        assert templates.deepstream_labels(meta).splitlines() == meta["class_names"]
    int8_graph_nms = dict(meta, precision="int8", postprocess={**meta["postprocess"], "nms_in_graph": True})
    config = _ini(templates.render_deepstream(int8_graph_nms))["property"]
    assert config["network-mode"] == "1" and (kind == "cls" or config["cluster-mode"] == "4")
