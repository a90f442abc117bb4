"""Pre-activation ResNet V2 in the Keras layout: stride in the last block of each stage."""
from __future__ import annotations

import torch
from torch import nn

from edgeres.errors import UserInputError
from edgeres.models.attention import create_attn
from edgeres.models.base import EdgeModel


class PreActBottleneck(nn.Module):
    """BN-ReLU first; the projection shortcut reads the pre-activation, a strided one max-pools the input."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, project: bool = False,
                 attn_layer: str | None = None, attn_kwargs: dict | None = None, head: str = "linear",
                 head_width: int = 512, dropout: float = 0.3):
        super().__init__()
        if head not in ("linear", "conv"):
            raise UserInputError(f"head must be 'linear' or 'conv', got {head!r}")
        out_planes = planes * self.expansion
        self.preact = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        # Keras uses biased convs for the projection and the last 1x1; the parameter count depends on it.
        self.downsample = nn.Conv2d(inplanes, out_planes, 1, stride, bias=True) if project else None
        self.pool = nn.MaxPool2d(1, stride) if (stride > 1 and not project) else None
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=True)
        self.se = create_attn(attn_layer, out_planes, **(attn_kwargs or {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.preact(x))
        if self.downsample is not None:
            shortcut = self.downsample(pre)
        else:
            shortcut = x if self.pool is None else self.pool(x)
        out = self.relu(self.bn1(self.conv1(pre)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.conv3(out)
        if self.se is not None:
            out = self.se(out)
        return out + shortcut


class ResNetV2(EdgeModel):
    """Pre-activation ResNet V2 (He et al. 2016) as Keras's ResNet50V2 builds it."""

    stage_names = ("conv1", "layer1", "layer2", "layer3", "layer4", "norm", "fc")
    feature_stages = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000, in_chans: int = 3,
                 channels: tuple[int, ...] = (64, 128, 256, 512), stem_width: int = 64,
                 attn_layer: str | None = None, attn_kwargs: dict | None = None, head: str = "linear",
                 head_width: int = 512, dropout: float = 0.3):
        super().__init__()
        if head not in ("linear", "conv"):
            raise UserInputError(f"head must be 'linear' or 'conv', got {head!r}")
        self.conv1 = nn.Conv2d(in_chans, stem_width, 7, 2, 3, bias=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stem_width
        strides = [2] * (len(layers) - 1) + [1]
        for i, (depth, planes, stride) in enumerate(zip(layers, channels, strides)):
            blocks = []
            for j in range(depth):
                last = j == depth - 1
                blocks.append(PreActBottleneck(inplanes, planes, stride if last else 1, project=(j == 0),
                                               attn_layer=attn_layer, attn_kwargs=attn_kwargs))
                inplanes = planes * PreActBottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_features = inplanes
        self.norm = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        if head == "conv":
            # A convolutional head on the last features, as the MRI study puts on Keras's ResNet50V2: 3x3 conv,
            # BN, ReLU, then pooling, dropout and the classifier. A classification file has no weights for it.
            self.head = nn.Sequential(nn.Conv2d(inplanes, head_width, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(head_width), nn.ReLU(inplace=True))
            self.drop = nn.Dropout(dropout)
            self.stage_names = (*self.stage_names[:-1], "head", "fc")
            self.added_modules = ("head",)
            inplanes = head_width
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.relu(self.norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        if hasattr(self, "head"):
            return self.fc(self.drop(torch.flatten(self.avgpool(self.head(x)), 1)))
        return self.fc(torch.flatten(self.avgpool(x), 1))
