"""Checkpoints: a directory holding `model.safetensors` and `model.json`. No pickle anywhere."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from edgeres.artifacts import atomic_path, read_user_document, sha256_file, write_json
from edgeres.errors import UserInputError
# The file layout and ModelMeta live in the torch-free edgeres.meta; re-exported here for existing imports.
from edgeres.meta import FORMAT_VERSION, META_FILE, WEIGHTS_FILE, ModelMeta, checkpoint_dir, is_checkpoint
from edgeres.models import create
from edgeres.models.reshape import reshape_to
from edgeres.models.weights import read_safetensors

__all__ = ["FORMAT_VERSION", "META_FILE", "WEIGHTS_FILE", "ModelMeta", "build_model", "checkpoint_dir",
           "checkpoint_sha256", "is_checkpoint", "load", "load_checkpoint", "load_meta", "pruned_shapes",
           "read_safetensors", "save_checkpoint"]


def pruned_shapes(model: nn.Module, meta: ModelMeta) -> dict[str, list[int]] | None:
    """Shapes of the tensors whose size differs from a freshly built model of the same arch."""
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
    """The validated model.json of a checkpoint; a damaged one is a UserInputError naming the file and field."""
    file = checkpoint_dir(path) / META_FILE
    return ModelMeta.from_dict(read_user_document(file, json.loads, (json.JSONDecodeError,), "a JSON object of "
                                                  "model fields, as edgeres writes it"), source=str(file))


def build_model(meta: ModelMeta) -> nn.Module:
    """Build the architecture a checkpoint describes, resized to its pruned shapes, without weights."""
    model = create(meta.arch, num_classes=meta.num_classes, in_chans=meta.in_chans, **meta.arch_kwargs)
    if meta.pruned_shapes:
        reshape_to(model, meta.pruned_shapes)
    return model


def load_checkpoint(path: str | Path) -> tuple[nn.Module, ModelMeta]:
    """Load a checkpoint in eval mode. Loading runs no code from the files."""
    d = checkpoint_dir(path)
    meta = load_meta(d)
    state = read_safetensors(d / WEIGHTS_FILE)
    with torch.device("meta"):  # shapes only: a model.json describing a giant model allocates nothing
        _check_fits(build_model(meta).state_dict(), state, d, meta)
    model = build_model(meta)
    model.load_state_dict(state)
    model.eval()
    return model, meta


def _check_fits(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], d: Path, meta: ModelMeta) -> None:
    """Refuse weights whose names or shapes differ from the model model.json describes, naming the first few."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise UserInputError(f"{d}: {WEIGHTS_FILE} does not match arch {meta.arch!r} as {META_FILE} describes it: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [f"{k} {list(state[k].shape)} (model.json builds {list(v.shape)})"
             for k, v in expected.items() if v.shape != state[k].shape]
    if wrong:
        raise UserInputError(f"{d}: the weights in {WEIGHTS_FILE} do not fit arch {meta.arch!r} as {META_FILE} "
                             f"describes it: {'; '.join(wrong[:3])}")


def checkpoint_sha256(path: str | Path) -> str:
    """The sha256 of a checkpoint's weights file: its identity in lineage records."""
    return sha256_file(checkpoint_dir(path) / WEIGHTS_FILE)


def load(path: str | Path) -> nn.Module:
    """Load an edgeres checkpoint and return the model ready for inference."""
    return load_checkpoint(path)[0]
