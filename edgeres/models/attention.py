"""Attention modules. Contract: first argument is `channels`; output shape equals input shape."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from edgeres.errors import UserInputError


def make_divisible(value: float, divisor: int = 8) -> int:
    """`value` rounded to the nearest multiple of `divisor`, and at least `divisor`."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (Hu et al.): channel gates from pooled features through a bottleneck."""

    def __init__(self, channels: int, reduction: int = 16, divisor: int = 8):
        super().__init__()
        if not reduction > 0 or not (isinstance(divisor, int) and divisor >= 1):
            raise UserInputError(f"SqueezeExcite needs reduction > 0 and an integer divisor >= 1, "
                                 f"got reduction={reduction!r}, divisor={divisor!r}")
        # timm rounds the bottleneck to a multiple of 8 (64 channels -> 8, not 4); the same rounding
        # gives timm's tensor shapes, so its seresnet weights load.
        hidden = make_divisible(channels / reduction, divisor)
        # 1x1 convs with bias and these names match timm's SEModule, so timm weights load as they are.
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class SimAM(nn.Module):
    """Parameter-free SimAM (Yang et al. 2021): weights each neuron by its inverse energy."""

    def __init__(self, channels: int | None = None, lambda_: float = 1e-4):
        super().__init__()
        self.lambda_ = lambda_
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        var = d.sum(dim=(2, 3), keepdim=True) / max(n, 1)
        e_inv = d / (4 * (var + self.lambda_)) + 0.5
        return x * self.gate(e_inv)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}"


ATTENTION: dict[str, Callable[..., nn.Module]] = {
    "se": SqueezeExcite,
    "simam": SimAM,
}


def create_attn(name: str | None, channels: int, **kwargs) -> nn.Module | None:
    """Build attention `name` for `channels`; None means no attention."""
    if name is None:
        return None
    if name not in ATTENTION:
        raise UserInputError(f"unknown attention {name!r}; valid names: {sorted(ATTENTION)}")
    return ATTENTION[name](channels, **kwargs)
