"""Checkpoints: a directory holding `model.safetensors` and `model.json`. No pickle anywhere."""
from __future__ import annotations

import dataclasses
import datetime as _dt
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from edgeres.artifacts import atomic_path, read_json, sha256_file, write_json
from edgeres.errors import UserInputError

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
FORMAT_VERSION = 1


@dataclasses.dataclass
class ModelMeta:
    """Everything needed to rebuild, feed and describe a model, stored beside its weights."""

    arch: str
    num_classes: int
    in_chans: int = 3
    arch_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    img_size: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    class_names: list[str] | None = None
    task: str = "classification"
    # Shapes of every parameter whose shape differs from the unpruned architecture.
    pruned_shapes: dict[str, list[int]] | None = None
    parent_sha256: str | None = None
    data: dict[str, Any] | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    history: dict[str, Any] = dataclasses.field(default_factory=dict)
    compression: dict[str, Any] = dataclasses.field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_chans, self.img_size, self.img_size)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelMeta":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserInputError(f"model.json has unknown fields {unknown}; known: {sorted(known)}")
        for required in ("arch", "num_classes"):
            if required not in d:
                raise UserInputError(f"model.json lacks the required field {required!r}")
        d = dict(d)
        d["mean"], d["std"] = tuple(d.get("mean", cls.mean)), tuple(d.get("std", cls.std))
        return cls(**d)


def checkpoint_dir(path: str | Path) -> Path:
    """Resolve a checkpoint path (the directory or either of its files) to its directory."""
    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS_FILE, META_FILE):
        p = p.parent
    if not p.is_dir():
        raise UserInputError(f"{path}: no such checkpoint directory (expected a folder with {WEIGHTS_FILE} and {META_FILE})")
    for name in (WEIGHTS_FILE, META_FILE):
        if not (p / name).is_file():
            raise UserInputError(f"{p}: not an edgeres checkpoint, {name} is missing")
    return p


def is_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    if p.is_file():
        p = p.parent
    return (p / WEIGHTS_FILE).is_file() and (p / META_FILE).is_file()


def pruned_shapes(model: nn.Module, meta: ModelMeta) -> dict[str, list[int]] | None:
    """Shapes of the tensors whose size differs from a freshly built model of the same arch."""
    from edgeres.models import create

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost on every save
        reference = create(meta.arch, num_classes=meta.num_classes, in_chans=meta.in_chans, **meta.arch_kwargs)
    ref = reference.state_dict()
    diff = {k: list(v.shape) for k, v in model.state_dict().items() if k in ref and ref[k].shape != v.shape}
    return diff or None


def save_checkpoint(model: nn.Module, meta: ModelMeta, path: str | Path) -> Path:
    """Save weights then metadata, each atomically; the weights' sha256 is not stored in itself."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    meta.pruned_shapes = pruned_shapes(model, meta)
    meta.created = meta.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "edgeres_arch": meta.arch})
    write_json(out / META_FILE, meta.to_dict())
    return out


def load_meta(path: str | Path) -> ModelMeta:
    d = checkpoint_dir(path)
    return ModelMeta.from_dict(read_json(d / META_FILE))


def build_model(meta: ModelMeta) -> nn.Module:
    """Build the architecture a checkpoint describes, resized to its pruned shapes, without weights."""
    from edgeres.models import create
    from edgeres.models.reshape import reshape_to

    model = create(meta.arch, num_classes=meta.num_classes, in_chans=meta.in_chans, **meta.arch_kwargs)
    if meta.pruned_shapes:
        reshape_to(model, meta.pruned_shapes)
    return model


def load_checkpoint(path: str | Path) -> tuple[nn.Module, ModelMeta]:
    """Load a checkpoint in eval mode. Loading runs no code from the files."""
    d = checkpoint_dir(path)
    meta = load_meta(d)
    model = build_model(meta)
    state = load_file(str(d / WEIGHTS_FILE))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatches: model.json and the weights disagree
        raise UserInputError(f"{d}: weights do not fit arch {meta.arch!r} as model.json describes it: {e}") from e
    if missing or unexpected:
        raise UserInputError(
            f"{d}: weights do not match arch {meta.arch!r}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.eval()
    return model, meta


def checkpoint_sha256(path: str | Path) -> str:
    """The sha256 of a checkpoint's weights file: its identity in lineage records."""
    return sha256_file(checkpoint_dir(path) / WEIGHTS_FILE)


def load(path: str | Path) -> nn.Module:
    """Load an edgeres checkpoint and return the model ready for inference."""
    return load_checkpoint(path)[0]
