"""A checkpoint's layout and `ModelMeta`, what its `model.json` (and an export's embedded copy) holds.

This module imports no torch: the readers of exported files and a deploy bundle use it where torch is
not installed. Every field is checked on construction, so a hand-edited or damaged `model.json` is
refused with an error naming the file and the field before anything is built or allocated from it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from edgeres.errors import UserInputError

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
FORMAT_VERSION = 1
# The same bounds as DataConfig: below 8 pixels the stem leaves nothing to classify; above 4096 a
# single batch would need tens of GiB (a typo of 100000 once asked for 74.5 GiB).
MIN_IMG_SIZE, MAX_IMG_SIZE = 8, 4096
MAX_NUM_CLASSES = 100_000  # ImageNet-21k has 21,841; more is a typo that would allocate a giant classifier
IN_CHANS = (1, 3)  # grey or RGB: what the data loaders produce
# What a model's outputs mean; each has a module in edgeres.tasks. A model.json written before tasks
# existed holds a classifier: that is the default.
TASKS = ("classification", "detection", "image2image")
DEFAULT_TASK = "classification"
# Defaults: ImageNet statistics, and their average for one grey channel (as timm does).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_DEFAULT_STATS = {3: (IMAGENET_MEAN, IMAGENET_STD), 1: ((0.449,), (0.226,))}

# Strict integers: a bool, 10.5 or "10" in model.json is a damaged file, not a count.
PositiveDim = Annotated[int, Field(strict=True, ge=1)]


@pydantic_dataclass(config=ConfigDict(extra="forbid", allow_inf_nan=False))
class ModelMeta:
    """Everything needed to rebuild, feed and describe a model, stored beside its weights."""

    arch: Annotated[str, Field(min_length=1, max_length=200)]
    num_classes: Annotated[int, Field(strict=True, ge=1, le=MAX_NUM_CLASSES)]
    in_chans: Annotated[int, Field(strict=True)] = 3
    arch_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    img_size: Annotated[int, Field(strict=True, ge=MIN_IMG_SIZE, le=MAX_IMG_SIZE)] = 224
    # None: the default for `in_chans` (see _DEFAULT_STATS); one value applies to every channel.
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    class_names: Optional[list[str]] = None
    task: Literal[TASKS] = DEFAULT_TASK  # type: ignore[valid-type]
    # Shapes of every parameter whose shape differs from the unpruned architecture.
    pruned_shapes: Optional[dict[str, list[PositiveDim]]] = None
    parent_sha256: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = None
    data: Optional[dict[str, Any]] = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    history: dict[str, Any] = dataclasses.field(default_factory=dict)
    compression: dict[str, Any] = dataclasses.field(default_factory=dict)
    created: str = ""
    format_version: Annotated[int, Field(strict=True, ge=1, le=FORMAT_VERSION)] = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.in_chans not in IN_CHANS:
            raise ValueError(f"field 'in_chans' must be one of {list(IN_CHANS)}, got {self.in_chans}")
        default_mean, default_std = _DEFAULT_STATS[self.in_chans]
        self.mean = default_mean if self.mean is None else self.mean
        self.std = default_std if self.std is None else self.std
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.in_chans):
                takes = "1" if self.in_chans == 1 else f"{self.in_chans} (one per channel) or 1"
                raise ValueError(f"field {name!r} has {len(values)} values; a {self.in_chans}-channel model "
                                 f"takes {takes}")
        if not all(s > 0 for s in self.std):
            raise ValueError("field 'std' must hold numbers > 0 (inputs are divided by it)")
        if self.class_names is not None:
            if len(self.class_names) != self.num_classes:
                raise ValueError(f"field 'class_names' names {len(self.class_names)} classes, but 'num_classes' "
                                 f"is {self.num_classes}; they must agree")
            if len(set(self.class_names)) != len(self.class_names):
                raise ValueError("field 'class_names' repeats a name; each class needs its own")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_chans, self.img_size, self.img_size)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = META_FILE) -> "ModelMeta":
        """Validate and build; `source` names the file (or the export holding it) in every error."""
        if not isinstance(d, dict):
            raise UserInputError(f"{source}: expected a JSON object of model fields, got {type(d).__name__}")
        try:
            return cls(**d)
        except ValidationError as e:
            raise UserInputError(f"{source} is invalid: {describe_errors(e)}") from None
        except TypeError as e:  # keys that are not strings cannot be keyword arguments
            raise UserInputError(f"{source} is invalid: {e}") from None


def describe_errors(error: ValidationError, limit: int = 5) -> str:
    """Each problem as `field 'x': what was expected`, without echoing the offending values."""
    parts = []
    for err in error.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "value_error":  # our own cross-field checks name their fields already
            parts.append(str(err["ctx"]["error"]))
        elif err["type"] == "unexpected_keyword_argument":
            known = ", ".join(f.name for f in dataclasses.fields(ModelMeta))
            parts.append(f"unknown field {loc[:40]!r}; known fields: {known}")
        elif err["type"] == "missing_argument":
            parts.append(f"field {loc!r} is required")
        else:
            parts.append(f"field {loc!r}: {err['msg']}")
    more = len(error.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def checkpoint_dir(path: str | Path) -> Path:
    """Resolve a checkpoint path (the directory or either of its files) to its directory."""
    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS_FILE, META_FILE):
        p = p.parent
    if p.is_file():
        raise UserInputError(f"{path} is a file, not a checkpoint (expected a folder with {WEIGHTS_FILE} and "
                             f"{META_FILE}, as edgeres train writes)")
    if not p.is_dir():
        raise UserInputError(f"{path}: no such checkpoint directory (expected a folder with {WEIGHTS_FILE} and "
                             f"{META_FILE})")
    for name in (WEIGHTS_FILE, META_FILE):
        if not (p / name).is_file():
            raise UserInputError(f"{p}: not an edgeres checkpoint, {name} is missing")
    return p


def is_checkpoint(path: str | Path) -> bool:
    """True for a checkpoint directory or either of its two files (not for any other file beside them)."""
    p = Path(path)
    if p.is_file():
        if p.name not in (WEIGHTS_FILE, META_FILE):
            return False
        p = p.parent
    return (p / WEIGHTS_FILE).is_file() and (p / META_FILE).is_file()
