"""The edgeres model zoo: ResNet-family classifiers and YOLO detectors built from a registry of variants."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from edgeres.errors import UserInputError
from edgeres.models.attention import ATTENTION, SimAM, SqueezeExcite, create_attn
from edgeres.models.base import EdgeModel
from edgeres.models.registry import build, list_models, model_task, register_model, variant_args
from edgeres.models.weights import LoadReport, load_weights
from edgeres.models.yolo import YOLO


def create(name: str, num_classes: int = 1000, in_chans: int = 3, weights: str | Path | None = None,
           freeze: str | None = None, **kwargs: Any) -> nn.Module:
    """Build model `name`; optionally load local `weights` and freeze stages up to `freeze`.

    weights: a torchvision/timm state dict file, a .safetensors file or an edgeres checkpoint;
        a classifier for another class count is re-initialised (see `load_weights`); a detector takes a
        classifier's weights into its backbone.
    freeze: a stage name such as "layer3" ("backbone.layer3" for a detector: `model.stage_names` lists them);
        it and every stage before it stop training.
    """
    model = build(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    if freeze is not None:
        if not isinstance(model, EdgeModel):
            raise UserInputError(f"model {name!r} does not declare stages to freeze")
        model.freeze(freeze)
    return model


__all__ = ["ATTENTION", "EdgeModel", "LoadReport", "SimAM", "SqueezeExcite", "YOLO", "create", "create_attn",
           "list_models", "load_weights", "model_task", "register_model", "variant_args"]
