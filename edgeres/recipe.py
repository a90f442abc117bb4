"""Recipes: the whole pipeline as validated YAML. Errors name the field and what it accepts."""
from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeres.artifacts import read_user_document
from edgeres.errors import UserInputError
from edgeres.tasks.base import LossConfig
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
    shapes_per_class: int = Field(120, ge=3)  # shapes: how many images of each kind it draws
    classes: Optional[list[str]] = None    # only these of the data's classes (at least two), in this order
    pairs: Optional[Literal["denoise", "inpaint", "sr2", "sr4"]] = None  # image2image pairs made from the data
    sigma: float = Field(0.1, gt=0, le=1)  # image2image denoise: noise std in image range [0, 1]


_DEVICE = r"^(auto|cpu|cuda(:\d+)?)$"  # as edgeres.train.device checks it, without importing torch here


class _Training(_Strict):
    """How a model trains: the train stage's settings, and every compared variant's alike."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    patience: int = Field(0, ge=0)
    balance: Literal["none", "loss", "sampler"] = "none"
    freeze: Optional[str] = None
    device: str = Field("auto", pattern=_DEVICE)
    amp: Union[Literal["auto"], bool] = False  # mixed precision (edgeres.train.device); auto: only where native
    betas: Optional[tuple[float, float]] = None  # adam/adamw moment decay, e.g. [0.5, 0.999] (default torch's)
    # Image-to-image: the pixel loss, a VGG-16 perceptual term (local weight file) and a patch-discriminator term.
    loss: Literal["mse", "l1"] = "mse"
    perceptual: float = Field(0.0, ge=0)
    perceptual_weights: Optional[str] = None
    adversarial: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _loss_is_complete(self) -> "_Training":
        try:
            self.loss_config()
        except UserInputError as e:
            raise ValueError(str(e)) from None
        return self

    def loss_config(self) -> LossConfig:
        return LossConfig(pixel=self.loss, perceptual=self.perceptual, perceptual_weights=self.perceptual_weights,
                          adversarial=self.adversarial)

    def training_settings(self) -> dict[str, Any]:
        """These settings as TrainConfig (and CompareConfig) fields."""
        settings = self.model_dump(include=set(_Training.model_fields))
        for key in ("perceptual", "perceptual_weights", "adversarial"):
            settings.pop(key)
        return {**settings, "loss": self.loss_config()}


class TrainStage(_Training):
    model: str
    weights: Optional[str] = None


class PruneStage(_Strict):
    macs: Optional[float] = Field(None, gt=0, le=1)
    params: Optional[float] = Field(None, gt=0, le=1)
    latency: Optional[float] = Field(None, gt=0, le=1)  # kept fraction of the roofline latency on latency_device
    latency_device: str = "host"    # the device profile whose roofline costs the layers (target latency)
    # ... or its numbers as `edgeres optimize` used them: ops_per_s, bytes_per_s, overhead_s, element_bytes
    roofline: Optional[dict[str, float]] = None
    sparsity: Optional[float] = Field(None, gt=0, lt=1)  # unstructured: this fraction of weights zeroed instead
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
    max_latency_ms: Optional[float] = Field(None, gt=0)
    max_size_mb: Optional[float] = Field(None, gt=0)
    max_explanation_drift: Optional[float] = Field(None, ge=0, le=2)  # 1 - mean rank correlation of occlusion maps
    explanation_images: int = Field(16, ge=1)


class ExplainStage(_Strict):
    """Where the trained model looks (a Grad-CAM panel on test images) and how far each compressed or exported
    artifact's occlusion maps drift from its own; the report shows both."""

    panel_images: int = Field(8, ge=0)    # 0: no panel
    drift_images: int = Field(16, ge=0)   # 0: no drift
    window: Optional[int] = Field(None, ge=1)  # occlusion patch, input pixels (default: 1/8 of the side)
    stride: Optional[int] = Field(None, ge=1)


class ReportStage(_Strict):
    pass


class CompareStage(_Training):
    """Variants trained alike and measured alike (`edgeres compare`); `data:` defaults to the recipe's."""

    models: list[str] = Field(min_length=1)
    data: Optional[DataStage] = None
    weights: dict[str, str] = {}    # variant name -> local weight file
    transfer: list[str] = []        # variants that start from `edgeres run --weights FILE` when it is given
    threads: Optional[int] = Field(None, ge=1)  # torch's CPU threads, training and timing (default: torch's)
    rounds: int = Field(5, ge=1)
    runs: int = Field(20, ge=1)
    # Image-to-image: LPIPS, FID and KID columns from local weight files (edgeres.compare.config.ImageScoring)
    lpips_weights: Optional[str] = None      # torchvision's alexnet / vgg16 / squeezenet1_1 file
    inception_weights: Optional[str] = None  # torch-fidelity's Inception-v3 file
    fid_features: Optional[str] = None       # or an edgeres classification checkpoint's features

    @model_validator(mode="after")
    def _transfer_names_compared_models(self) -> "CompareStage":
        strays = sorted(set(self.transfer) - set(self.models))
        if strays:
            raise ValueError(f"transfer names {strays}, which are not among models")
        if self.inception_weights and self.fid_features:
            raise ValueError("FID/KID use one network: give inception_weights or fid_features, not both")
        return self


class Recipe(_Strict):
    name: str                         # a plain name, never a path: the default run directory is runs/<name>
    out: Optional[str] = None         # default runs/<name>; any path (the run deletes only what it wrote)
    seed: int = 0
    data: Optional[DataStage] = None  # required by train; compare may name its own
    train: Optional[TrainStage] = None
    prune: Optional[PruneStage] = None
    export: Optional[ExportStage] = None
    bench: Optional[BenchStage] = None
    explain: Optional[ExplainStage] = None
    check: Optional[CheckStage] = None
    report: Optional[ReportStage] = None
    compare: Optional[CompareStage] = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not _NAME.fullmatch(name) or name in (".", ".."):
            # The value is not quoted: error messages never repeat a user file's text.
            raise ValueError("must be a plain name (letters, digits, '.', '_', '-'; not '.' or '..'), not a path; "
                             "to put the run elsewhere, set out: or pass --out")
        return name

    @model_validator(mode="after")
    def _stages_have_their_inputs(self) -> "Recipe":
        if self.train is None and self.compare is None:
            raise ValueError("a recipe needs a train stage, a compare stage, or both")
        later = [s for s in ("prune", "export", "bench", "explain", "check", "report") if getattr(self, s) is not None]
        if self.train is None and later:
            raise ValueError(f"{', '.join(later)} work on the trained model: add a train stage")
        if self.data is None and (self.train is not None or self.compare.data is None):
            raise ValueError("data is missing: train and compare read the recipe's data stage "
                             "(compare may name its own data: instead)")
        return self


def with_overrides(recipe: Recipe, data: str | None = None, weights: str | None = None,
                   classes: list[str] | None = None) -> Recipe:
    """`recipe` run on another data source (`edgeres run NAME --data FOLDER`: every data stage reads it, and a
    packaged recipe's class selection, made for its built-in data, is dropped unless `classes` names the new
    one's) or from a weight file (`--weights FILE`: the train stage starts from it)."""
    update: dict[str, Any] = {}
    if classes is not None and data is None:
        raise UserInputError("--classes picks class folders of the data given with --data; give --data too")
    if data is not None:
        def moved(stage: DataStage) -> DataStage:
            return stage.model_copy(update={"source": data, "classes": None if classes is None else list(classes)})

        if recipe.data is not None:
            update["data"] = moved(recipe.data)
        if recipe.compare is not None and recipe.compare.data is not None:
            update["compare"] = recipe.compare.model_copy(update={"data": moved(recipe.compare.data)})
    if weights is not None:
        transfer = recipe.compare.transfer if recipe.compare is not None else []
        if recipe.train is None and not transfer:
            raise UserInputError(f"--weights starts a train stage or a compare stage's transfer variants from a "
                                 f"file, and recipe {recipe.name} has neither")
        if recipe.train is not None:
            update["train"] = recipe.train.model_copy(update={"weights": weights})
        if transfer:
            compare = update.get("compare", recipe.compare)
            update["compare"] = compare.model_copy(
                update={"weights": {**compare.weights, **{name: weights for name in transfer}}})
    return recipe.model_copy(update=update)


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A packaged recipe by name (`demo`) or a YAML file; invalid fields raise UserInputError naming them."""
    path = Path(name_or_path)
    if not path.suffix and not path.is_file():  # a name (a folder of that name, e.g. its run, is no recipe)
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
    turns every line into one), so it is given by position only, with the schema's nearest name as a guess.
    """
    unknown = err["type"] == "extra_forbidden"
    known = err["loc"][:-1] if unknown else err["loc"]
    mark = None if err["type"] == "missing" else key_mark(node, err["loc"])
    where = (".".join(map(str, known)) or "top level") + (f" (line {mark.line + 1}, column {mark.column + 1})"
                                                          if mark else "")
    if unknown:
        fields = _fields(known)
        near = difflib.get_close_matches(str(err["loc"][-1]), fields, n=1)
        guess = f" (did you mean {near[0]}?)" if near else ""
        return f"{where}: unknown field{guess}; expected one of {', '.join(fields)}"
    return f"{where}: {err['msg']}"


def _fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names the recipe schema allows at `loc` (a path of field names from the top)."""
    model: type[BaseModel] = Recipe
    for name in loc:
        annotation = model.model_fields[name].annotation
        model = next(a for a in (*typing.get_args(annotation), annotation)
                     if isinstance(a, type) and issubclass(a, BaseModel))
    return list(model.model_fields)
