"""Load local weight files (torchvision, timm or edgeres format) into a zoo model, for transfer learning."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from edgeres.errors import UserInputError
from edgeres.meta import WEIGHTS_FILE, is_checkpoint

log = logging.getLogger("edgeres")

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclasses.dataclass
class LoadReport:
    """What happened to the weights: what loaded, what was re-initialised or adapted, and why."""

    source: str
    loaded: int = 0
    reinitialized: list[str] = dataclasses.field(default_factory=list)
    adapted: list[str] = dataclasses.field(default_factory=list)
    #: The submodule the weights went into ("" for the whole model), e.g. a detector's backbone.
    into: str = ""
    #: The file's classifier tensors, which a backbone has no place for.
    dropped: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source}" + (f" into {self.into}" if self.into else "")]
        if self.dropped:
            parts.append(f"dropped {', '.join(self.dropped)} (a backbone has no classifier)")
        if self.reinitialized:
            parts.append(f"re-initialised {', '.join(self.reinitialized)} (class count differs)")
        if self.adapted:
            parts.append(f"adapted {', '.join(self.adapted)} to the input channel count")
        return "; ".join(parts)


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file; an empty, truncated or foreign file is a UserInputError naming it."""
    try:
        return load_file(str(path))
    except SafetensorError as e:  # the reason names the broken part of the format, never the file's bytes
        raise UserInputError(f"{path}: truncated or corrupt safetensors file ({e}); copy it again or re-save "
                             "the checkpoint") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a checkpoint directory, .safetensors, or a torch file (weights_only, no code runs)."""
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"weights file {path} does not exist")
    if is_checkpoint(p):
        p = (p if p.is_dir() else p.parent) / WEIGHTS_FILE
    if p.suffix == ".safetensors":
        return read_safetensors(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for foreign or unsafe files
        # torch's own text suggests weights_only=False, which would run the file's code: only its finding is kept
        text = str(e).strip()
        if "WeightsUnpickler error:" in text:
            reason = text.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0].splitlines()[0][:160]
        else:
            reason = text.splitlines()[0][:160] if text else "unreadable"
        raise UserInputError(f"{path}: not a loadable weights file ({type(e).__name__}: {reason}); expected a state "
                             "dict in .pth/.pt/.bin, a .safetensors file or an edgeres checkpoint") from e
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserInputError(f"{path}: expected a state dict (names -> tensors), got {type(obj).__name__}")
    return {_strip_prefix(k): v for k, v in obj.items()}


def _strip_prefix(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _adapt_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Fit a stem conv trained on RGB to `in_chans` inputs, keeping the response to a grey image."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = -(-in_chans // weight.shape[1])
    return weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def load_weights(model: nn.Module, path: str | Path) -> LoadReport:
    """Load `path` into `model`: re-initialise a classifier of another class count, adapt the stem's channels.

    A model that declares a `backbone_name` (a detector) takes a classification network's weights into that
    submodule, without the classifier; a file of the whole model (keys under the backbone's name) loads whole.
    """
    state = read_state_dict(path)
    backbone = getattr(model, "backbone_name", None)
    report = LoadReport(source=str(path))
    if backbone and not any(k.startswith(backbone + ".") for k in state):
        model, report.into = model.get_submodule(backbone), backbone
    own = model.state_dict()
    classifier = getattr(model, "classifier_name", "fc")
    for key in list(state):
        if key not in own and key.startswith(classifier + ".") and not hasattr(model, classifier):
            del state[key]
            report.dropped.append(key)
            continue
        if key not in own or state[key].shape == own[key].shape:
            continue
        if key.startswith(classifier + "."):
            del state[key]
            report.reinitialized.append(key)
        elif state[key].ndim == 4 and state[key].shape[0] == own[key].shape[0] and key == _stem_key(model):
            state[key] = _adapt_stem(state[key], own[key].shape[1])
            report.adapted.append(key)
        else:
            raise UserInputError(f"{path}: tensor {key} has shape {tuple(state[key].shape)}, the model expects "
                                 f"{tuple(own[key].shape)}; are these weights for another architecture?")
    added = tuple(f"{name}." for name in getattr(model, "added_modules", ()))
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")
               and not any(k == r for r in report.reinitialized) and not (added and k.startswith(added))]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise UserInputError(f"{path}: weights do not fit this model: {len(missing)} missing (e.g. {missing[:3]}), "
                             f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    model.load_state_dict(state, strict=False)
    report.loaded = len(state)
    log.info(report.summary())
    return report


def _stem_key(model: nn.Module) -> str:
    first_conv = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    return f"{first_conv}.weight"
