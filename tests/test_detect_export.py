"""Exporting a detector: ONNX / OpenVINO with and without in-graph NMS, INT8 with the output convs kept in float,
export.json's NMS settings and mAPs, and the TensorRT bundle's EfficientNMS graph surgery."""
import numpy as np
import onnx
import pytest
import torch

from edgeres.artifacts import read_json
from edgeres.checkpoint import save_checkpoint
from edgeres.data import DataConfig
from edgeres.errors import UserInputError
from edgeres.evaluate.predict import evaluate_runner
from edgeres.export import ExportConfig, export_checkpoint
from edgeres.export.onnx import export_onnx, quantize_onnx
from edgeres.export.openvino import export_openvino, quantize_openvino
from edgeres.export.tensorrt import prepare_tensorrt
from edgeres.meta import ModelMeta
from edgeres.models import create
from edgeres.runtime import load
from edgeres.runtime.embedded import graph_fields
from edgeres.runtime.tensorrt import assemble_detections, unavailable_reason
from edgeres.tasks import get_task

IMG = 64
NMS = {"max_det": 30, "iou": 0.6, "conf": 0.05}
DATA = DataConfig("shapes-det", img_size=IMG, detect_images=24)
HEADS = ("/model/heads.0/Conv", "/model/heads.1/Conv", "/model/heads.2/Conv")


def _detector(num_classes: int, **kwargs) -> torch.nn.Module:
    """A random test_yolo whose objectness and class scores are raised, so that it finds boxes to compare
    at the confidence predict draws (0.25)."""
    torch.manual_seed(0)
    model = create("test_yolo", num_classes=num_classes, **kwargs).eval()
    with torch.no_grad():
        for head in model.heads:
            head.bias.view(model.num_anchors, -1)[:, 4:] += 4.0
    return model


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """(model, meta, images, checkpoint dir): a few shapes-det training images. The anchors fit the data, so
    even random weights find a few objects (mAP above zero)."""
    task = get_task("detection")
    bundle = task.load_data(DATA)
    anchors = task.model_kwargs(bundle)
    model = _detector(len(bundle.class_names), **anchors)
    meta = ModelMeta(arch="test_yolo", num_classes=len(bundle.class_names), img_size=IMG, arch_kwargs=anchors,
                     class_names=list(bundle.class_names), task="detection", mean=tuple(bundle.mean),
                     std=tuple(bundle.std), data=DATA.to_dict())
    ckpt = save_checkpoint(model, meta, tmp_path_factory.mktemp("det") / "ckpt")
    images = next(bundle.batches("train", 3))[0]
    return model, meta, images, ckpt


def _torch(model, x, nms=None) -> dict[str, np.ndarray]:
    module = model.inference_module(nms)
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    return {name: t.numpy() for name, t in zip(module.output_names, out if isinstance(out, tuple) else (out,))}


@pytest.fixture(scope="module")
def onnx_files(detector, tmp_path_factory):
    model, meta, _, _ = detector
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(model, meta, out / "raw.onnx")
    export_onnx(model, meta, out / "nms.onnx", nms=NMS)
    return out / "raw.onnx", out / "nms.onnx"


def test_onnx_without_and_with_nms_matches_torch(detector, onnx_files):
    model, _, images, _ = detector
    raw, nms = onnx_files
    reference = _torch(model, images)
    outputs = load(raw)(images)
    assert list(outputs) == ["boxes", "scores"] and outputs["boxes"].shape == (3, 252, 4)
    for name in outputs:
        np.testing.assert_allclose(outputs[name], reference[name], rtol=0, atol=1e-4)
    detections = load(nms)(images)["detections"]
    expected = _torch(model, images, NMS)["detections"]
    assert detections.shape == (3, NMS["max_det"], 6) and (expected[..., 5] >= 0).sum() > 10
    np.testing.assert_array_equal(detections[..., 5], expected[..., 5])
    np.testing.assert_allclose(detections, expected, rtol=0, atol=1e-4)
    # Host NMS on the raw outputs selects what the graph's NMS selects.
    task = get_task("detection")
    host = task.postprocess(outputs, conf=NMS["conf"], iou=NMS["iou"], max_det=NMS["max_det"])
    graph = task.postprocess({"detections": detections}, conf=NMS["conf"], max_det=NMS["max_det"])
    for h, g in zip(host, graph):
        np.testing.assert_allclose(h, g, rtol=0, atol=1e-4)


def test_onnx_outputs_have_dynamic_batch_and_recorded_names(onnx_files):
    for path, names, nms in ((onnx_files[0], ["boxes", "scores"], None), (onnx_files[1], ["detections"], NMS)):
        proto = onnx.load(str(path))
        assert [o.name for o in proto.graph.output] == names
        assert all(o.type.tensor_type.shape.dim[0].dim_param for o in proto.graph.output)
        fields = graph_fields({p.key: p.value for p in proto.metadata_props})
        assert fields == {"output_names": names, "nms": nms, "keep_float": ["heads"]}


@pytest.fixture(scope="module")
def irs(detector, tmp_path_factory):
    """IRs without NMS by precision: {precision: (xml, record)}."""
    model, meta, _, _ = detector
    out = tmp_path_factory.mktemp("ir")
    return {p: (out / f"{p}.xml", export_openvino(model, meta, out / f"{p}.xml", precision=p)) for p in ("fp32", "fp16")}


@pytest.mark.parametrize("nms,precision", [(None, "fp32"), (None, "fp16"), (NMS, "fp32")],
                         ids=["raw-fp32", "raw-fp16", "nms-fp32"])
def test_openvino_outputs_named_and_matching(detector, irs, tmp_path, nms, precision):
    model, meta, images, _ = detector
    reference = _torch(model, images, nms)
    if nms is None:
        xml, record = irs[precision]
    else:
        xml = tmp_path / "nms.xml"
        record = export_openvino(model, meta, xml, precision=precision, nms=nms)
    outputs = load(xml, precision="fp32")(images)
    assert list(outputs) == list(reference) == record["output_names"]
    assert record["nms"] == nms and record["keep_float"] == ["heads"]
    if precision == "fp32" and nms:
        # OpenVINO's NMS may order near-tied scores (1e-5 apart here) differently: the same rows, in any order.
        assert _same_rows(outputs["detections"], reference["detections"], atol=1e-4)
    elif precision == "fp32":
        for name in outputs:
            np.testing.assert_allclose(outputs[name], reference[name], rtol=0, atol=1e-4)
    task = get_task("detection")
    stats = task.compare(reference, outputs)  # as export validation judges the file
    assert stats["reference_detections"] > 0 and not task.judge(stats, task.tolerance(precision)), stats


def _same_rows(a: np.ndarray, b: np.ndarray, atol: float) -> bool:
    """Each image's rows of `a` and `b` pair up one to one within `atol`, whatever their order."""
    for rows_a, rows_b in zip(a, b):
        free = list(range(len(rows_b)))
        for row in rows_a:
            hit = next((j for j in free if np.allclose(row, rows_b[j], rtol=0, atol=atol)), None)
            if hit is None:
                return False
            free.remove(hit)
    return len(a) == len(b)


def _weight_dequantized(proto, conv_name: str) -> bool:
    producer = {out: node for node in proto.graph.node for out in node.output}
    conv = next(n for n in proto.graph.node if n.name == conv_name)
    source = producer.get(conv.input[1])
    return source is not None and source.op_type == "DequantizeLinear"


def test_int8_onnx_and_ir_keep_output_convs_and_decode_float(detector, onnx_files, irs, tmp_path):
    from edgeres.export.openvino.convert import float_layers, quantized_ops
    import openvino as ov

    _, _, images, _ = detector
    calib = [np.concatenate([images, images[::-1]])]
    record = quantize_onnx(onnx_files[0], tmp_path / "q.onnx", calib)
    proto = onnx.load(str(tmp_path / "q.onnx"))
    assert record["keep_float"] == ["heads"]
    assert not any(_weight_dequantized(proto, name) for name in HEADS)
    assert _weight_dequantized(proto, "/model/backbone/conv1/Conv")  # the rest is quantized
    producer = {out: node.op_type for node in proto.graph.node for out in node.output}
    sigmoids = [n for n in proto.graph.node if n.op_type == "Sigmoid"]
    assert sigmoids and all(producer.get(n.input[0]) != "DequantizeLinear" for n in sigmoids)

    record = quantize_openvino(irs["fp32"][0], calib, tmp_path / "q.xml")
    ir = ov.Core().read_model(tmp_path / "q.xml")
    heads = [op.get_friendly_name() for op in ir.get_ops()
             if op.get_type_name() == "Convolution" and ".heads." in op.get_friendly_name()]
    assert len(heads) == 3 and set(heads) <= set(float_layers(ir)) and not set(heads) & quantized_ops(ir)
    assert any(op.get_type_name() == "FakeQuantize" for op in ir.get_ops())
    assert record["keep_float"] == ["heads"] and set(heads) <= set(record["kept_in_float"])
    assert list(load(tmp_path / "q.xml")(images)) == ["boxes", "scores"]


def test_export_records_nms_and_val_map(detector, tmp_path):
    _, _, _, ckpt = detector
    doc = export_checkpoint(ckpt, tmp_path / "plain", ExportConfig(formats=("onnx",), validate_size=3))
    source = doc["validation"]["source_val_map"]
    assert doc["nms"] is None and doc["output_names"] == ["boxes", "scores"] and source > 0
    (entry,) = doc["artifacts"]
    v = entry["validation"]
    assert entry["status"] == "ok" and v["failures"] == [] and v["source_val_map"] == source
    assert v["val_map"] == pytest.approx(source, rel=1e-3) and v["val_map_delta"] == v["val_map"] - source

    doc = export_checkpoint(ckpt, tmp_path / "nms", ExportConfig(formats=("onnx",), validate_size=3, nms=True,
                                                                 max_det=30, nms_conf=0.05))
    assert doc == read_json(tmp_path / "nms" / "export.json")
    assert doc["nms"] == NMS and doc["config"]["nms"] is True and doc["output_names"] == ["detections"]
    (entry,) = doc["artifacts"]
    runner = load(tmp_path / "nms" / "model.fp32.onnx")
    assert list(runner(np.zeros((2, 3, IMG, IMG), np.float32))) == ["detections"]
    metrics, _ = evaluate_runner(runner, get_task("detection").load_data(DATA), splits=("val",))
    assert entry["status"] == "ok" and entry["nms"] == NMS and entry["validation"]["val_map"] == metrics["val"]["map"]


def test_nms_refused_for_a_classifier_and_bad_settings(tmp_path):
    model = create("test_resnet", num_classes=3).eval()
    meta = ModelMeta(arch="test_resnet", num_classes=3, img_size=32, data=DataConfig("shapes", img_size=32).to_dict())
    ckpt = save_checkpoint(model, meta, tmp_path / "cls")
    with pytest.raises(UserInputError, match="nms"):
        export_checkpoint(ckpt, tmp_path / "out", ExportConfig(formats=("onnx",), nms=True))
    with pytest.raises(UserInputError, match="nms"):
        export_onnx(model, meta, tmp_path / "m.onnx", nms=NMS)
    for bad in ({"max_det": 0}, {"nms_iou": 1.5}, {"nms_conf": -0.1}, {"nms": "yes"}):
        with pytest.raises(UserInputError, match=next(iter(bad))):
            ExportConfig(**bad)


def test_tensorrt_bundle_appends_efficient_nms(onnx_files, detector, tmp_path):
    _, _, images, _ = detector
    record = prepare_tensorrt(onnx_files[0], tmp_path / "fp16", precision="fp16", nms=NMS)
    assert record["nms"] == {**NMS, "plugin": "EfficientNMS_TRT"}
    proto = onnx.load(str(tmp_path / "fp16" / "model.onnx"))
    (node,) = [n for n in proto.graph.node if n.op_type == "EfficientNMS_TRT"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["max_output_boxes"] == 30 and attrs["score_threshold"] == pytest.approx(0.05)
    assert attrs["iou_threshold"] == pytest.approx(0.6) and attrs["background_class"] == -1
    assert attrs["box_coding"] == 0 and attrs["plugin_version"] == b"1"
    assert list(node.input) == ["boxes", "scores"]
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert outputs == {"num_dets": ["batch", 1], "det_boxes": ["batch", 30, 4], "det_scores": ["batch", 30],
                       "det_classes": ["batch", 30]}
    sidecar = read_json(tmp_path / "fp16" / "engine_meta.json")
    assert sidecar["nms"]["max_det"] == 30 and sidecar["output_names"] == list(outputs)

    prepare_tensorrt(onnx_files[0], tmp_path / "int8", precision="int8", nms=NMS, calibration=[images])
    qdq = onnx.load(str(tmp_path / "int8" / "model.int8.qdq.onnx"))
    assert [n.op_type for n in qdq.graph.node].count("EfficientNMS_TRT") == 1
    assert not any(_weight_dequantized(qdq, name) for name in HEADS)
    with pytest.raises(UserInputError, match="boxes"):
        prepare_tensorrt(onnx_files[1], tmp_path / "bad", precision="fp16", nms=NMS)


def test_tensorrt_runner_assembles_detections():
    num = np.array([[2], [0]], np.int32)
    boxes = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    scores = np.array([[0.9, 0.8, 0.0], [0.0, 0.0, 0.0]], np.float32)
    classes = np.array([[1, 0, 0], [0, 0, 0]], np.int32)
    out = assemble_detections(num, boxes, scores, classes)
    assert out.shape == (2, 3, 6) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0, :2], np.concatenate([boxes[0, :2], scores[0, :2, None], [[1], [0]]], 1))
    assert (out[0, 2] == [0, 0, 0, 0, 0, -1]).all() and (out[1] == [0, 0, 0, 0, 0, -1]).all()


@pytest.mark.skipif(unavailable_reason() is not None, reason=f"TensorRT engines need an NVIDIA GPU: {unavailable_reason()}")
def test_tensorrt_engine_with_efficient_nms_matches_onnx(onnx_files, detector, tmp_path):
    from edgeres.export.tensorrt import build_engine

    _, _, images, _ = detector
    prepare_tensorrt(onnx_files[0], tmp_path / "b", precision="fp32", nms=NMS)
    build_engine(tmp_path / "b" / "model.onnx", tmp_path / "m.engine", precision="fp32", max_batch=4)
    got = load(tmp_path / "m.engine")(images)["detections"]
    expected = load(onnx_files[1])(images)["detections"]
    task = get_task("detection")
    stats = task.compare({"detections": expected}, {"detections": got})
    assert stats["reference_detections"] > 0 and not task.judge(stats, task.tolerance("fp32")), stats
