"""Recipes: the whole pipeline as validated YAML. Errors name the field and what it accepts."""
from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeres.artifacts import read_user_document
from edgeres.errors import UserInputError
from edgeres.yamlfile import key_mark, parse_yaml

RECIPES_DIR = Path(__file__).parent / "recipes"
_NAME = re.compile(r"[A-Za-z0-9._-]+")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataStage(_Strict):
    source: str
    img_size: int = Field(64, ge=8, le=4096)
    in_chans: Optional[Literal[1, 3]] = None
    split: Optional[tuple[float, float, float]] = None
    seed: int = 0
    augment: bool = True
    skip_bad: bool = False
    detect_images: int = Field(600, ge=3)  # shapes-det: how many scenes it draws


_DEVICE = r"^(auto|cpu|cuda(:\d+)?)$"  # as edgeres.train.device checks it, without importing torch here


class TrainStage(_Strict):
    model: str
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    patience: int = Field(0, ge=0)
    balance: Literal["none", "loss", "sampler"] = "none"
    weights: Optional[str] = None
    freeze: Optional[str] = None
    device: str = Field("auto", pattern=_DEVICE)
    amp: Union[Literal["auto"], bool] = False  # mixed precision (edgeres.train.device); auto: only where native


class PruneStage(_Strict):
    macs: Optional[float] = Field(None, gt=0, le=1)
    params: Optional[float] = Field(None, gt=0, le=1)
    latency: Optional[float] = Field(None, gt=0, le=1)  # kept fraction of the roofline latency on latency_device
    latency_device: str = "host"    # the device profile whose roofline costs the layers (target latency)
    # ... or its numbers as `edgeres optimize` used them: ops_per_s, bytes_per_s, overhead_s, element_bytes
    roofline: Optional[dict[str, float]] = None
    importance: Literal["l1", "l2", "bn", "taylor"] = "l2"
    global_pruning: bool = False
    round_to: int = Field(8, ge=1)
    steps: int = Field(1, ge=1)
    finetune_epochs: int = Field(5, ge=0)
    lr: float = Field(5e-4, gt=0)
    distill: bool = True            # the trained model teaches the pruned one
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.3, ge=0, le=1)
    device: str = Field("auto", pattern=_DEVICE)
    amp: Union[Literal["auto"], bool] = False


class ExportStage(_Strict):
    to: list[Literal["onnx", "openvino", "tensorrt"]] = ["onnx", "openvino"]
    precisions: list[Literal["fp32", "fp16", "int8"]] = ["fp32", "int8"]
    calib_size: int = Field(300, ge=1)
    max_drop: Optional[float] = Field(None, ge=0, lt=100)
    dynamic_batch: bool = True      # false: a fixed batch of 1, the fastest graph for one camera frame
    nms: bool = False               # detectors: NMS inside the graph (output "detections")
    max_det: int = Field(100, ge=1)
    nms_iou: float = Field(0.6, gt=0, le=1)
    nms_conf: float = Field(0.25, ge=0, lt=1)
    int8_preset: Optional[Literal["performance", "mixed"]] = None  # symmetric / asymmetric activations
    int8_per_channel: bool = True   # ONNX Runtime weight scales (NNCF is always per channel)
    int8_method: Literal["minmax", "entropy", "percentile"] = "minmax"  # ONNX Runtime calibration


class BenchStage(_Strict):
    batch_sizes: list[int] = [1]
    threads: list[int] = [2]
    runs: int = Field(200, ge=1)
    warmup: int = Field(20, ge=0)
    budget_s: float = Field(20.0, gt=0)
    min_seconds: float = Field(3.0, ge=0)


class CheckStage(_Strict):
    candidate: str = "fastest-int8"   # "fastest-int8", "fastest", or an artifact file name
    max_drop: float = Field(1.0, ge=0)
    max_class_drop: Optional[float] = Field(None, ge=0)
    max_latency_ms: Optional[float] = Field(None, ge=0)
    max_size_mb: Optional[float] = Field(None, ge=0)


class ReportStage(_Strict):
    pass


class Recipe(_Strict):
    name: str                         # a plain name, never a path: the default run directory is runs/<name>
    out: Optional[str] = None         # default runs/<name>; any path (the run deletes only what it wrote)
    seed: int = 0
    data: DataStage
    train: TrainStage
    prune: Optional[PruneStage] = None
    export: Optional[ExportStage] = None
    bench: Optional[BenchStage] = None
    check: Optional[CheckStage] = None
    report: Optional[ReportStage] = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not _NAME.fullmatch(name) or name in (".", ".."):
            # The value is not quoted: error messages never repeat a user file's text.
            raise ValueError("must be a plain name (letters, digits, '.', '_', '-'; not '.' or '..'), not a path; "
                             "to put the run elsewhere, set out: or pass --out")
        return name


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A packaged recipe by name (`demo`) or a YAML file; invalid fields raise UserInputError naming them."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UserInputError(f"no recipe named {name_or_path!r}; packaged recipes: {list_recipes()}, "
                                 "or give a path to a YAML file")
    raw, node = read_user_document(path, parse_yaml, (yaml.YAMLError,), "a recipe file in YAML")
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        raise UserInputError(f"{path}: a recipe is a mapping of stages, got {got}")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        problems = [_describe(err, node) for err in e.errors()]
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise UserInputError(f"{path}: invalid recipe: {'; '.join(problems[:5])}{more}") from None


def _describe(err: dict[str, Any], node: yaml.Node | None) -> str:
    """One validation error as `field (line L, column C): what was wrong`, quoting no text from the file.

    Schema field names are safe to print; an unknown key is the file's own text (`edgeres run /etc/shadow`
    turns every line into one), so it is given by position only.
    """
    unknown = err["type"] == "extra_forbidden"
    known = err["loc"][:-1] if unknown else err["loc"]
    mark = None if err["type"] == "missing" else key_mark(node, err["loc"])
    where = (".".join(map(str, known)) or "top level") + (f" (line {mark.line + 1}, column {mark.column + 1})"
                                                          if mark else "")
    if unknown:
        return f"{where}: unknown field; expected one of {', '.join(_fields(known))}"
    return f"{where}: {err['msg']}"


def _fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names the recipe schema allows at `loc` (a path of field names from the top)."""
    model: type[BaseModel] = Recipe
    for name in loc:
        annotation = model.model_fields[name].annotation
        model = next(a for a in (*typing.get_args(annotation), annotation)
                     if isinstance(a, type) and issubclass(a, BaseModel))
    return list(model.model_fields)
