"""A U-Net on a zoo ResNet encoder for image-to-image tasks: the decoder upsamples, concatenates the encoder's
map of the same stride (and finally the input itself) and convolves; the output is the input plus a residual,
so a fresh model starts as the identity and learns only what to change."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeres.errors import UserInputError
from edgeres.models.base import EdgeModel
from edgeres.models.resnet import ResNet

IMAGE = "image"  # the one output's name, in torch and in exported graphs


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """Nearest 2x-ish upsampling to the skip's size, concatenation, two conv-BN-ReLU."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = _conv(cin + skip, cout), _conv(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # The skip's size, not a factor of 2: a 1x1 deepest map at small inputs stays 1x1 at stride 16.
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.conv2(self.conv1(torch.cat([x, skip], 1)))


class UNet(EdgeModel):
    """Encoder: a features-only zoo ResNet (its strides 2, 4, 8, 16, 32 maps). Decoder: one block per stride
    back to the input's, the last one joined with the input. Head: a 3x3 conv to the input's channels.

    decoder_widths: the five blocks' widths, deep to shallow.
    num_classes: ignored (the output has the input's channels); taken so every zoo model builds alike.
    encoder: ResNet arguments (block, layers, channels, stem_width, attn_layer, ...), as the zoo's variants.
    """

    task = "image2image"
    output_names = (IMAGE,)
    stage_names = ("encoder.conv1", "encoder.bn1", "encoder.layer1", "encoder.layer2", "encoder.layer3",
                   "encoder.layer4", "decoder", "head")
    feature_stages = ("encoder.layer2", "encoder.layer3", "encoder.layer4")
    classifier_name = "head"
    # INT8 keeps the two full-resolution decoder blocks (strides 2 and 1, where the stem's map and the image
    # itself join) and the head in float: quantizing them cost 6.7 dB against PyTorch's output on a digits
    # denoiser in ONNX Runtime (29 dB, or 32.5 dB with only the last block in float; 57-59 dB with both), and
    # the residual added to the image is small next to it. They hold about a quarter of unet_resnet18's MACs.
    keep_float = ("decoder.3", "decoder.4", "head")
    backbone_name = "encoder"

    def __init__(self, num_classes: int = 1, in_chans: int = 3,
                 decoder_widths: tuple[int, ...] | list[int] = (256, 128, 64, 32, 16), **encoder: Any) -> None:
        super().__init__()
        widths = tuple(decoder_widths)
        if len(widths) != 5 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise UserInputError(f"decoder_widths must be five positive integers, deep to shallow; got "
                                 f"{decoder_widths!r}")
        self.encoder = ResNet(in_chans=in_chans, features_only=True, **encoder)
        stem = self.encoder.bn1.num_features
        skips = (self.encoder.stage_channels[2], self.encoder.stage_channels[1], self.encoder.stage_channels[0],
                 stem, in_chans)
        blocks, cin = [], self.encoder.num_features
        for skip, width in zip(skips, widths):
            blocks.append(DecoderBlock(cin, skip, width))
            cin = width
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, in_chans, 3, 1, 1)
        nn.init.zeros_(self.head.weight)  # start as the identity: the output is the input
        nn.init.zeros_(self.head.bias)

    def prune_ignored(self) -> list[nn.Module]:
        return [self.head]  # its channels are the image's

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stem's and each stage's outputs, strides 2 to 32."""
        enc = self.encoder
        stem = enc.relu(enc.bn1(enc.conv1(x)))
        c1 = enc.layer1(enc.maxpool(stem))
        c2 = enc.layer2(c1)
        c3 = enc.layer3(c2)
        return [stem, c1, c2, c3, enc.layer4(c3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The restored image, unclamped (the loss sees overshoot); `inference_module` clamps to [0, 1]."""
        stem, c1, c2, c3, c4 = self._encode(x)
        y = c4
        for block, skip in zip(self.decoder, (c3, c2, c1, stem, x)):
            y = block(y, skip)
        return x + self.head(y)

    def inference_module(self, nms: dict | None = None) -> nn.Module:
        """This model with its output clamped to the image range, sharing its weights."""
        if nms is not None:
            raise UserInputError(f"nms applies to detectors; {type(self).__name__} is an {self.task} model")
        return ClampedImage(self)


class ClampedImage(nn.Module):
    """A U-Net's output in [0, 1], as runtimes run and exporters trace it."""

    output_names = (IMAGE,)

    def __init__(self, model: UNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).clamp(0.0, 1.0)
