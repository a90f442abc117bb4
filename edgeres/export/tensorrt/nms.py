"""NMS for TensorRT engines: TensorRT's EfficientNMS_TRT plugin appended to an ONNX that ends in boxes and scores.

torchvision's NMS exports as ONNX NonMaxSuppression with NonZero/ScatterND around it, which TensorRT runs
slowly or (before 8.6) not at all; the plugin does the same selection in one fused kernel. The graph is
edited with onnx-graphsurgeon: the plugin takes the decoded "boxes" (N, K, 4) xyxy and "scores" (N, K, C)
and gives num_dets (N, 1), det_boxes (N, max_det, 4), det_scores (N, max_det) and det_classes (N, max_det);
the TensorRT Runner assembles them into "detections" (N, max_det, 6) like the other backends'.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from edgeres.errors import UserInputError
from edgeres.runtime.tensorrt import EFFICIENT_NMS_OUTPUTS as NMS_OUTPUTS

PLUGIN = "EfficientNMS_TRT"
NMS_INPUTS = ("boxes", "scores")


def add_efficient_nms(proto: Any, nms: dict[str, Any]) -> Any:
    """A copy of `proto` whose outputs "boxes" and "scores" feed an EfficientNMS_TRT node that gives NMS_OUTPUTS.

    nms: {"max_det", "iou", "conf"}, as the in-graph NMS of the other backends takes them (per-class NMS,
    scores already probabilities, boxes as corners). The metadata is kept, with output_names and nms updated.
    """
    import onnx

    try:
        import onnx_graphsurgeon as gs
    except ImportError as e:
        raise UserInputError("a TensorRT bundle with nms edits the ONNX with onnx-graphsurgeon, which is not "
                             "installed: pip install onnx-graphsurgeon") from e
    graph = gs.import_onnx(proto)
    outputs = {t.name: t for t in graph.outputs}
    if tuple(outputs) != NMS_INPUTS:
        raise UserInputError(f"EfficientNMS needs an ONNX whose outputs are {list(NMS_INPUTS)} (a detector exported "
                             f"without nms); this one has {list(outputs)}")
    batch = outputs["boxes"].shape[0] if outputs["boxes"].shape else "batch"
    max_det = int(nms["max_det"])
    shapes = ((np.int32, [batch, 1]), (np.float32, [batch, max_det, 4]), (np.float32, [batch, max_det]),
              (np.int32, [batch, max_det]))
    results = [gs.Variable(name, dtype, shape) for name, (dtype, shape) in zip(NMS_OUTPUTS, shapes)]
    graph.layer(op=PLUGIN, name="efficient_nms", inputs=[outputs["boxes"], outputs["scores"]], outputs=results,
                attrs={"plugin_version": "1", "background_class": -1, "max_output_boxes": max_det,
                       "score_threshold": float(nms["conf"]), "iou_threshold": float(nms["iou"]),
                       "score_activation": 0, "box_coding": 0})
    graph.outputs = results
    graph.cleanup().toposort()
    edited = gs.export_onnx(graph, do_type_check=False)
    edited.ir_version, edited.producer_name = proto.ir_version, proto.producer_name
    del edited.opset_import[:]
    edited.opset_import.extend(proto.opset_import)
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(output_names=json.dumps(list(NMS_OUTPUTS)), nms=json.dumps({**nms, "plugin": PLUGIN}))
    for key, value in props.items():
        entry = edited.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(_without_plugin(edited))
    return edited


def _without_plugin(proto: Any) -> Any:
    """`proto` with the plugin node dropped, so the ONNX checker (which knows no TensorRT plugin) checks the rest."""
    import onnx

    rest = onnx.ModelProto()
    rest.CopyFrom(proto)
    kept = [n for n in rest.graph.node if n.op_type != PLUGIN]
    del rest.graph.node[:]
    rest.graph.node.extend(kept)
    del rest.graph.output[:]
    rest.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", None, None])
                             for name in NMS_INPUTS)
    return rest
