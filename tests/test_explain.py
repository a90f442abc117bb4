"""Explanations: Grad-CAM on checkpoints, occlusion through every Runner, and the drift measures between maps."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from edgeres.checkpoint import build_model, load_meta, save_checkpoint
from edgeres.errors import UserInputError
from edgeres.evaluate import load_task_data
from edgeres.explain import ExplainConfig, Explainer, explain_images, explanation_drift, saliency_agreement
from edgeres.explain.saliency import occlusion_map, occlusion_window
from edgeres.explain.targets import Target
from edgeres.export import ExportConfig, export_checkpoint


@pytest.fixture(scope="module")
def digit_images(tiny_checkpoint, tmp_path_factory):
    """Three test-split digits saved as PNG files, as a user would hand them over."""
    meta = load_meta(tiny_checkpoint)
    x, _ = next(load_task_data(meta).batches("test", 3, limit=3))
    folder = tmp_path_factory.mktemp("digits")
    for i, image in enumerate(x):
        pixels = np.clip((image[0] * meta.std[0] + meta.mean[0]) * 255, 0, 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"digit{i}.png")
    return folder


@pytest.fixture(scope="module")
def exports(tiny_checkpoint, tmp_path_factory):
    """The tiny classifier as ONNX FP32 and as an OpenVINO INT8 IR."""
    root = tmp_path_factory.mktemp("explain-exports")
    export_checkpoint(tiny_checkpoint, root / "onnx", ExportConfig(formats=("onnx",), validate_size=8))
    export_checkpoint(tiny_checkpoint, root / "ov", ExportConfig(formats=("openvino",), precisions=("int8",),
                                                                 calib_size=64, validate_size=8))
    return {"onnx_fp32": root / "onnx" / "model.fp32.onnx", "openvino_int8": root / "ov" / "model.int8.xml"}


def test_gradcam_overlays_for_a_classifier_checkpoint(edgeres, tiny_checkpoint, digit_images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, text = edgeres("explain", tiny_checkpoint, digit_images, "--out", out)
    assert code == 0, text
    doc = json.loads((out / "explanations.gradcam.json").read_text())
    assert doc["method"] == "gradcam" and doc["score_kind"] == "logit" and doc["layer"]
    assert [r["file"] for r in doc["images"]] == ["digit0.png", "digit1.png", "digit2.png"]
    explainer = Explainer(tiny_checkpoint, "occlusion")
    for record in doc["images"]:
        # the target is the predicted class: the Runner's argmax on the same prepared input
        predicted = explainer.choose(_prepared(digit_images / record["file"], explainer.meta)).class_id
        assert record["class_id"] == predicted and record["overlay"] in text.replace("\n", "")
        saliency = np.load(out / record["map"])
        assert saliency.shape == (24, 24) and saliency.min() >= 0 and saliency.max() > 0
        with Image.open(out / record["overlay"]) as im:
            assert im.size[0] >= 256 and im.mode == "RGB"
    assert (out / "notes.txt").read_text() == "mine"  # the user's files beside ours stay


def _prepared(path, meta):
    from edgeres.tasks import get_task

    with Image.open(path) as im:
        return get_task(meta.task).prepare(im.copy(), meta)[0]


def test_gradcam_for_a_detector_explains_its_top_box(random_detector, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    photo = Image.new("RGB", (80, 60), (40, 40, 40))
    photo.paste((230, 60, 60), (10, 10, 40, 40))
    photo.save(images / "square.png")
    doc = explain_images(random_detector, [images], tmp_path / "out", ExplainConfig(method="auto"))
    (record,) = doc["images"]
    assert doc["method"] == "gradcam" and doc["score_kind"] == "detection score"
    assert doc["layer"].startswith("backbone.")
    x1, y1, x2, y2 = record["box_xyxy"]
    assert 0 < record["score"] <= 1 and x2 > x1 and y2 > y1
    saliency = np.load(tmp_path / "out" / record["map"])
    assert saliency.shape == (64, 64) and saliency.max() > 0
    assert (tmp_path / "out" / "square.png.gradcam.png").is_file()


def test_a_detector_with_nms_in_the_graph_is_explained_like_its_checkpoint(random_detector, tmp_path):
    """The target box is matched by place, so a graph whose NMS reorders the boxes gives the checkpoint's map."""
    export_checkpoint(random_detector, tmp_path / "nms", ExportConfig(formats=("onnx",), validate_size=3, nms=True))
    x = np.random.default_rng(0).normal(size=(3, 64, 64)).astype(np.float32)
    x[:, 8:30, 36:60] += 2.0  # a bright block the detector can put a box on
    checkpoint = Explainer(random_detector, "occlusion")
    graph = Explainer(tmp_path / "nms" / "model.fp32.onnx", "occlusion")
    target = checkpoint.choose(x)
    assert target.box is not None and graph.choose(x, target.class_id).box == pytest.approx(target.box, abs=1e-3)
    expected, got = checkpoint.explain(x, target), graph.explain(x, target)
    assert got.score == pytest.approx(expected.score, abs=1e-5) and got.score_kind == "detection score"
    assert np.abs(expected.saliency).max() > 0
    np.testing.assert_allclose(got.saliency, expected.saliency, atol=1e-3 * np.abs(expected.saliency).max())


def test_occlusion_on_onnx_fp32_and_openvino_int8(tiny_checkpoint, exports, digit_images, tmp_path):
    maps, target = {}, None
    for name, artifact in {"checkpoint": tiny_checkpoint, **exports}.items():
        # every file explains the checkpoint's predicted class, so the maps answer one question
        doc = explain_images(artifact, [digit_images / "digit0.png"], tmp_path / name,
                             ExplainConfig("occlusion", target=target))
        assert doc["method"] == "occlusion" and (doc["window"], doc["stride"]) == (4, 2)
        target = doc["images"][0]["class_id"]
        maps[name] = np.load(tmp_path / name / doc["images"][0]["map"])
        assert maps[name].shape == (24, 24) and np.abs(maps[name]).max() > 0
    # FP32 ONNX Runtime computes what torch computes: the same map. INT8 moves it, but not far.
    np.testing.assert_allclose(maps["onnx_fp32"], maps["checkpoint"], atol=1e-3 * np.abs(maps["checkpoint"]).max())
    assert saliency_agreement(maps["checkpoint"], maps["openvino_int8"]).rank_correlation > 0.5


def test_randomised_weights_change_the_explanation(tiny_checkpoint, tmp_path):
    """Adebayo et al.'s sanity check: maps of a model that learned must differ from those of random weights."""
    meta = load_meta(tiny_checkpoint)
    assert meta.metrics["test"]["accuracy"] > 0.8  # ten classes: chance is 0.1, so the weights mean something
    torch.manual_seed(1)
    random = save_checkpoint(build_model(meta).eval(), meta, tmp_path / "random")
    bundle = load_task_data(meta)
    same = explanation_drift(tiny_checkpoint, tiny_checkpoint, bundle, n=4)
    assert same.rank_correlation_min == pytest.approx(1.0) and same.top_iou_min == 1.0
    drifted = explanation_drift(tiny_checkpoint, random, bundle, n=4)
    assert len(drifted.images) == 4 and drifted.rank_correlation_mean < 0.5 and drifted.top_iou_mean < 0.5
    assert drifted.to_dict()["rank_correlation_mean"] == drifted.rank_correlation_mean


def test_drift_takes_image_files(tiny_checkpoint, exports, digit_images):
    result = explanation_drift(tiny_checkpoint, exports["onnx_fp32"], digit_images, n=2)
    assert [i.image for i in result.images] == ["digit0.png", "digit1.png"]
    assert result.rank_correlation_min > 0.99 and result.top_iou_min > 0.9


def test_occlusion_finds_the_only_region_a_model_reads():
    """Known answer: a model whose class-0 logit is the mean of one 8x8 patch is explained by that patch alone."""
    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        patch = batch[:, 0, 4:12, 14:22].mean(axis=(1, 2))
        return {"logits": np.stack([patch, np.zeros_like(patch)], axis=1)}

    x = np.ones((1, 24, 24), np.float32)
    window, stride = occlusion_window(24)
    saliency = occlusion_map(run, x, Target(0), window, stride)
    inside, near = np.zeros((24, 24), bool), np.zeros((24, 24), bool)
    inside[4:12, 14:22] = True
    near[4 - window + 1:12 + window - 1, 14 - window + 1:22 + window - 1] = True  # windows touching the patch
    assert saliency[inside].min() > 0 and not saliency[~near].any()
    assert saliency[inside].sum() > 0.6 * saliency.sum()
    # A window wholly inside the patch zeroes 16 of its 64 pixels: the logit drops by exactly a quarter.
    assert saliency.max() == pytest.approx(window * window / 64)
    assert inside[np.unravel_index(saliency.argmax(), (24, 24))]


def test_saliency_agreement_measures():
    a = np.arange(100, dtype=np.float32).reshape(10, 10)
    assert saliency_agreement(a, a * 3 + 1) == pytest.approx(saliency_agreement(a, a))
    reverse = saliency_agreement(a, -a)
    assert reverse.rank_correlation == pytest.approx(-1) and reverse.top_iou == 0
    assert saliency_agreement(np.zeros((4, 4)), np.zeros((4, 4))).rank_correlation == 1.0
    assert saliency_agreement(np.zeros((4, 4)), a[:4, :4]).top_iou == 0.0
    with pytest.raises(UserInputError, match="one shape"):
        saliency_agreement(a, a[:5])


def test_cli_refuses_bad_input(edgeres, tiny_checkpoint, exports, digit_images, tmp_path):
    code, text = edgeres("explain", exports["onnx_fp32"], digit_images, "--out", tmp_path / "a", "--method", "gradcam")
    assert code == 2 and "gradients" in text and "--method occlusion" in text and "Traceback" not in text
    code, text = edgeres("explain", tiny_checkpoint, tmp_path / "missing.png", "--out", tmp_path / "b")
    assert code == 2 and "missing.png" in text and "Traceback" not in text
    (tmp_path / "file").write_text("x")
    code, text = edgeres("explain", tiny_checkpoint, digit_images, "--out", tmp_path / "file")
    assert code == 2 and "is a file" in text
    code, text = edgeres("explain", tiny_checkpoint, digit_images, "--out", tmp_path / "c", "--target", "cat")
    assert code == 2 and "not a class" in text
    code, text = edgeres("explain", exports["onnx_fp32"], digit_images, "--out", tmp_path / "d", "--window", "99")
    assert code == 2 and "--window" in text
