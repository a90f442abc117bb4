"""An image-to-image generator's loss beyond pixels: a perceptual term on VGG-16 features from a local weight file
(Johnson et al. 2016) and a conditional patch discriminator trained alongside (pix2pix, Isola et al. 2017).

GeneratorLoss is the criterion the training loop calls as criterion(outputs, targets, images). With a
discriminator, each training call first takes one discriminator step on the batch (real pairs against the
generator's detached outputs), then scores the generator against the updated discriminator. The discriminator's
parameters keep requires_grad off outside that step, so the generator's optimizer never holds them and the
generator's backward pass leaves them alone.

Imports torch at module level, like classify_losses.py: only a training run that asks for these terms imports it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgeres.errors import UserInputError
from edgeres.tasks.base import LossConfig

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's ImageNet VGG-16 weights
# torchvision vgg16().features up to relu3_3 (index 15); the feature maps compared are relu1_2, relu2_2, relu3_3.
_VGG_LAYERS = 16
_VGG_TAPS = (3, 8, 15)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_DISCRIMINATOR_BETAS = (0.5, 0.999)


class VGGFeatures(nn.Module):
    """Frozen VGG-16 feature maps (relu1_2, relu2_2, relu3_3) of [0, 1] images of one or three channels."""

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        self.features = _vgg_layers().to_empty(device="cpu")  # every tensor comes from the file
        self.features.load_state_dict(_vgg_state(weights))
        self.requires_grad_(False)
        self.eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(False)  # a fixed feature network

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        maps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _VGG_TAPS:
                maps.append(x)
        return maps


def _vgg_state(weights: str | Path) -> dict[str, torch.Tensor]:
    """The `features` layers of a torchvision VGG-16 file; anything else exits 2 naming the file expected."""
    from edgeres.models.weights import read_state_dict

    path, expected = Path(weights), f"torchvision's VGG-16 ImageNet weights ({VGG16_FILE})"
    try:
        state = read_state_dict(path)  # weights_only: no code in the file runs
    except UserInputError as e:
        raise UserInputError(f"perceptual weights: {e}; expected {expected}") from None
    reference = vgg16_shapes()
    wrong = [k for k, shape in reference.items() if k not in state or tuple(state[k].shape) != shape]
    if wrong:
        raise UserInputError(f"perceptual weights: {path} is not VGG-16 ({len(wrong)} of its first layers' "
                             f"tensors missing or shaped otherwise, e.g. {wrong[0]}); expected {expected}")
    return {k.removeprefix("features."): state[k] for k in reference}


def vgg16_shapes() -> dict[str, tuple[int, ...]]:
    """The shapes of the VGG-16 tensors the perceptual loss reads, by their names in torchvision's file."""
    return {f"features.{k}": tuple(v.shape) for k, v in _vgg_layers().state_dict().items()}


def _vgg_layers() -> nn.Sequential:
    """VGG-16's layers up to relu3_3 on the meta device: shapes, no memory (its classifier is never built)."""
    from torchvision.models import vgg16

    with torch.device("meta"):
        return vgg16(weights=None).features[:_VGG_LAYERS]


class PatchDiscriminator(nn.Module):
    """pix2pix's conditional PatchGAN: (input, output) pairs to a grid of real/fake logits, one per 70x70 patch
    at three stride-2 layers (C64-C128-C256-C512, 4x4 kernels, batch norm after the first, leaky ReLU 0.2)."""

    def __init__(self, in_chans: int, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(2 * in_chans, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        chans = width
        for i in range(1, layers + 1):
            out = width * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            blocks += [nn.Conv2d(chans, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            chans = out
        blocks.append(nn.Conv2d(chans, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)
        for m in self.modules():  # pix2pix's initialisation: N(0, 0.02)
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([condition, image], 1))


class GeneratorLoss(nn.Module):
    """pixel + perceptual x VGG feature L1 + adversarial x the discriminator's BCE on the generator's outputs."""

    def __init__(self, pixel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], config: LossConfig,
                 in_chans: int, img_size: int) -> None:
        super().__init__()
        self.pixel, self.config = pixel, config
        self.vgg = VGGFeatures(config.perceptual_weights) if config.perceptual else None
        self.discriminator = None
        if config.adversarial:
            # Three stride-2 layers (70x70 patches) from 32 px; fewer on smaller images, so a patch grid remains.
            layers = 3 if img_size >= 32 else 2 if img_size >= 16 else 1
            self.discriminator = PatchDiscriminator(in_chans, layers=layers).requires_grad_(False)
            self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=config.discriminator_lr,
                                                betas=_DISCRIMINATOR_BETAS)
        self.last: dict[str, float] = {}  # the terms of the latest call, for logs and tests

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        target, condition = targets[:, 0].float(), targets[:, 1].float()  # labels (N, 2, C, H, W): target, input
        outputs = outputs.float()
        loss = self.pixel(outputs, target)
        self.last = {"pixel": float(loss.detach())}
        if self.vgg is not None:
            perceptual = sum(F.l1_loss(a, b) for a, b in zip(self.vgg(outputs), self.vgg(target)))
            loss = loss + self.config.perceptual * perceptual
            self.last["perceptual"] = float(perceptual.detach())
        if self.discriminator is not None:
            if torch.is_grad_enabled() and self.training:
                self.last["discriminator"] = self._discriminator_step(condition, outputs.detach(), target)
            fake = self.discriminator(condition, outputs)
            adversarial = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
            loss = loss + self.config.adversarial * adversarial
            self.last["adversarial"] = float(adversarial.detach())
        return loss

    def _discriminator_step(self, condition: torch.Tensor, fake: torch.Tensor, real: torch.Tensor) -> float:
        """One Adam step of the discriminator: real pairs towards 1, generated ones towards 0 (float32, no autocast)."""
        d = self.discriminator
        d.requires_grad_(True)
        try:
            with torch.autocast(condition.device.type, enabled=False):
                real_logits, fake_logits = d(condition, real), d(condition, fake)
                loss = 0.5 * (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                              + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
            self.d_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _average_gradients(d)
            self.d_optimizer.step()
            self.d_optimizer.zero_grad(set_to_none=True)  # the generator's backward pass finds none to add to
        finally:
            d.requires_grad_(False)
        return float(loss.detach())

    # What a resumed run needs: the discriminator and its optimizer. The VGG network comes back from its file.
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        if self.discriminator is None:
            return {}
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.d_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True,  # type: ignore[override]
                        assign: bool = False) -> Any:
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["optimizer"])


def _average_gradients(module: nn.Module) -> None:
    """Under torchrun, every process's discriminator takes the mean gradient, so they stay one model."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()
