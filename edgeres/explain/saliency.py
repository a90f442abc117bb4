"""Saliency maps for one prepared image: Grad-CAM on a checkpoint, occlusion on anything a Runner runs.

Both come from captum, the maintained implementations; this module only says which layer, which number
(`targets.py`) and which windows. Every map is (H, W) float32 at the model's input resolution.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from edgeres.errors import UserInputError
from edgeres.explain.targets import Target, target_score
from edgeres.models.base import named_outputs
from edgeres.runtime.base import Outputs

#: Grad-CAM's resolution is its layer's: a stage whose map is smaller than this a side cannot place anything, so
#: on small inputs the deepest stage at least this large is used (at 224 px that is a ResNet's last stage, 7x7).
MIN_CAM_SIDE = 4


def _captum():
    try:
        import captum.attr
    except ImportError as e:
        raise UserInputError("explanations need captum, which is not installed; pip install 'edgeres[explain]'") from e
    return captum.attr


def stage_sizes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """The spatial size of each of the model's `feature_stages` outputs for input `x`, shallow to deep."""
    stages = tuple(getattr(model, "feature_stages", ()))
    if not stages:
        raise UserInputError(f"{type(model).__name__} declares no feature stages, so there is no convolutional "
                             "layer to run Grad-CAM on; use --method occlusion")
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:  # None: the output stays
            sizes.setdefault(name, tuple(output.shape[-2:]))
        return hook

    hooks = []
    for name in stages:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise UserInputError(f"{type(model).__name__} names feature stage {name!r} but has no such layer; "
                                 "use --method occlusion") from None
        hooks.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            model.inference_module()(x)
    finally:
        for h in hooks:
            h.remove()
    return {name: sizes[name] for name in stages if name in sizes}


def gradcam_layer(model: nn.Module, x: torch.Tensor, layer: str | None = None) -> str:
    """The layer Grad-CAM attributes to: `layer` if given, else the deepest feature stage at least
    MIN_CAM_SIDE a side (the shallowest stage when none is)."""
    sizes = stage_sizes(model, x)
    if layer is not None:
        if layer not in sizes:
            raise UserInputError(f"--layer {layer!r} is not one of this model's feature stages {list(sizes)}")
        return layer
    if not sizes:
        raise UserInputError(f"no feature stage of {type(model).__name__} ran on the input; use --method occlusion")
    large = [name for name, (h, w) in sizes.items() if min(h, w) >= MIN_CAM_SIDE]
    return large[-1] if large else next(iter(sizes))


def gradcam_map(model: nn.Module, x: np.ndarray, target: Target, layer: str) -> np.ndarray:
    """Grad-CAM (ReLU of the gradient-weighted channel sum at `layer`), upsampled bilinearly to the input size.

    model: an edgeres model in eval mode; its inference module gives the outputs the target is read from.
    x: one prepared image, (C, H, W) float32.
    """
    attr = _captum()
    module = model.inference_module()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return target_score(named_outputs(module, batch), target)

    cam = attr.LayerGradCam(forward, model.get_submodule(layer))
    with torch.enable_grad():
        coarse = cam.attribute(torch.from_numpy(x[None]), relu_attributions=True)
    fine = attr.LayerAttribution.interpolate(coarse, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return fine[0, 0].detach().numpy().astype(np.float32)


def occlusion_window(size: int, window: int | None = None, stride: int | None = None) -> tuple[int, int]:
    """(window, stride) for a `size`-pixel input. Default window: an eighth of the side, even; stride half of it,
    lowered until the windows end on the last pixel, so no border row goes unoccluded."""
    if window is None:
        window = max(2, 2 * round(size / 16))
    if not 1 <= window <= size:
        raise UserInputError(f"--window must be from 1 to the input size {size} pixels, got {window}")
    if stride is None:
        stride = max(1, window // 2)
        while (size - window) % stride:
            stride -= 1
    if not 1 <= stride <= size:
        raise UserInputError(f"--stride must be from 1 to the input size {size} pixels, got {stride}")
    return window, stride


def occlusion_map(run: Callable[[np.ndarray], Outputs], x: np.ndarray, target: Target, window: int, stride: int,
                  batch_size: int = 64) -> np.ndarray:
    """How much the target's score drops when each window of the image is set to the data's mean (0 after
    normalisation), averaged over the windows covering each pixel. Positive: the region supports the target.

    run: numpy batch -> named outputs (a Runner, or `functools.partial(run_any_batch, runner)`).
    x: one prepared image, (C, H, W) float32.
    """
    attr = _captum()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        outputs = run(np.ascontiguousarray(batch.detach().numpy(), dtype=np.float32))
        return target_score({k: torch.from_numpy(np.asarray(v)) for k, v in outputs.items()}, target)

    channels = x.shape[0]
    with torch.no_grad():
        attribution = attr.Occlusion(forward).attribute(
            torch.from_numpy(x[None]), sliding_window_shapes=(channels, window, window),
            strides=(channels, stride, stride), baselines=0.0, perturbations_per_eval=batch_size)
    # The window spans every channel, so each channel holds the same drop: their mean is it.
    return attribution[0].mean(0).numpy().astype(np.float32)
