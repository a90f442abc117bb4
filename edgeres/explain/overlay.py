"""A saliency map blended on the image it explains, as the model saw it.

The map lives in the model's input pixels, so it is drawn on the input itself (resized or letterboxed by the
task's `prepare`, de-normalised), not stretched back over the original photo: what lines up is what the model
looked at. Small inputs are enlarged for viewing.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

#: Overlays are enlarged by a whole factor until their longer side reaches this many pixels.
VIEW_SIZE = 256
HEAT_ALPHA = 0.5
COLORMAP = "jet"


def input_image(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Image.Image:
    """The prepared input (C, H, W), de-normalised to an RGB image."""
    pixels = x * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    pixels = np.clip(pixels * 255.0, 0, 255).round().astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).convert("RGB")


def heat(saliency: np.ndarray) -> np.ndarray:
    """The map's positive part scaled to [0, 1] (all zero when nothing supports the target)."""
    positive = np.clip(np.nan_to_num(saliency.astype(np.float32)), 0, None)
    top = float(positive.max())
    return positive / top if top > 0 else positive


def overlay(image: Image.Image, saliency: np.ndarray) -> Image.Image:
    """`image` with the map's positive part in a colour map on top, enlarged to about VIEW_SIZE."""
    from matplotlib import colormaps  # the colour table only: no figure, no backend

    colours = (colormaps[COLORMAP](heat(saliency))[..., :3] * 255).round().astype(np.uint8)
    blended = Image.blend(image.convert("RGB"), Image.fromarray(colours).resize(image.size, Image.BILINEAR),
                          HEAT_ALPHA)
    factor = max(1, math.ceil(VIEW_SIZE / max(image.size)))
    return blended.resize((image.width * factor, image.height * factor), Image.BILINEAR)
