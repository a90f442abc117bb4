"""What an exported file carries: the edgeres metadata embedded in it, read back without torch.

The exporters write these fields (`edgeres.export.*.convert`); the Runners and a deploy bundle read them
here, where torch may not be installed. Runtimes are imported by the caller (an ONNX ModelProto's
metadata_props, an OpenVINO Model's rt_info), so this module needs neither.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeres.errors import UserInputError
from edgeres.meta import ModelMeta

INPUT_NAME, OUTPUT_NAME = "input", "logits"  # OUTPUT_NAME: a classifier's one output
DETECTIONS = "detections"  # a detector's output with NMS in the graph: (N, max_det, 6) [x1, y1, x2, y2, score, class]
META_KEY = "edgeres"  # ONNX metadata_props key: JSON of ModelMeta.to_dict()
RT_KEY = "edgeres"  # OpenVINO rt_info section: edgeres/meta (JSON of ModelMeta.to_dict()), edgeres/source_sha256, ...
LOW_BIT_TYPES = {"i8", "u8", "i4", "u4"}
# JSON fields every export carries beside the metadata (ONNX metadata_props, IR rt_info, engine sidecar):
# the graph's outputs in order, the NMS settings built into it (null: none), and the module-name prefixes
# INT8 quantization keeps in float (the model's keep_float).
GRAPH_FIELDS = {"output_names": [OUTPUT_NAME], "nms": None, "keep_float": []}


def read_meta(props: dict[str, str], path: str | Path) -> ModelMeta:
    """The ModelMeta stored in an export's metadata_props; UserInputError when it is absent or bad."""
    if META_KEY not in props:
        present = sorted(props) or "none"
        raise UserInputError(
            f"{path}: not an edgeres ONNX export: metadata key {META_KEY!r} is missing "
            f"(metadata keys present: {present}); export it with edgeres.export.onnx.export_onnx"
        )
    try:
        return ModelMeta.from_dict(json.loads(props[META_KEY]), source=f"{path} (its embedded model.json)")
    except json.JSONDecodeError as e:
        raise UserInputError(f"{path}: metadata key {META_KEY!r} is not valid JSON ({e})") from e


def read_onnx_meta(path: str | Path) -> ModelMeta:
    """Read the ModelMeta of an edgeres ONNX file without loading its weights."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return read_meta({p.key: p.value for p in proto.metadata_props}, path)


def read_export_meta(path: str | Path) -> ModelMeta:
    """The ModelMeta of an exported .onnx or .xml, read from the file without compiling it."""
    if Path(path).suffix == ".xml":
        import openvino as ov

        return read_edgeres_info(ov.Core().read_model(str(path)), path)[0]
    return read_onnx_meta(path)


def read_edgeres_info(ov_model: Any, path: str | Path = "model") -> tuple[ModelMeta, dict[str, str | None]]:
    """The ModelMeta and other edgeres fields stored in an IR; UserInputError when it has none."""
    if not ov_model.has_rt_info([RT_KEY, "meta"]):
        raise UserInputError(f"{path}: not an edgeres export (its rt_info has no '{RT_KEY}/meta' entry); "
                             "export the checkpoint with `edgeres export --to openvino`")
    try:
        meta = ModelMeta.from_dict(json.loads(ov_model.get_rt_info([RT_KEY, "meta"]).astype(str)),
                                   source=f"{path} (its embedded model.json)")
    except json.JSONDecodeError as e:
        raise UserInputError(f"{path}: the edgeres metadata in its rt_info is not valid JSON ({e})") from e
    section = ov_model.get_rt_info()[RT_KEY]
    fields = {key: value.astype(str) for key, value in section.items() if key != "meta"}
    return meta, {key: value or None for key, value in fields.items()}


def graph_fields(fields: dict[str, str | None], path: str | Path = "model") -> dict[str, Any]:
    """GRAPH_FIELDS decoded from an export's string fields; a file written before they existed gets the defaults."""
    decoded = {}
    for key, default in GRAPH_FIELDS.items():
        raw = fields.get(key)
        try:
            decoded[key] = json.loads(raw) if raw else default
        except json.JSONDecodeError as e:
            raise UserInputError(f"{path}: its metadata field {key!r} is not valid JSON ({e})") from e
    return decoded


def check_ir_path(path: str | Path) -> Path:
    """`path` as an existing IR: an .xml file with its .bin beside it, else UserInputError."""
    xml = xml_path(path)
    for p in (xml, xml.with_suffix(".bin")):
        if not p.is_file():
            raise UserInputError(f"{p}: no such file (an OpenVINO IR is an .xml with its .bin beside it)")
    return xml


def xml_path(path: str | Path) -> Path:
    """`path` if it names an .xml file (existing or not), else UserInputError."""
    p = Path(path)
    if p.suffix != ".xml":
        raise UserInputError(f"{path}: an OpenVINO IR path must end in .xml (its weights go beside it in .bin)")
    return p


def ir_precision(model: Any) -> dict[str, bool]:
    """What the IR's graph holds: FakeQuantize (int8), fp16 weight constants, low-bit weight constants."""
    int8 = fp16 = low_bit = False
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            int8 = True
        elif kind == "Constant":
            etype = op.get_element_type().get_type_name()
            fp16 = fp16 or etype == "f16"
            low_bit = low_bit or etype in LOW_BIT_TYPES
    return {"int8": int8, "fp16_weights": fp16, "int8_weights": low_bit and not int8}
