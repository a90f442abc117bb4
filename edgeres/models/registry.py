"""The model registry: a variant is a name bound to a builder and its arguments."""
from __future__ import annotations

import difflib
import fnmatch
from functools import partial
from typing import Any, Callable

from torch import nn

from edgeres.errors import UserInputError
from edgeres.meta import DEFAULT_TASK

from edgeres.models.fusion import ASFFResNet
from edgeres.models.resnet import ResNet
from edgeres.models.resnet_v2 import ResNetV2
from edgeres.models.unet import UNet
from edgeres.models.yolo import YOLO

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_VARIANT_ARGS: dict[str, dict[str, Any]] = {}


def register_model(name: str, builder: Callable[..., nn.Module], **variant_args: Any) -> None:
    """Register `builder(**variant_args, **user_args)` under `name`; a name registers once."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = partial(builder, **variant_args)
    _VARIANT_ARGS[name] = dict(variant_args)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, sorted, optionally filtered by a shell-style pattern such as '*se*'."""
    names = sorted(_MODELS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def variant_args(name: str) -> dict[str, Any]:
    """The builder arguments that define variant `name`."""
    _check_name(name)
    return dict(_VARIANT_ARGS[name])


def _check_name(name: str) -> None:
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserInputError(f"unknown model {name!r}{hint} (`edgeres models` lists all {len(_MODELS)})")


def model_task(name: str) -> str:
    """The task variant `name` serves (its class's `task`), known before it is built: training opens its data
    the task's way first, since the model's size depends on the data's classes."""
    _check_name(name)
    return getattr(_MODELS[name].func, "task", DEFAULT_TASK)


def scale_reference(name: str) -> tuple[str, int] | None:
    """(name, parameters) of the model variant `name` is shown beside for scale (a detector: YOLOv3-Darknet53)."""
    _check_name(name)
    return getattr(_MODELS[name].func, "scale_reference", None)


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build variant `name` with fresh weights; kwargs override the variant's arguments."""
    _check_name(name)
    try:
        return _MODELS[name](**kwargs)
    except TypeError as e:
        raise UserInputError(f"bad arguments for model {name!r}: {e}") from e


_R18, _R34, _R50 = (2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 6, 3)
_TINY = dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8)
_SE = dict(attn_layer="se")
_SIMAM = dict(attn_layer="simam", attn_site="conv")
# Unrounded SE widths (2, 4, 8, 16) keep a real bottleneck in the 8-channel tiny stages.
_TINY_SE = {"reduction": 4, "divisor": 1}

_RESNETS = {
    "resnet18": dict(block="basic", layers=_R18),
    "resnet34": dict(block="basic", layers=_R34),
    "resnet50": dict(block="bottleneck", layers=_R50),
    "resnet101": dict(block="bottleneck", layers=(3, 4, 23, 3)),
    "resnet152": dict(block="bottleneck", layers=(3, 8, 36, 3)),
}
for _name, _args in _RESNETS.items():
    register_model(_name, ResNet, **_args)
for _name in ("resnet18", "resnet34", "resnet50", "resnet101"):
    register_model(f"se_{_name}", ResNet, **_RESNETS[_name], **_SE)
for _name in ("resnet18", "resnet50"):
    register_model(f"simam_{_name}", ResNet, **_RESNETS[_name], **_SIMAM)
register_model("resnet50v2", ResNetV2, layers=_R50)
register_model("se_resnet50v2", ResNetV2, layers=_R50, **_SE)
register_model("se_resnet50v2_convhead", ResNetV2, layers=_R50, **_SE, head="conv")  # the MRI study's
register_model("asff_resnet50", ASFFResNet, block="bottleneck", layers=_R50)
# Detectors: the same backbone variants under a YOLOv3 neck and heads.
register_model("yolo_resnet18", YOLO, **_RESNETS["resnet18"])
register_model("yolo_se_resnet18", YOLO, **_RESNETS["resnet18"], **_SE)
register_model("yolo_simam_resnet18", YOLO, **_RESNETS["resnet18"], **_SIMAM)
# Image-to-image: the same encoders under a U-Net decoder.
for _name in ("resnet18", "resnet50"):
    register_model(f"unet_{_name}", UNet, **_RESNETS[_name])
    register_model(f"unet_se_{_name}", UNet, **_RESNETS[_name], **_SE)

# Tiny variants, one per family, so tests sweep the whole zoo in seconds.
register_model("test_resnet", ResNet, block="basic", **_TINY)
register_model("test_resnet_bottleneck", ResNet, block="bottleneck", **_TINY)
register_model("test_se_resnet", ResNet, block="basic", **_TINY, attn_layer="se", attn_kwargs=_TINY_SE)
register_model("test_simam_resnet", ResNet, block="basic", **_TINY, **_SIMAM)
register_model("test_resnet_v2", ResNetV2, **_TINY)
register_model("test_se_resnet_v2", ResNetV2, **_TINY, attn_layer="se", attn_kwargs=_TINY_SE)
register_model("test_se_resnet_v2_convhead", ResNetV2, **_TINY, attn_layer="se", attn_kwargs=_TINY_SE,
               head="conv", head_width=16)
register_model("test_asff_resnet", ASFFResNet, block="bottleneck", **_TINY, fuse_channels=32, fuse_compress=4)
register_model("test_yolo", YOLO, block="basic", **_TINY, neck_widths=(16, 16, 32))
register_model("test_unet", UNet, block="basic", **_TINY, decoder_widths=(32, 16, 16, 8, 8))
