"""The YOLO training loss: targets assigned to anchors YOLOv5-style, CIoU box loss, BCE objectness and classes.

Training-only: this module imports torch, so the detection task imports it inside its loss methods.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import complete_box_iou_loss

from edgeres.models.yolo import decode_boxes

# A target's neighbour cells, (dx, dy): the cell itself, then left, up, right, down.
_NEIGHBOURS = ((0, 0), (-1, 0), (0, -1), (1, 0), (0, 1))


class YoloLoss:
    """`loss(outputs, targets)`: a scalar (each part a mean per image, so batch size does not rescale it).

    outputs: the model's raw maps per stride, (N, A * (5 + C), H, W) each.
    targets: (M, 6) `[image index in batch, class, x1, y1, x2, y2]` in input pixels; M may be 0.
    anchor_ratio: a box trains an anchor whose width and height are both within this factor of its own.
    balance: objectness weight per stride, fine to coarse (YOLOv5's: fine maps have more cells per object).
    The gains are YOLOv5's defaults; objectness scales with the input area and classes with the class
    count, as there, so their balance holds from 64 px to 640 px and from 1 to 80 classes.
    """

    def __init__(self, model: nn.Module, *, anchor_ratio: float = 4.0, balance: tuple[float, ...] = (4.0, 1.0, 0.4),
                 box_gain: float = 0.05, obj_gain: float = 1.0, cls_gain: float = 0.5):
        self.anchors = model.anchors.detach().clone().float()
        self.strides = tuple(model.strides)
        self.num_classes = model.num_classes
        self.anchor_ratio, self.balance = anchor_ratio, balance
        self.gains = {"box": box_gain, "obj": obj_gain, "cls": cls_gain}
        self.last_components: dict[str, float] = {}

    def __call__(self, outputs: tuple[torch.Tensor, ...], targets: torch.Tensor) -> torch.Tensor:
        if targets.ndim != 2 or targets.shape[1] != 6:
            raise ValueError(f"targets must be (M, 6) [image, class, x1, y1, x2, y2], got {tuple(targets.shape)}")
        device = outputs[0].device
        with torch.autocast(device.type, enabled=False):  # BCE and IoU in float32, whatever the forward ran in
            return self._loss([p.float() for p in outputs], targets.to(device, torch.float32))

    def _loss(self, outputs: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        zero = outputs[0].new_zeros(())
        parts = {"box": zero, "obj": zero, "cls": zero}
        anchors = self.anchors.to(outputs[0].device)
        for p, stride, anchor, balance in zip(outputs, self.strides, anchors, self.balance):
            n, _, h, w = p.shape
            p = p.view(n, anchor.shape[0], 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2)
            obj_target = torch.zeros(p.shape[:4], device=p.device)
            img, a, cell, box, cls = self._assign(targets, anchor / stride, stride, h, w)
            if len(img):
                pred = p[img, a, cell[:, 1], cell[:, 0]]
                pbox = decode_boxes(pred[:, :4], torch.zeros_like(cell, dtype=pred.dtype), anchor[a] / stride)
                ciou_loss = complete_box_iou_loss(pbox, box, reduction="none")
                parts["box"] = parts["box"] + ciou_loss.mean()
                obj_target[img, a, cell[:, 1], cell[:, 0]] = (1 - ciou_loss).detach().clamp(min=0)
                parts["cls"] = parts["cls"] + F.binary_cross_entropy_with_logits(
                    pred[:, 5:], F.one_hot(cls, self.num_classes).float())
            parts["obj"] = parts["obj"] + balance * F.binary_cross_entropy_with_logits(p[..., 4], obj_target)
        pixels = outputs[0].shape[-2] * outputs[0].shape[-1] * self.strides[0] ** 2
        scale = {"box": 1.0, "obj": pixels / 640 ** 2, "cls": self.num_classes / 80}
        parts = {k: v * self.gains[k] * scale[k] for k, v in parts.items()}
        self.last_components = {k: float(v.detach()) for k, v in parts.items()}
        return parts["box"] + parts["obj"] + parts["cls"]

    def _assign(self, targets: torch.Tensor, anchor: torch.Tensor, stride: int, h: int, w: int):
        """Which (image, anchor, cell) trains on which target at one stride.

        A target trains every anchor within `anchor_ratio` of its size, in its own cell and the two neighbour
        cells nearest its centre (the decode reaches half a cell beyond its own): three cells, not one, per
        target. Returns image and anchor indices, cells (x, y), target boxes xyxy in grid units relative to
        each cell, and classes.
        """
        xy = (targets[:, 2:4] + targets[:, 4:6]) / (2 * stride)
        wh = (targets[:, 4:6] - targets[:, 2:4]) / stride
        ratio = wh[None] / anchor[:, None]
        a, t = (torch.maximum(ratio, 1 / ratio).amax(2) < self.anchor_ratio).nonzero(as_tuple=True)
        xy, size = xy[t], xy.new_tensor([w, h])
        low, high = (xy % 1 < 0.5) & (xy > 1), (xy % 1 > 0.5) & (size - xy > 1)  # per axis: neighbour before/after
        near = torch.stack([torch.ones_like(low[:, 0]), low[:, 0], low[:, 1], high[:, 0], high[:, 1]])
        k, j = near.nonzero(as_tuple=True)
        offset = xy.new_tensor(_NEIGHBOURS)[k]
        cell = (xy[j].floor() + offset).clamp(xy.new_zeros(2), size - 1)
        a, t = a[j], t[j]
        centre, half = xy[j] - cell, wh[t] / 2
        box = torch.cat([centre - half, centre + half], 1)
        return targets[t, 0].long(), a, cell.long(), box, targets[t, 1].long()
