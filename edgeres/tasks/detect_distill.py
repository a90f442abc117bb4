"""Output distillation for anchor-based detectors (torch: imported only where training runs).

The student copies the teacher's raw head maps where the teacher sees an object: objectness against the
teacher's softened objectness everywhere, and box offsets and class scores weighted by that objectness, so
the many background cells do not drown the few with objects (Mehta and Ozturk's objectness-scaled
distillation, "Object detection at 200 frames per second", 2018).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

_FIELDS = 5  # tx, ty, tw, th, objectness, then one logit per class


def yolo_soft_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], temperature: float,
                   anchors_per_cell: int = 3) -> torch.Tensor:
    """Mean over scales of the objectness-scaled distillation loss between two detectors' raw head maps,
    each (N, A*(5+C), H, W)."""
    losses = []
    for s, t in zip(student, teacher):
        n, channels, h, w = s.shape
        s = s.float().view(n, anchors_per_cell, channels // anchors_per_cell, h, w)
        t = t.float().view(n, anchors_per_cell, channels // anchors_per_cell, h, w)
        t_obj = torch.sigmoid(t[:, :, 4] / temperature)
        obj = F.binary_cross_entropy_with_logits(s[:, :, 4] / temperature, t_obj) * temperature ** 2
        weight = torch.sigmoid(t[:, :, 4]).unsqueeze(2)  # where the teacher sees an object
        box = (weight * (s[:, :, :4] - t[:, :, :4]) ** 2).sum() / weight.sum().clamp_min(1.0)
        cls = (weight * F.binary_cross_entropy_with_logits(s[:, :, _FIELDS:] / temperature,
                                                             torch.sigmoid(t[:, :, _FIELDS:] / temperature),
                                                             reduction="none")).sum()
        cls = cls / (weight.sum().clamp_min(1.0) * max(s.shape[2] - _FIELDS, 1)) * temperature ** 2
        losses.append(obj + box + cls)
    return torch.stack(losses).mean()
