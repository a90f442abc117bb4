"""Self-supervised pairs: a clean image and what a degradation (noise, a hole, lost resolution) makes of it."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from edgeres.errors import UserInputError

#: kind -> what the model learns to undo. sr2/sr4 shrink by 2 or 4 and enlarge back: the model keeps the size.
PAIR_KINDS = {"denoise": "Gaussian noise of std `sigma`", "inpaint": "a random grey rectangle",
              "sr2": "2x lower resolution", "sr4": "4x lower resolution"}
HOLE_FILL = 0.5  # grey: on digits' black background a black hole would be invisible, so unlearnable
HOLE_SIDES = (0.25, 0.5)  # a hole's height and width, as fractions of the image's


@dataclasses.dataclass(frozen=True)
class Degradation:
    """How a clean image in [0, 1] becomes the model's input; `generator` None draws from torch's global RNG."""

    kind: str = "denoise"
    sigma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in PAIR_KINDS:
            raise UserInputError(f"pairs must be one of {list(PAIR_KINDS)}, got {self.kind!r}")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not 0 < self.sigma <= 1:
            raise UserInputError(f"sigma (the noise's std, image range 0..1) must be in (0, 1], got {self.sigma!r}")

    def __call__(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.kind == "denoise":
            noise = torch.randn(clean.shape, generator=generator) * self.sigma
            return (clean + noise).clamp(0.0, 1.0)  # a noisy image saved to a file stays in range
        if self.kind == "inpaint":
            return _hole(clean, generator)
        return _resample(clean, int(self.kind[2:]))


def _hole(clean: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    height, width = clean.shape[-2:]
    r = torch.rand(4, generator=generator).tolist()
    low, high = HOLE_SIDES
    h, w = max(1, round(height * (low + r[0] * (high - low)))), max(1, round(width * (low + r[1] * (high - low))))
    top, left = int(r[2] * (height - h + 1)), int(r[3] * (width - w + 1))
    out = clean.clone()
    out[..., top:top + h, left:left + w] = HOLE_FILL
    return out


def _resample(clean: torch.Tensor, factor: int) -> torch.Tensor:
    """Shrunk by `factor` (antialiased) and enlarged back to the same size (bicubic)."""
    height, width = clean.shape[-2:]
    small = F.interpolate(clean[None], size=(max(1, height // factor), max(1, width // factor)), mode="bilinear",
                          antialias=True, align_corners=False)
    return F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)[0].clamp(0.0, 1.0)


def pair_generator(seed: int, split: str, index: int) -> torch.Generator:
    """The RNG of one image's degradation in a held-out split: the same noise or hole on every read."""
    split_id = ("train", "val", "test").index(split)
    return torch.Generator().manual_seed((seed * 1_000_003 + split_id) * 100_000_007 + index)
