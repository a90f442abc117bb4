"""ResNet-50 with adaptive spatial feature fusion (ASFF) of its last two stages before the classifier."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeres.models.resnet import ResNet


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASFF(nn.Module):
    """Fuse feature maps by per-pixel softmax weights learned from the maps themselves (Liu et al. 2019)."""

    def __init__(self, in_channels: tuple[int, ...], channels: int = 512, compress: int = 16):
        super().__init__()
        self.proj = nn.ModuleList(_conv_bn_relu(c, channels) for c in in_channels)
        self.weight = nn.ModuleList(_conv_bn_relu(channels, compress) for _ in in_channels)
        self.weight_levels = nn.Conv2d(compress * len(in_channels), len(in_channels), 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        # Bring every level down to the coarsest map; ceil_mode matches a stride-2 conv's output size.
        target = feats[-1].shape[-2:]
        levels = []
        for proj, f in zip(self.proj, feats):
            f = proj(f)
            while f.shape[-2] > target[0]:
                f = F.avg_pool2d(f, 2, 2, ceil_mode=True)
            levels.append(f)
        w = torch.softmax(self.weight_levels(torch.cat([m(f) for m, f in zip(self.weight, levels)], 1)), dim=1)
        return sum(level * w[:, i : i + 1] for i, level in enumerate(levels))


class ASFFResNet(ResNet):
    """ResNet whose layer3 and layer4 outputs are fused by ASFF, then pooled and classified."""

    stage_names = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fusion", "fc")

    def __init__(self, fuse_channels: int = 512, fuse_compress: int = 16, num_classes: int = 1000, **kwargs):
        super().__init__(num_classes=num_classes, **kwargs)
        self.fusion = ASFF(tuple(self.stage_channels[2:]), fuse_channels, fuse_compress)
        self.num_features = fuse_channels
        self.fc = nn.Linear(fuse_channels, num_classes)

    def prune_ignored(self) -> list[nn.Module]:
        # One output channel per fused level: its width is the number of levels, not a feature width.
        return [self.fc, self.fusion.weight_levels]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Strides 8, 16, 32: layer2's and layer3's maps, then layer3 and layer4 fused (what the classifier pools)."""
        c3, c4, c5 = super().forward_features(x)
        return [c3, c4, self.fusion([c4, c5])]
