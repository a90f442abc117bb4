"""Convert a PyTorch model to OpenVINO IR (.xml + .bin) carrying its edgeres metadata, and read an IR's
metadata and quantization state back (shared by the quantizer and the Runner)."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeres.artifacts import scratch_dir
from edgeres.errors import UserInputError
from edgeres.meta import ModelMeta
from edgeres.export.onnx.convert import export_module, keep_float
from edgeres.models.base import evaluating
from edgeres.runtime.embedded import (INPUT_NAME, LOW_BIT_TYPES, OUTPUT_NAME, RT_KEY, check_ir_path, ir_precision,
                                       read_edgeres_info, xml_path)

PRECISIONS = ("fp32", "fp16")
WEIGHTED_OPS = {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"}
# Ops a quantizer passes through unchanged; they lose their input FakeQuantize when a neighbour is
# reverted, but NNCF does not count them as reverted operations.
_QUANTIZE_AGNOSTIC = {"MaxPool", "AdaptiveMaxPool", "ReduceMax", "Reshape", "Squeeze", "Unsqueeze", "Split",
                      "VariadicSplit", "Transpose", "Tile", "StridedSlice", "ShuffleChannels", "Broadcast",
                      "Pad", "Minimum", "Maximum", "ConvertLike", "Gather", "GatherND", "GatherElements",
                      "DepthToSpace", "SpaceToDepth", "BatchToSpace", "SpaceToBatch"}


def export_openvino(
    model: nn.Module,
    meta: ModelMeta,
    out_xml: str | Path,
    *,
    precision: str = "fp32",
    dynamic_batch: bool = True,
    source_sha256: str | None = None,
    nms: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert `model.inference_module(nms)` to IR at `out_xml`, every output named as the module names it;
    fp16 stores weights in fp16 (compute precision is the runtime's)."""
    import openvino as ov
    from openvino.frontend import OpConversionFailure

    if precision not in PRECISIONS:
        raise UserInputError(f"OpenVINO export precision must be one of {PRECISIONS}, got {precision!r} "
                             "(int8 comes from edgeres.export.openvino.quantize)")
    out_xml = xml_path(out_xml)
    c, h, w = meta.input_shape
    batch = -1 if dynamic_batch else 1
    example = torch.zeros(1, c, h, w)
    with evaluating(model), warnings.catch_warnings():
        module, names = export_module(model, nms)
        # OpenVINO's TorchScript path still calls torch.jit.trace, which torch now flags as deprecated.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            ov_model = ov.convert_model(module, example_input=example, input=[([batch, c, h, w], ov.Type.f32)])
        except OpConversionFailure as e:  # an op without a translation: this format fails, the others go on
            summary = str(e).split("Summary:", 1)[-1].strip().replace("\n", " ")
            raise RuntimeError(f"OpenVINO cannot convert this model: {summary}") from e
    graph = {"output_names": names, "nms": nms, "keep_float": keep_float(model)}
    name_tensors(ov_model, graph["output_names"])
    record = {
        "format": "openvino",
        "precision": precision,
        "dynamic_batch": dynamic_batch,
        "input_shape": [None if dynamic_batch else 1, c, h, w],
        "input_name": INPUT_NAME,
        **graph,
        "openvino_version": ov.get_version(),
        "source_sha256": source_sha256,
    }
    fields = {k: record[k] for k in ("precision", "source_sha256", "openvino_version")}
    set_edgeres_info(ov_model, meta, {**fields, **{k: json.dumps(v) for k, v in graph.items()}})
    save_ir(ov_model, out_xml, compress_to_fp16=(precision == "fp16"))
    record.update(path=str(out_xml), bin_path=str(out_xml.with_suffix(".bin")))
    return record


def name_tensors(ov_model: Any, output_names: list[str] | tuple[str, ...]) -> None:
    """Name the input INPUT_NAME and each output as the traced module names it (conversion leaves them unnamed)."""
    if len(ov_model.outputs) != len(output_names):
        raise RuntimeError(f"the IR has {len(ov_model.outputs)} outputs, the model names {list(output_names)}")
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    for output, name in zip(ov_model.outputs, output_names):
        output.get_tensor().set_names({name})


def set_edgeres_info(ov_model: Any, meta: ModelMeta, fields: dict[str, Any]) -> None:
    """Store the metadata a Runner needs in the model's rt_info, so the .xml alone describes the model."""
    ov_model.set_rt_info(json.dumps(meta.to_dict(), default=str), [RT_KEY, "meta"])
    for key, value in fields.items():
        # rt_info holds strings; "" stands for None so every key is always present.
        ov_model.set_rt_info("" if value is None else str(value), [RT_KEY, key])


def save_ir(ov_model: Any, out_xml: Path, *, compress_to_fp16: bool) -> None:
    """Save .xml + .bin so that an interrupted save never leaves an .xml pointing at a wrong .bin."""
    import openvino as ov

    out_xml.parent.mkdir(parents=True, exist_ok=True)
    with scratch_dir(out_xml.parent, out_xml.stem) as tmp:
        tmp_xml = tmp / out_xml.name
        ov.save_model(ov_model, tmp_xml, compress_to_fp16=compress_to_fp16)
        # The .xml is what marks the artifact as present: drop the old one first, move it in last.
        out_xml.unlink(missing_ok=True)
        os.replace(tmp_xml.with_suffix(".bin"), out_xml.with_suffix(".bin"))
        os.replace(tmp_xml, out_xml)


def quantized_ops(ov_model: Any, agnostic: bool = True) -> set[str]:
    """Names of ops fed by a quantizer (a FakeQuantize or an int8 weight's dequantize chain);
    `agnostic=False` leaves out ops such as MaxPool or Reshape that only pass quantized values on."""
    names = set()
    for op in ov_model.get_ops():
        if op.get_type_name() in ("FakeQuantize", "Constant") or _is_dequantize(op):
            continue
        if not agnostic and op.get_type_name() in _QUANTIZE_AGNOSTIC:
            continue
        if any(_from_quantizer(i.get_source_output().get_node()) for i in op.inputs()):
            names.add(op.get_friendly_name())
    return names


def float_layers(ov_model: Any) -> list[str]:
    """Convolution and MatMul ops that run in float in a quantized IR."""
    quantized = quantized_ops(ov_model)
    return sorted(op.get_friendly_name() for op in ov_model.get_ops()
                  if op.get_type_name() in WEIGHTED_OPS and op.get_friendly_name() not in quantized)


def _from_quantizer(node: Any) -> bool:
    if node.get_type_name() == "FakeQuantize":
        return True
    if _is_dequantize(node):
        return any(_from_quantizer(i.get_source_output().get_node()) or _is_low_bit_constant(
            i.get_source_output().get_node()) for i in node.inputs())
    return False


def _is_dequantize(node: Any) -> bool:
    """Convert/Subtract/Multiply/Reshape on a weight: int8 constant -> Convert -> (- zero point) * scale."""
    if node.get_type_name() not in ("Convert", "Subtract", "Multiply", "Reshape"):
        return False
    sources = [i.get_source_output().get_node() for i in node.inputs()]
    return any(_is_low_bit_constant(s) or (_is_dequantize(s) and s is not node) for s in sources[:1])


def _is_low_bit_constant(node: Any) -> bool:
    return node.get_type_name() == "Constant" and node.get_element_type().get_type_name() in LOW_BIT_TYPES
