"""LPIPS of an image-to-image model's outputs against its targets, by the `lpips` package (Zhang et al.'s
reference implementation), with its backbone read from a torchvision weight file the user supplies.

`lpips.LPIPS` loads its linear layers from files inside the package but its AlexNet/VGG/SqueezeNet trunk from
torchvision's download, so the trunk is built with random weights and the user's file is loaded into it: the
trunk's slices keep torchvision's `features` indices as module names (`net.slice2.3.weight` is
`features.3.weight`). Which network the file holds is read from its keys and shapes.

Images whose shorter side is below MIN_SIDE are upsampled to it first: AlexNet's strided layers leave nothing of
an image under 31 px by its last stage (SqueezeNet's under 17, VGG's under 16); one size serves all three.

Imports torch at module level, like image2image_fid.py: only the scoring code (`edgeres fid`, `edgeres compare`
with weight files) imports this module.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeres.errors import UserInputError

#: LPIPS network name -> torchvision's weight file for its trunk
LPIPS_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth",
               "squeeze": "squeezenet1_1-b8a52dc0.pth"}
#: LPIPS network name -> (a key of its torchvision file, that tensor's shape): tells the three apart
_SIGNATURES = {"alex": ("features.0.weight", (64, 3, 11, 11)), "vgg": ("features.28.weight", (512, 512, 3, 3)),
               "squeeze": ("features.3.squeeze.weight", (16, 64, 1, 1))}
MIN_SIDE = 32
EXPECTED = ", ".join(f"{f} ({n})" for n, f in LPIPS_FILES.items())


@dataclasses.dataclass
class LpipsNetwork:
    """An lpips.LPIPS with the user's trunk weights, and what it is."""

    module: nn.Module
    net: str  # alex, vgg or squeeze
    label: str  # "LPIPS alex (alexnet-owt-7be5be79.pth)"


def lpips_network(weights: str | Path) -> LpipsNetwork:
    """LPIPS on the trunk in torchvision's local weight file `weights`: AlexNet, VGG-16 or SqueezeNet 1.1."""
    state = _read_state(Path(weights))
    net = _which_net(state, weights)
    try:
        import lpips
    except ImportError:
        raise UserInputError("LPIPS needs the lpips package (its linear layers ship with it): pip install lpips") \
            from None
    with warnings.catch_warnings():  # torchvision's notice that `pretrained` is deprecated; nothing is fetched
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    own = model.net.state_dict()
    trunk = {name: "features." + name.split(".", 1)[1] for name in own}  # slice2.3.weight -> features.3.weight
    mismatched = [key for name, key in trunk.items() if key not in state or state[key].shape != own[name].shape]
    if mismatched:
        raise UserInputError(f"{weights} looks like {LPIPS_FILES[net]} but lacks or reshapes "
                             f"{', '.join(mismatched[:3])}; LPIPS expects one of torchvision's files: {EXPECTED}")
    model.net.load_state_dict({name: state[key] for name, key in trunk.items()})
    return LpipsNetwork(model.eval(), net, f"LPIPS {net} ({Path(weights).name})")


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    from edgeres.models.weights import read_state_dict

    try:
        return read_state_dict(path)  # weights_only: no code in the file runs
    except UserInputError as e:
        raise UserInputError(f"LPIPS backbone (read with weights_only=True): {e}; expected one of torchvision's "
                             f"files: {EXPECTED}") from None


def _which_net(state: dict[str, torch.Tensor], path: str | Path) -> str:
    found = [net for net, (key, shape) in _SIGNATURES.items() if key in state and tuple(state[key].shape) == shape]
    if len(found) != 1:
        raise UserInputError(f"{path} is none of the networks LPIPS is built on (AlexNet, VGG-16, SqueezeNet 1.1); "
                             f"expected one of torchvision's files: {EXPECTED}")
    return found[0]


def lpips_scores(images: np.ndarray, targets: np.ndarray, network: LpipsNetwork,
                 batch_size: int = 32) -> dict[str, Any]:
    """Mean LPIPS (lower is nearer) of each image against its target, both (N, C, H, W) in [0, 1], C 1 or 3."""
    n = len(images)
    if n < 1 or len(targets) != n or np.shape(images)[1:] != np.shape(targets)[1:]:
        raise UserInputError(f"LPIPS pairs each image with its target; got {n} images of shape "
                             f"{tuple(np.shape(images)[1:])} and {len(targets)} targets of shape "
                             f"{tuple(np.shape(targets)[1:])}")
    values = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            a, b = (_prepared(x[start:start + batch_size]) for x in (images, targets))
            values.append(network.module(a, b, normalize=True).flatten())
    per_image = torch.cat(values).double().numpy()
    side = min(np.shape(images)[-2:])
    return {"lpips": float(per_image.mean()), "lpips_std": float(per_image.std()), "images": n,
            "lpips_network": network.label, "lpips_upsampled_to": MIN_SIDE if side < MIN_SIDE else None}


def _prepared(batch: np.ndarray) -> torch.Tensor:
    """[0, 1] float, grey repeated to RGB, the shorter side upsampled to at least MIN_SIDE."""
    x = torch.as_tensor(np.asarray(batch, np.float32)).clamp(0, 1)
    if x.shape[1] not in (1, 3):
        raise UserInputError(f"LPIPS scores grey or RGB images; got {x.shape[1]} channels")
    x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x
    side = min(x.shape[-2:])
    if side < MIN_SIDE:
        size = [round(s * MIN_SIDE / side) for s in x.shape[-2:]]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    return x
