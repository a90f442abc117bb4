"""Recipes: the whole pipeline as validated YAML. Errors name the field and what it accepts."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeres.artifacts import read_user_document
from edgeres.errors import UserInputError

RECIPES_DIR = Path(__file__).parent / "recipes"


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


class PruneStage(_Strict):
    macs: Optional[float] = Field(None, gt=0, le=1)
    params: Optional[float] = Field(None, gt=0, le=1)
    importance: Literal["l1", "l2", "bn", "taylor"] = "l2"
    global_pruning: bool = False
    round_to: int = Field(8, ge=1)
    steps: int = Field(1, ge=1)
    finetune_epochs: int = Field(5, ge=0)
    lr: float = Field(5e-4, gt=0)
    distill: bool = True            # the trained model teaches the pruned one
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.3, ge=0, le=1)


class ExportStage(_Strict):
    to: list[Literal["onnx", "openvino", "tensorrt"]] = ["onnx", "openvino"]
    precisions: list[Literal["fp32", "fp16", "int8"]] = ["fp32", "int8"]
    calib_size: int = Field(300, ge=1)
    max_drop: Optional[float] = Field(None, ge=0, lt=100)
    dynamic_batch: bool = True      # false: a fixed batch of 1, the fastest graph for one camera frame


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
    name: str
    out: Optional[str] = None         # default runs/<name>
    seed: int = 0
    data: DataStage
    train: TrainStage
    prune: Optional[PruneStage] = None
    export: Optional[ExportStage] = None
    bench: Optional[BenchStage] = None
    check: Optional[CheckStage] = None
    report: Optional[ReportStage] = None


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
    raw = read_user_document(path, yaml.safe_load, (yaml.YAMLError,), "a recipe file in YAML")
    if not isinstance(raw, dict):
        raise UserInputError(f"{path}: a recipe is a mapping of stages, got {type(raw).__name__}")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise UserInputError(f"{path}: invalid recipe: {problems}") from None
