"""A YOLOv3-style detector on a zoo ResNet: the backbone's stride 8/16/32 maps, a top-down neck, three
anchor-based heads. The model returns raw head maps (for the loss); `inference_module` adds the box
decode, and optionally NMS, in the graph that runtimes run and exporters trace.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from edgeres.errors import UserInputError
from edgeres.models.anchors import DEFAULT_ANCHORS
from edgeres.models.base import EdgeModel
from edgeres.models.resnet import ResNet

#: YOLOv3 with its Darknet-53 backbone at 80 classes, the scale `edgeres models` shows detectors beside.
YOLOV3_DARKNET53_PARAMS = 61_949_149

STRIDES = (8, 16, 32)
#: Objects per image the objectness bias assumes at start, over a 640 px image's cells (YOLOv5's prior).
_OBJ_PRIOR = (8, 640)


def _conv(cin: int, cout: int, k: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.1, inplace=True))


def _block(cin: int, width: int) -> nn.Sequential:
    """YOLOv3's alternating 1x1 / 3x3 convs, ending narrow (width / 2) where the next level branches off."""
    return nn.Sequential(_conv(cin, width // 2), _conv(width // 2, width, 3), _conv(width, width // 2))


class YoloNeck(nn.Module):
    """Top-down path: each level's convs see the coarser level's features, upsampled and concatenated."""

    def __init__(self, in_channels: tuple[int, int, int], widths: tuple[int, int, int]):
        super().__init__()
        (c3, c4, c5), (w3, w4, w5) = in_channels, widths
        self.block5 = _block(c5, w5)
        self.lateral5 = _conv(w5 // 2, w4 // 2)
        self.block4 = _block(c4 + w4 // 2, w4)
        self.lateral4 = _conv(w4 // 2, w3 // 2)
        self.block3 = _block(c3 + w3 // 2, w3)
        self.out3, self.out4, self.out5 = _conv(w3 // 2, w3, 3), _conv(w4 // 2, w4, 3), _conv(w5 // 2, w5, 3)

    @staticmethod
    def _merge(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.interpolate(coarse, size=fine.shape[-2:], mode="nearest"), fine], 1)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = feats
        r5 = self.block5(c5)
        r4 = self.block4(self._merge(self.lateral5(r5), c4))
        r3 = self.block3(self._merge(self.lateral4(r4), c3))
        return [self.out3(r3), self.out4(r4), self.out5(r5)]


class YOLO(EdgeModel):
    """Zoo ResNet backbone + YOLOv3 neck + one 1x1 output conv per stride, each A * (5 + C) channels.

    anchors: 3 * A (w, h) pairs in input pixels, small to large, A per stride (`kmeans_anchors` makes them
        from training boxes); JSON-able, so model.json's arch_kwargs rebuild the model.
    neck_widths: the neck's output widths per stride; default the backbone's widths there.
    backbone: ResNet arguments (block, layers, channels, stem_width, attn_layer, ...), as the zoo's variants.
    """

    task = "detection"
    output_names = ("p3", "p4", "p5")
    stage_names = ("backbone.conv1", "backbone.bn1", "backbone.layer1", "backbone.layer2", "backbone.layer3",
                   "backbone.layer4", "neck", "heads")
    feature_stages = ("backbone.layer2", "backbone.layer3", "backbone.layer4")
    classifier_name = "heads"
    keep_float = ("heads",)
    backbone_name = "backbone"
    strides = STRIDES
    #: (name, parameters) of the model a listing shows this one beside, for scale.
    scale_reference = ("yolov3_darknet53 (reference, 80 classes)", YOLOV3_DARKNET53_PARAMS)

    def __init__(self, num_classes: int = 80, in_chans: int = 3, anchors: list[list[float]] | None = None,
                 neck_widths: tuple[int, int, int] | list[int] | None = None, **backbone: Any):
        super().__init__()
        anchors = _check_anchors(DEFAULT_ANCHORS if anchors is None else anchors)
        self.num_classes = num_classes
        self.num_anchors = len(anchors) // len(STRIDES)
        # Not saved with the weights: model.json's arch_kwargs are the one record of the anchors.
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(len(STRIDES), -1, 2),
                             persistent=False)
        self.backbone = ResNet(in_chans=in_chans, features_only=True, **backbone)
        widths = tuple(neck_widths or self.backbone.feature_channels)
        if len(widths) != 3 or any(not isinstance(w, int) or w < 2 or w % 2 for w in widths):
            raise UserInputError(f"neck_widths must be three even integers >= 2, got {neck_widths!r}")
        self.neck = YoloNeck(self.backbone.feature_channels, widths)
        self.heads = nn.ModuleList(nn.Conv2d(w, self.num_anchors * (5 + num_classes), 1) for w in widths)
        self._init_head_bias()

    @torch.no_grad()
    def _init_head_bias(self) -> None:
        """Start with objectness near the expected object density and classes unlikely, so early steps
        are not spent unlearning confident background predictions (YOLOv5's priors)."""
        objects, size = _OBJ_PRIOR
        for head, stride in zip(self.heads, STRIDES):
            bias = head.bias.view(self.num_anchors, 5 + self.num_classes)
            bias[:, 4] = math.log(objects / (size / stride) ** 2)
            bias[:, 5:] = math.log(0.6 / max(self.num_classes - 0.99, 1.0))

    def prune_ignored(self) -> list[nn.Module]:
        return list(self.heads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.neck(self.backbone(x))
        return tuple(head(f) for head, f in zip(self.heads, feats))

    def inference_module(self, nms: dict | None = None) -> nn.Module:
        """This model plus box decode (and NMS when `nms` = {max_det, iou, conf} is given), sharing its weights."""
        return YoloInference(self, NmsConfig.from_dict(nms) if nms is not None else None)


def _check_anchors(anchors: Any) -> list[list[float]]:
    ok = (isinstance(anchors, (list, tuple)) and len(anchors) > 0 and len(anchors) % len(STRIDES) == 0
          and all(isinstance(a, (list, tuple)) and len(a) == 2 for a in anchors))
    if ok:
        values = [float(v) for a in anchors for v in a]
        ok = all(math.isfinite(v) and v > 0 for v in values)
    if not ok:
        raise UserInputError(f"anchors must be {len(STRIDES)} * A positive (w, h) pairs in pixels, small to large; "
                             f"got {anchors!r}")
    return [[float(w), float(h)] for w, h in anchors]


def decode_boxes(raw: torch.Tensor, cell: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """xyxy boxes in grid units from raw (..., 4) `[tx, ty, tw, th]` at grid `cell` (x, y) with `anchor` (w, h)
    in grid units: centre = cell + 2 sigmoid(t) - 0.5, size = anchor * (2 sigmoid(t))^2 (YOLOv5's bounded form,
    which the loss and the exported graph share)."""
    t = raw.sigmoid()
    xy = t[..., :2] * 2 - 0.5 + cell
    wh = (t[..., 2:4] * 2) ** 2 * anchor
    return torch.cat([xy - wh / 2, xy + wh / 2], -1)


class YoloDecode(nn.Module):
    """Raw head maps to boxes (N, K, 4) xyxy in input pixels and scores (N, K, C) = sigmoid(obj) * sigmoid(cls).

    K runs over strides, then anchors, then rows, then columns. Grids come from each map's shape, so one
    graph serves every batch size.
    """

    def __init__(self, num_classes: int, strides: tuple[int, ...]):
        super().__init__()
        self.num_classes, self.strides = num_classes, strides

    def forward(self, maps: tuple[torch.Tensor, ...], anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, scores = [], []
        for p, stride, anchor in zip(maps, self.strides, anchors):
            h, w = p.shape[-2:]
            p = p.view(p.shape[0], anchor.shape[0], 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2)
            gy, gx = torch.meshgrid(torch.arange(h, dtype=p.dtype, device=p.device),
                                    torch.arange(w, dtype=p.dtype, device=p.device), indexing="ij")
            cell = torch.stack([gx, gy], -1)
            box = decode_boxes(p[..., :4], cell, (anchor / stride).view(-1, 1, 1, 2)) * stride
            boxes.append(box.flatten(1, 3))
            scores.append((p[..., 4:5].sigmoid() * p[..., 5:].sigmoid()).flatten(1, 3))
        return torch.cat(boxes, 1), torch.cat(scores, 1)


@dataclasses.dataclass(frozen=True)
class NmsConfig:
    """In-graph NMS: keep at most `max_det` boxes per image scoring above `conf`, per class at IoU `iou`."""

    max_det: int = 100
    iou: float = 0.6
    conf: float = 0.25

    @classmethod
    def from_dict(cls, d: dict) -> "NmsConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - fields:
            raise UserInputError(f"nms must be a mapping with keys {sorted(fields)}, got {d!r}")
        cfg = cls(**d)
        if isinstance(cfg.max_det, bool) or not isinstance(cfg.max_det, int) or cfg.max_det < 1:
            raise UserInputError(f"nms max_det must be a positive integer, got {cfg.max_det!r}")
        for name in ("iou", "conf"):
            value = getattr(cfg, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise UserInputError(f"nms {name} must be a number in [0, 1], got {value!r}")
        return cfg


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, config: NmsConfig) -> torch.Tensor:
    """Per-class NMS per image: (N, max_det, 6) `[x1, y1, x2, y2, score, class]`, best first, padded with
    zeros and class -1. Every (box, class) above `conf` is a candidate. The same function serves the graph
    and host-side postprocess, so both give the same detections.

    Written without loops over the batch or data-dependent Python branches, so it traces to ONNX with a
    dynamic batch: it is torchvision's batched_nms (offset boxes per image and class, one `nms` call), with
    the offset taken from all boxes, never from the candidates alone (which may be empty).
    """
    n, _, num_classes = scores.shape
    img, box, cls = (scores > config.conf).nonzero().unbind(1)
    cand_boxes, cand_scores = boxes[img, box], scores[img, box, cls]
    group = img * num_classes + cls
    offset = group.to(boxes.dtype)[:, None] * (boxes.abs().max() * 2 + 1)
    keep = nms(cand_boxes + offset, cand_scores, config.iou)  # sorted by score, best first
    img, rows = img[keep], torch.cat([cand_boxes[keep], cand_scores[keep, None], cls[keep, None].to(boxes.dtype)], 1)
    same = (img[:, None] == torch.arange(n, device=img.device)[None]).long()
    rank = (same.cumsum(0) * same).sum(1) - 1  # place among its image's detections
    fits = rank < config.max_det
    pad = torch.tensor([0, 0, 0, 0, 0, -1], dtype=boxes.dtype, device=boxes.device)
    out = pad.expand(n * config.max_det, 6).clone()
    out[img[fits] * config.max_det + rank[fits]] = rows[fits]  # in place: OpenVINO converts this form
    return out.view(n, config.max_det, 6)


class YoloNMS(nn.Module):
    def __init__(self, config: NmsConfig):
        super().__init__()
        self.config = config

    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return select_detections(boxes, scores, self.config)


class YoloInference(nn.Module):
    """A YOLO model with its decode (and NMS) in the graph; holds the model, so the parameters are its own.

    `keep_float` names this module's float-only parts: module prefixes as `named_modules` spells them
    (the model sits under `model.`); in a TorchScript-exported ONNX graph they are node-name scopes
    `/model/heads.*`, `/decode/*` and `/nms/*`.
    """

    def __init__(self, model: YOLO, nms: NmsConfig | None = None):
        super().__init__()
        self.model = model
        self.decode = YoloDecode(model.num_classes, model.strides)
        self.nms = YoloNMS(nms) if nms is not None else None
        self.output_names = ("boxes", "scores") if nms is None else ("detections",)
        self.keep_float = tuple(f"model.{p}" for p in model.keep_float) + ("decode",) + (("nms",) if nms else ())
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        return self.from_raw(self.model(x))

    def from_raw(self, maps: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """The outputs for the model's raw head maps, already computed (validation scores the loss's forward)."""
        boxes, scores = self.decode(maps, self.model.anchors)
        return (boxes, scores) if self.nms is None else self.nms(boxes, scores)
