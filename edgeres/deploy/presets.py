"""Export presets (`export/presets/<name>.yaml`): what a device family runs and how edgeres exports for it.

The device facts the exporter and the runtimes once hard-coded (opset, TensorRT's batch range and workspace,
OpenVINO's device, ONNX Runtime's providers, threads) live here, one typed preset per family; a device profile
names its preset. `load_yaml_model` validates any of these YAML files the same way: errors name the file,
the field path and the line, and never repeat the file's text (a user may point --device at any file).
"""
from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeres.artifacts import read_user_document
from edgeres.deploy.resources import data_dir
from edgeres.errors import UserInputError
from edgeres.yamlfile import key_mark, parse_yaml

if TYPE_CHECKING:
    from edgeres.export import ExportConfig

PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
YAML_SUFFIXES = (".yaml", ".yml")
# The file each backend runs, as edgeres.export names the formats.
FORMAT_OF = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "tensorrt"}
Model = TypeVar("Model", bound=BaseModel)


class Strict(BaseModel):
    """A YAML-loaded document: unknown keys refused, NaN/inf refused, immutable once loaded."""
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Preset(Strict):
    description: str
    backend: Literal["onnxruntime", "openvino", "tensorrt"]
    formats: list[Literal["onnx", "openvino", "tensorrt"]] = Field(min_length=1)
    precisions: list[Literal["fp32", "fp16", "int8"]] = Field(min_length=1)  # in order of preference
    opset: int = Field(ge=9, le=23)                       # the bounds edgeres's exporter takes
    dynamic_batch: bool                                   # false: a fixed batch of 1, fastest for one camera frame
    max_batch: int = Field(ge=1, le=1024)                 # the largest batch the engine/graph is built for
    workspace_mb: Optional[int] = Field(None, ge=16)      # TensorRT builder workspace; null for other backends
    nms_in_graph: bool                                    # detectors: NMS inside the model file
    nms_plugin: Optional[Literal["EfficientNMS_TRT"]] = None  # TensorRT's NMS plugin; null elsewhere
    calib_size: int = Field(ge=1)                         # INT8 calibration images from the training split
    preprocess_in_graph: bool                             # resize, layout, colour and normalisation in the graph
    threads: Optional[int] = Field(None, ge=1)            # CPU threads; null: one per core of the device
    providers: Optional[list[str]] = Field(None, min_length=1)  # ONNX Runtime execution providers, in order
    openvino_device: Optional[str] = None                 # OpenVINO device name ("CPU", "GPU", "NPU")
    dla_core: Optional[int] = Field(None, ge=0)           # TensorRT: build for this DLA core (GPU fallback)

    @model_validator(mode="after")
    def _consistent(self) -> "Preset":
        needed = FORMAT_OF[self.backend]
        if needed not in self.formats:
            raise ValueError(f"formats: backend {self.backend} runs {needed} files; add {needed!r} to formats")
        for field, backend in (("workspace_mb", "tensorrt"), ("nms_plugin", "tensorrt"), ("dla_core", "tensorrt"),
                               ("providers", "onnxruntime"), ("openvino_device", "openvino")):
            if getattr(self, field) is not None and self.backend != backend:
                raise ValueError(f"{field}: applies to backend {backend} only; this preset runs {self.backend} "
                                 "(set it to null)")
        required = {"tensorrt": ("workspace_mb",), "onnxruntime": ("providers",), "openvino": ("openvino_device",)}
        for field in required[self.backend]:
            if getattr(self, field) is None:
                raise ValueError(f"{field}: backend {self.backend} needs it")
        if self.backend == "tensorrt" and self.nms_in_graph and self.nms_plugin is None:
            raise ValueError("nms_plugin: TensorRT runs in-graph NMS as a plugin; name it (EfficientNMS_TRT)")
        if not self.dynamic_batch and self.max_batch != 1:
            raise ValueError(f"max_batch: a fixed-batch (dynamic_batch: false) graph takes batch 1, "
                             f"got {self.max_batch}")
        return self

    def export_config(self, *, detector: bool = False, **overrides: Any) -> "ExportConfig":
        """The ExportConfig this preset asks for; `overrides` replace its fields (ExportConfig's names).

        detector: the model has detection outputs, so the preset's `nms_in_graph` applies (edgeres's exporter
        refuses NMS for a model without detections).
        """
        from edgeres.export import ExportConfig  # torch-heavy: only when an export is really built

        fields = dict(formats=tuple(self.formats), precisions=tuple(self.precisions), opset=self.opset,
                      dynamic_batch=self.dynamic_batch, calib_size=self.calib_size, trt_max_batch=self.max_batch,
                      nms=self.nms_in_graph and detector)
        if self.workspace_mb is not None:
            fields["trt_workspace_mb"] = self.workspace_mb
        fields.update(overrides)
        return ExportConfig(**fields)


def list_presets() -> list[str]:
    """Names of the presets in export/presets/."""
    return sorted(p.stem for p in (data_dir("export") / "presets").glob("*.yaml"))


def load_preset(name_or_path: str | Path) -> Preset:
    """A preset by name (export/presets/<name>.yaml) or from a YAML file path."""
    path = resolve(name_or_path, data_dir("export") / "presets", list_presets, "preset")
    return load_yaml_model(path, Preset, "an export preset in YAML")


def resolve(name_or_path: str | Path, folder: Path, names: typing.Callable[[], list[str]], what: str) -> Path:
    """The file a name (a plain word: `folder/<name>.yaml`) or a path (has a '/' or a .yaml suffix) means."""
    text = str(name_or_path)
    if "/" in text or "\\" in text or text.lower().endswith(YAML_SUFFIXES):
        return Path(text)
    if PLAIN_NAME.fullmatch(text) and (folder / f"{text}.yaml").is_file():
        return folder / f"{text}.yaml"
    raise UserInputError(f"no {what} named {text!r}; available: {', '.join(names())}, or give a path to a YAML file")


def load_yaml_model(path: Path, model: type[Model], expected: str) -> Model:
    """Parse `path` (safe YAML) and validate it as `model`; a problem is a UserInputError naming field and line."""
    raw, node = read_user_document(path, parse_yaml, (yaml.YAMLError,), expected)
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise UserInputError(f"{path}: expected a mapping of fields, got {got}")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        problems = [_describe(err, node, model) for err in e.errors()]
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise UserInputError(f"{path}: {'; '.join(problems[:3])}{more}") from None


def _describe(err: Any, node: yaml.Node | None, model: type[BaseModel]) -> str:
    """`field.path (line L, column C): what was wrong[, got N]`, quoting no text from the file.

    A key that is not a word of the schema (a field name or an allowed value) is shown as '…': an unknown
    key is the file's own text. Numbers are safe to repeat, and say what was out of range.
    """
    words = _vocabulary(model)
    loc = tuple(p for p in err["loc"] if p != "[key]")
    unknown = err["type"] == "extra_forbidden"
    known = loc[:-1] if unknown else loc
    path = ".".join(str(p) if isinstance(p, int) or p in words else "…" for p in known)
    mark = None if err["type"] == "missing" else key_mark(node, loc)
    where = (path or "top level") + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else "")
    if unknown:
        return f"{where}: unknown field; expected one of {', '.join(_fields_at(model, known))}"
    if err["type"] == "value_error":  # our cross-field checks start with the field they are about
        return f"{path + ': ' if path else ''}{str(err['ctx']['error'])}"
    value = err.get("input")
    got = f", got {value}" if isinstance(value, (int, float)) and err["type"] != "missing" else ""
    return f"{where}: {err['msg']}{got}"


def _arms(annotation: Any) -> tuple[Any, ...]:
    """The types an annotation allows (the arms of Optional/Union, or itself)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _step(annotation: Any, part: Any) -> Any:
    """The annotation one step into `annotation` along `part` (a field name, list index or dict key)."""
    for arm in _arms(annotation):
        if isinstance(arm, type) and issubclass(arm, BaseModel) and part in arm.model_fields:
            return arm.model_fields[part].annotation
        if typing.get_origin(arm) is list and isinstance(part, int):
            return typing.get_args(arm)[0]
        if typing.get_origin(arm) is dict:
            return typing.get_args(arm)[1]
    return None


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names (or allowed keys) the schema takes at `loc`."""
    annotation: Any = model
    for part in loc:
        annotation = _step(annotation, part)
    for arm in _arms(annotation):
        if isinstance(arm, type) and issubclass(arm, BaseModel):
            return list(arm.model_fields)
        if typing.get_origin(arm) is dict:
            return [str(a) for a in typing.get_args(typing.get_args(arm)[0])]
    return []


def _vocabulary(model: type[BaseModel]) -> set[str]:
    """Every field name and Literal value in the schema: the words safe to repeat in an error."""
    words: set[str] = set()
    seen: set[int] = set()

    def visit(annotation: Any) -> None:
        if id(annotation) in seen:
            return
        seen.add(id(annotation))
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for name, field in annotation.model_fields.items():
                words.add(name)
                visit(field.annotation)
        elif typing.get_origin(annotation) is Literal:
            words.update(str(a) for a in typing.get_args(annotation))
        else:
            for arg in typing.get_args(annotation):
                visit(arg)

    visit(model)
    return words
