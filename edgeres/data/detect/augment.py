"""Box-aware train augmentation on letterboxed images: scale/translate, mirror, colour jitter.

Parameters are drawn from torch's global RNG, so the training loop's per-epoch `torch.manual_seed`
makes every epoch's draws reproducible (and resume exact), as for classification.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

from edgeres.letterbox import PAD_VALUE


def affine_boxes(boxes: np.ndarray, scale: float, shift: tuple[float, float], size: tuple[int, int],
                 flip: bool) -> np.ndarray:
    """Boxes (n, 5) [class, x1, y1, x2, y2] in pixels through the same scale-about-centre, shift and mirror."""
    out = boxes.astype(np.float32, copy=True)
    width, height = size
    centre = np.asarray([width / 2, height / 2, width / 2, height / 2], np.float32)
    offset = np.asarray([shift[0], shift[1], shift[0], shift[1]], np.float32)
    out[:, 1:] = (out[:, 1:] - centre) * np.float32(scale) + centre + offset
    if flip:
        out[:, [1, 3]] = width - out[:, [3, 1]]
    return out


def clip_boxes(boxes: np.ndarray, size: tuple[int, int], min_side: float, min_kept: float) -> np.ndarray:
    """Boxes clipped to the image; those under `min_side` pixels or keeping under `min_kept` of their area dropped."""
    area = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])
    out = boxes.copy()
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, size[0])
    out[:, [2, 4]] = out[:, [2, 4]].clip(0, size[1])
    w, h = out[:, 3] - out[:, 1], out[:, 4] - out[:, 2]
    keep = (w >= min_side) & (h >= min_side) & (w * h >= min_kept * np.maximum(area, 1e-9))
    return out[keep]


def _jitter(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    x = image.astype(np.float32) * brightness
    grey = x @ np.asarray([0.299, 0.587, 0.114], np.float32)
    x = grey[..., None] + (x - grey[..., None]) * saturation
    x = (x - grey.mean()) * contrast + grey.mean()
    return (x.clip(0, 255) + 0.5).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class DetectAugment:
    """Random scale about the centre, shift, horizontal mirror and brightness/contrast/saturation jitter."""

    hflip: bool = True
    scale: tuple[float, float] = (0.6, 1.4)
    translate: float = 0.1      # fraction of the image side
    jitter: float = 0.3         # each colour factor drawn from 1 +/- jitter
    min_side: float = 2.0       # pixels: narrower boxes are dropped
    min_kept: float = 0.2       # boxes cut to less than this share of their area are dropped

    def apply(self, image: np.ndarray, boxes: np.ndarray, scale: float, shift: tuple[float, float], flip: bool,
              colour: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
        """The augmentation with given parameters: HxWx3 uint8 and (n, 5) pixel boxes in, the same out."""
        height, width = image.shape[:2]
        if scale != 1.0 or shift != (0.0, 0.0):
            # PIL maps each output pixel back to the input: x_in = (x_out - centre - shift) / scale + centre.
            cx, cy = width / 2, height / 2
            inverse = (1 / scale, 0.0, cx - (cx + shift[0]) / scale, 0.0, 1 / scale, cy - (cy + shift[1]) / scale)
            image = np.asarray(Image.fromarray(image).transform(
                (width, height), Image.AFFINE, inverse, resample=Image.BILINEAR, fillcolor=(PAD_VALUE,) * 3))
        if flip:
            image = np.ascontiguousarray(image[:, ::-1])
        if colour != (1.0, 1.0, 1.0):
            image = _jitter(image, *colour)
        moved = affine_boxes(boxes, scale, shift, (width, height), flip)
        return image, clip_boxes(moved, (width, height), self.min_side, self.min_kept)

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A random augmentation of one letterboxed image and its pixel boxes."""
        r = torch.rand(7).tolist()
        height, width = image.shape[:2]
        scale = self.scale[0] + r[0] * (self.scale[1] - self.scale[0])
        shift = ((2 * r[1] - 1) * self.translate * width, (2 * r[2] - 1) * self.translate * height)
        colour = tuple(1.0 + (2 * v - 1) * self.jitter for v in r[4:7])
        return self.apply(image, boxes, scale, shift, self.hflip and r[3] < 0.5, colour)  # type: ignore[arg-type]
