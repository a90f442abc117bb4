"""ResNet v1.5 (torchvision layout) with optional attention in each block: one class, every depth."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeres.errors import UserInputError
from edgeres.models.attention import create_attn
from edgeres.models.base import EdgeModel

ATTN_SITES = ("out", "conv")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 attn_layer: str | None = None, attn_site: str = "out", attn_kwargs: dict | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.attn = create_attn(attn_layer, planes, **(attn_kwargs or {})) if attn_site == "conv" else None
        self.bn2 = nn.BatchNorm2d(planes)
        # "se" is timm's name for the post-BN attention slot, kept so timm weights load unchanged.
        self.se = create_attn(attn_layer, planes, **(attn_kwargs or {})) if attn_site == "out" else None
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.attn is not None:
            out = self.attn(out)
        out = self.bn2(out)
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 attn_layer: str | None = None, attn_site: str = "out", attn_kwargs: dict | None = None):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride here: v1.5
        self.attn = create_attn(attn_layer, planes, **(attn_kwargs or {})) if attn_site == "conv" else None
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.se = create_attn(attn_layer, out_planes, **(attn_kwargs or {})) if attn_site == "out" else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.attn is not None:
            out = self.attn(out)
        out = self.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + shortcut)


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _lookup(table: dict[str, Any], key: str, what: str) -> Any:
    if key not in table:
        raise UserInputError(f"unknown {what} {key!r}; valid: {sorted(table)}")
    return table[key]


class ResNet(EdgeModel):
    """ResNet with torchvision's module names, so torchvision- and timm-format weights load as they are."""

    stage_names = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")
    feature_stages = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, block: str = "basic", layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000,
                 in_chans: int = 3, channels: tuple[int, ...] = (64, 128, 256, 512), stem_width: int = 64,
                 attn_layer: str | None = None, attn_site: str = "out", attn_kwargs: dict | None = None,
                 zero_init_last: bool = False, drop_rate: float = 0.0, features_only: bool = False):
        """features_only: no pooling or classifier; forward returns the stride 8, 16, 32 maps (a detector's
        backbone, like timm's features_only)."""
        super().__init__()
        block_cls = _lookup(BLOCKS, block, "block")
        if attn_site not in ATTN_SITES:
            raise UserInputError(f"unknown attn_site {attn_site!r}; valid: {list(ATTN_SITES)}")
        if len(layers) != 4 or len(channels) != 4:
            raise UserInputError(f"layers and channels need 4 stages each, got {layers} and {channels}")
        self.conv1 = nn.Conv2d(in_chans, stem_width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        block_args = dict(attn_layer=attn_layer, attn_site=attn_site, attn_kwargs=attn_kwargs)
        inplanes = stem_width
        self.stage_channels: list[int] = []
        for i, (depth, planes) in enumerate(zip(layers, channels)):
            stage, inplanes = self._make_stage(block_cls, inplanes, planes, depth, 1 if i == 0 else 2, block_args)
            self.add_module(f"layer{i + 1}", stage)
            self.stage_channels.append(inplanes)
        self.num_features = inplanes
        self.features_only = features_only
        if features_only:
            self.stage_names = tuple(n for n in self.stage_names if n != self.classifier_name)
        else:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
            self.fc = nn.Linear(inplanes, num_classes)
        self._init_weights(zero_init_last)

    @staticmethod
    def _make_stage(block_cls, inplanes: int, planes: int, depth: int, stride: int, block_args: dict):
        out_planes = planes * block_cls.expansion
        downsample = None
        if stride != 1 or inplanes != out_planes:
            downsample = nn.Sequential(nn.Conv2d(inplanes, out_planes, 1, stride, bias=False),
                                       nn.BatchNorm2d(out_planes))
        blocks = [block_cls(inplanes, planes, stride, downsample, **block_args)]
        blocks += [block_cls(out_planes, planes, **block_args) for _ in range(depth - 1)]
        return nn.Sequential(*blocks), out_planes

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                last_bn = getattr(m, "bn3", None) or (getattr(m, "bn2", None) if isinstance(m, BasicBlock) else None)
                if last_bn is not None:
                    nn.init.zeros_(last_bn.weight)

    @property
    def feature_channels(self) -> tuple[int, int, int]:
        """Channels of `forward_features`' three maps; the last is what the classifier pools."""
        return self.stage_channels[1], self.stage_channels[2], self.num_features

    def prune_ignored(self) -> list[nn.Module]:
        return [] if self.features_only else super().prune_ignored()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of layer2, layer3 and layer4: strides 8, 16 and 32."""
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.flatten(self.avgpool(x), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        features = self.forward_features(x)
        return features if self.features_only else self.forward_head(features[-1])
