"""In-graph preprocessing: exported classifiers (grey, FP32 and INT8) and a detector (letterbox) fed raw uint8
camera frames give what the original files give on the task's host preprocessing."""
import numpy as np
import openvino as ov
import pytest
from PIL import Image

from edgeres.checkpoint import load_checkpoint
from edgeres.data import DataConfig, load_data
from edgeres.errors import UserInputError
from edgeres.export import ExportConfig, export_checkpoint
from edgeres.export.onnx import export_onnx
from edgeres.export.openvino import export_openvino
from edgeres.export import preprocess
from edgeres.export.preprocess import (GREY_WEIGHTS, INT8_RESIZE, FrameSession, Plan, add_onnx_preprocess,
                                       add_openvino_preprocess, bilinear_weights, int8_resize_plan, polyphase,
                                       read_preprocess, resized_pixels, shares, verify_preprocess)
from edgeres.meta import ModelMeta
from edgeres.runtime.embedded import ir_precision
from edgeres.tasks import get_task
from test_detect_export import DATA

VGA, ODD = (480, 640), (77, 123)  # (height, width): a camera frame, and a size nothing divides evenly


def _frames(images: np.ndarray, mean, std, hw: tuple[int, int]) -> list[np.ndarray]:
    """Normalised NCHW images back to uint8 RGB, scaled to hw with another filter than the graph's, as a camera
    would show the scene."""
    mean, std = np.asarray(mean, np.float32)[:, None, None], np.asarray(std, np.float32)[:, None, None]
    pixels = np.clip((images * std + mean) * 255, 0, 255).round().astype(np.uint8)
    rgb = [np.repeat(p, 3 // len(p), axis=0).transpose(1, 2, 0) for p in pixels]
    return [np.asarray(Image.fromarray(p).resize(hw[::-1], Image.BICUBIC)) for p in rgb]


def _add(path, out, **kwargs):
    return (add_openvino_preprocess if str(path).endswith(".xml") else add_onnx_preprocess)(path, out, **kwargs)


def _precision(name: str):
    return "fp32" if "fp32" in name else None  # OpenVINO's default may compute fp32 IRs in bf16


@pytest.fixture(scope="module")
def classifier(tiny_checkpoint, tmp_path_factory):
    """The tiny grey digits classifier exported FP32 and INT8 to ONNX and OpenVINO, and frames maker."""
    out = tmp_path_factory.mktemp("cls")
    doc = export_checkpoint(tiny_checkpoint, out, ExportConfig(formats=("onnx", "openvino"),
                                                               precisions=("fp32", "int8"), calib_size=64,
                                                               validate_size=16))
    assert len(doc["artifacts"]) == 4, doc["failed"]
    bundle = load_data(DataConfig("digits", img_size=24))
    images = next(bundle.batches("test", 6))[0]
    return out, lambda hw: _frames(images, bundle.mean, bundle.std, hw)


@pytest.fixture(scope="module")
def detector(random_detector, tmp_path_factory):
    """conftest's random test_yolo (raised scores: it finds boxes) exported FP32 to ONNX and OpenVINO, and frames."""
    model, meta = load_checkpoint(random_detector)
    model.eval()
    bundle = get_task("detection").load_data(DATA)
    out = tmp_path_factory.mktemp("det")
    export_onnx(model, meta, out / "det.onnx")
    export_openvino(model, meta, out / "det.xml")
    images = next(bundle.batches("train", 4))[0]
    return out, lambda hw: _frames(images, bundle.mean, bundle.std, hw)


@pytest.mark.parametrize("src,dst", [(640, 24), (123, 64), (17, 24), (64, 64)])
def test_bilinear_weights_are_pillows(src, dst):
    rows = np.random.default_rng(0).random((5, src)).astype(np.float32) * 255
    pillow = np.asarray(Image.fromarray(rows, mode="F").resize((dst, 5), Image.BILINEAR))
    np.testing.assert_allclose(rows @ bilinear_weights(src, dst).T, pillow, rtol=0, atol=1e-3)
    # The same weights as a strided convolution over the zero-padded row, renormalised at the borders.
    kernels, stride, begin, end, gain = polyphase(src, dst)
    padded = np.pad(rows.astype(np.float64), ((0, 0), (begin, end)))
    blocks = [padded[:, j * stride:j * stride + kernels.shape[1]] @ kernels.T for j in range(dst // len(kernels))]
    np.testing.assert_allclose(np.concatenate(blocks, axis=1) * gain, pillow, rtol=0, atol=1e-3)


@pytest.mark.parametrize("name", ["model.fp32.xml", "model.int8.xml", "model.fp32.onnx", "model.int8.onnx"])
def test_classifier_takes_frames_of_any_size(classifier, tmp_path, name):
    out, frames = classifier
    pre = tmp_path / name.replace("model", "frames")
    spec = _add(out / name, pre)
    assert spec["in_graph_preprocess"] is True and (spec["layout"], spec["dtype"], spec["frame"]) == (
        "NHWC", "uint8", None)
    assert (spec["resize"], spec["in_chans"], spec["img_size"], spec["color"]) == ("resize", 1, 24, "RGB")
    assert read_preprocess(pre) == spec and read_preprocess(out / name) is None
    for hw in (VGA, ODD):
        stats = verify_preprocess(out / name, pre, frames=frames(hw), precision=_precision(name))
        assert stats["failures"] == [] and stats["frames"] == 6
        if "fp32" in name:
            assert stats["top1_agreement"] == 1.0 and stats["max_abs_diff"] < 1e-3


def test_int8_ir_keeps_its_int8_weights(classifier, tmp_path):
    out, _ = classifier
    add_openvino_preprocess(out / "model.int8.xml", tmp_path / "frames.xml")
    assert ir_precision(ov.Core().read_model(tmp_path / "frames.xml"))["int8"]
    before, after = (p.stat().st_size for p in (out / "model.int8.bin", tmp_path / "frames.bin"))
    assert after < before * 1.02 + 1024  # neither decompressed to fp32 nor copied twice


@pytest.mark.parametrize("name,options", [("model.fp32.xml", {}), ("model.int8.xml", {}),
                                          ("model.fp32.onnx", {"resize_op": "MatMul"}),
                                          ("model.int8.onnx", {})])  # ONNX default for a fixed frame: Conv
def test_classifier_fixed_frame(classifier, tmp_path, name, options):
    out, frames = classifier
    pre = tmp_path / name.replace("model", "frames")
    assert _add(out / name, pre, frame=VGA, **options)["frame"] == list(VGA)
    assert verify_preprocess(out / name, pre, frames=frames(VGA), precision=_precision(name))["failures"] == []
    session = FrameSession(pre)
    with pytest.raises(UserInputError, match="480x640"):
        session(frames(ODD)[0])
    # A writeable frame is read in place (OpenVINO: bound as a shared tensor), a read-only one copied: the same
    # answers, and a frame bound on one call does not linger into the next.
    a, b = frames(VGA)[:2]
    assert not a.flags.writeable
    first, other, again = (session(f)[session.names[0]] for f in (np.array(a), np.array(b), a))
    assert not np.allclose(first, other)
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("hw,chans", [(VGA, 1), (VGA, 3), (ODD, 1), (ODD, 3)])
def test_int8_resize_plan_is_pillows(hw, chans):
    (h, w), size = hw, 24
    # Blocks of P inputs sharing one weight matrix, summed back: exactly Pillow's weights, both axes.
    rows, row_sums = shares(h, size, lambda s, blocks: s)
    dense = np.einsum("bsj,sp->jbp", row_sums, rows).reshape(size, h)
    np.testing.assert_allclose(dense, bilinear_weights(h, size), rtol=0, atol=1e-12)
    # The graph's arithmetic in numpy: 7-bit weights on the uint8 frame's blocks, then the float products.
    plan = Plan({}, chans, size, hw, (size, size), (0, 0, 0, 0), (1.0,) * chans, (0.0,) * chans)
    k = int8_resize_plan(plan)
    assert k["ints"].dtype == np.int8 and np.abs(k["ints"]).max() == 63  # no int16 saturation without VNNI

    def resize(frame: np.ndarray) -> np.ndarray:
        x = frame.reshape(-1, k["ints"].shape[0]) @ (k["ints"] * k["scales"])
        x = (k["rows"] @ x.reshape(-1, k["rows"].shape[1], k["sums"].shape[0])).reshape(-1, k["sums"].shape[0])
        return (k["row_sums"] @ x @ k["sums"]).reshape(size, size, chans).transpose(2, 0, 1)

    frame = np.random.default_rng(1).integers(0, 256, (h, w, 3)).astype(np.float64)
    channels = frame @ (np.asarray(GREY_WEIGHTS)[:, None] if chans == 1 else np.eye(3))  # L unrounded, as the graph
    pillow = np.stack([np.asarray(Image.fromarray(channels[..., i].astype(np.float32), mode="F").resize(
        (size, size), Image.BILINEAR)) for i in range(chans)])
    assert np.abs(resize(frame) - pillow).max() < 0.5  # grey levels, on noise: 7-bit weights' hardest case
    np.testing.assert_allclose(resize(np.full_like(frame, 200.0)), 200.0, atol=1e-9)  # flat stays exactly flat


@pytest.mark.parametrize("hw", [VGA, ODD])
def test_int8_ir_resizes_the_uint8_frame_in_integers(classifier, tmp_path, hw):
    out, frames = classifier
    pre, exact = tmp_path / "frames.int8.xml", tmp_path / "exact.int8.xml"
    add_openvino_preprocess(out / "model.int8.xml", pre, frame=hw)  # the default for an INT8 IR
    add_openvino_preprocess(out / "model.int8.xml", exact, frame=hw, int8_resize=False)
    assert _int8_resize_weights(pre) == ["i8"] and _int8_resize_weights(exact) == []
    stats = verify_preprocess(out / "model.int8.xml", pre, frames=frames(hw))
    assert stats["failures"] == [] and stats["precision"] == "int8" and stats["top1_agreement"] >= 0.9
    # Pixel by pixel against the host path (PIL's L, rounded; torch's antialiased bilinear = Pillow's weights).
    meta = _meta_of(out / "model.int8.xml")
    task, shown = get_task(meta.task), frames(hw)
    host = (np.stack([task.prepare(Image.fromarray(f), meta)[0] for f in shown]) * meta.std[0] + meta.mean[0]) * 255
    pixels = {path: resized_pixels(path, shown, "f32") for path in (pre, exact)}
    assert np.abs(pixels[exact] - host).max() < 0.51  # half a level: L's rounding
    assert np.abs(pixels[pre] - pixels[exact]).max() < 0.3  # the 7-bit weights' own error


def test_float_irs_keep_the_exact_resize(classifier, tmp_path, monkeypatch):
    out, _ = classifier
    add_openvino_preprocess(out / "model.fp32.xml", tmp_path / "frames.xml", frame=VGA)
    assert _int8_resize_weights(tmp_path / "frames.xml") == []
    with pytest.raises(UserInputError, match="not an INT8 IR"):
        add_openvino_preprocess(out / "model.fp32.xml", tmp_path / "a.xml", frame=VGA, int8_resize=True)
    with pytest.raises(UserInputError, match="one frame size"):
        add_openvino_preprocess(out / "model.int8.xml", tmp_path / "a.xml", int8_resize=True)
    # An INT8 IR whose float products after the integer one would be large keeps the exact path by default.
    # ... and so does one upscaling a small frame (a few large taps per output: 7-bit weights ~2 levels off).
    add_openvino_preprocess(out / "model.int8.xml", tmp_path / "c.xml", frame=(20, 17))
    assert _int8_resize_weights(tmp_path / "c.xml") == []
    monkeypatch.setattr(preprocess, "FLOAT_TAIL_MACS", 0)
    add_openvino_preprocess(out / "model.int8.xml", tmp_path / "b.xml", frame=VGA)
    assert _int8_resize_weights(tmp_path / "b.xml") == []


def _int8_resize_weights(xml) -> list[str]:
    """Element types of the constants feeding the integer width pass (none: the graph has no such pass)."""
    ops = [op for op in ov.Core().read_model(xml).get_ops() if op.get_friendly_name() == INT8_RESIZE]
    found = []
    for op in ops:
        node = op.input_value(1).get_node()  # Multiply(Convert(Constant), scales)
        while node.get_type_name() != "Constant":
            node = node.input_value(0).get_node()
        found.append(node.get_element_type().get_type_name())
    return found


@pytest.mark.parametrize("name,options", [("det.xml", {}), ("det.onnx", {}), ("det.onnx", {"resize_op": "MatMul"}),
                                          ("det.onnx", {"resize_op": "Resize"})])
def test_detector_letterboxes_in_graph(detector, tmp_path, name, options):
    out, frames = detector
    for hw in (VGA, ODD):
        pre = tmp_path / f"{hw[0]}-{name}"
        spec = _add(out / name, pre, frame=hw, **options)
        assert (spec["resize"], spec["pad_value"], spec["frame"]) == ("letterbox", 114, list(hw))
        stats = verify_preprocess(out / name, pre, frames=frames(hw), precision="fp32")
        assert stats["failures"] == [] and stats["reference_detections"] > 0 and stats["matched"] > 0


def test_detector_needs_a_frame_size(detector, tmp_path):
    out, _ = detector
    for name in ("det.xml", "det.onnx"):
        with pytest.raises(UserInputError, match="letterbox.*frame size"):
            _add(out / name, tmp_path / name)


def test_wrong_frames_are_refused(classifier, tmp_path):
    out, frames = classifier
    add_onnx_preprocess(out / "model.fp32.onnx", tmp_path / "frames.onnx")
    session = FrameSession(tmp_path / "frames.onnx")
    frame = frames(VGA)[0]
    assert session(frame)["logits"].shape == (1, 10)
    with pytest.raises(UserInputError, match="dtype float32.*not normalised floats"):
        session(frame.astype(np.float32) / 255)
    with pytest.raises(UserInputError, match=r"shape \(480, 640, 4\).*channels last"):
        session(np.zeros((480, 640, 4), np.uint8))
    with pytest.raises(UserInputError, match=r"shape \(3, 480, 640\)"):
        session(np.ascontiguousarray(frame.transpose(2, 0, 1)))
    with pytest.raises(UserInputError, match="takes NCHW float tensors"):
        FrameSession(out / "model.fp32.onnx")


def test_bad_requests_are_refused(classifier, tmp_path):
    out, _ = classifier
    with pytest.raises(UserInputError, match="frame must be"):
        add_openvino_preprocess(out / "model.fp32.xml", tmp_path / "a.xml", frame=(0, 640))
    with pytest.raises(UserInputError, match="MatMul.*frame"):
        add_onnx_preprocess(out / "model.fp32.onnx", tmp_path / "a.onnx", resize_op="MatMul")
    add_onnx_preprocess(out / "model.fp32.onnx", tmp_path / "a.onnx")
    with pytest.raises(UserInputError, match="already takes frames"):
        add_onnx_preprocess(tmp_path / "a.onnx", tmp_path / "b.onnx")


@pytest.mark.parametrize("name", ["model.fp32.xml", "model.fp32.onnx"])
def test_verify_fails_when_the_graph_prepares_otherwise(classifier, tmp_path, name):
    # A graph built with other statistics than the model was trained with must not pass as equivalent.
    out, frames = classifier
    meta = _meta_of(out / name)
    wrong = ModelMeta.from_dict({**meta.to_dict(), "mean": [m + 0.2 for m in meta.mean]})
    pre = tmp_path / name.replace("model", "frames")
    _add(out / name, pre, meta=wrong)
    with pytest.raises(UserInputError, match="does not match"):
        verify_preprocess(out / name, pre, frames=frames(VGA), precision="fp32")


def _meta_of(path) -> ModelMeta:
    from edgeres.runtime import load

    return load(path).meta
