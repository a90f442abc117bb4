"""Augmentation that keeps a pair aligned: the same mirror and shift applied to input and target."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class PairAugment:
    """A random horizontal mirror (when allowed) and a shift of up to `shift` of the size, reflected at the edge.

    One draw serves every image passed in, so an input and its target move together. Draws come from torch's
    global RNG, which the training loop seeds per epoch.
    """

    def __init__(self, hflip: bool, shift: float = 0.125) -> None:
        self.hflip, self.shift = hflip, shift

    def __call__(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        height, width = images[0].shape[-2:]
        pad_y, pad_x = int(height * self.shift), int(width * self.shift)
        r = torch.rand(3).tolist()
        top, left = int(r[0] * (2 * pad_y + 1)), int(r[1] * (2 * pad_x + 1))
        flip = self.hflip and r[2] < 0.5
        out = []
        for image in images:
            if pad_x or pad_y:
                padded = F.pad(image[None], (pad_x, pad_x, pad_y, pad_y), mode="reflect")[0]
                image = padded[..., top:top + height, left:left + width]
            out.append(image.flip(-1) if flip else image)
        return tuple(t.contiguous() for t in out)
