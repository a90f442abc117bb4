"""What an explanation explains: one scalar per image, read from a model's named outputs.

Explanations differentiate (Grad-CAM) or perturb (occlusion) a single number. A `Target` fixes which number, so
the same target can be scored on a checkpoint, its ONNX file or its INT8 IR, and the maps compared:

- outputs `logits` (a classifier): the target class's logit. The logit, not the probability: a confident
  model's softmax saturates near 1, and occluding a patch would then hardly move it.
- outputs `boxes` + `scores` (a detector, NMS on the host) or `detections` (NMS in the graph): the target is
  the top detection (or the top one of a chosen class), remembered as its class and box. Its score on any
  input is the highest score of that class among the predicted boxes overlapping the remembered box with
  IoU >= 0.5: the same box on the clean image, the detection that survives there under occlusion, and zero
  when none does. Matching by place rather than by anchor index keeps the meaning across graphs with and
  without NMS, whose boxes are ordered differently.

Scorers are chosen by the outputs' names, as the exported graphs name them, so no stage asks for the task.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
from torchvision.ops import box_iou

from edgeres.errors import UserInputError

#: A detection counts as the target box when it overlaps it at least this much.
MATCH_IOU = 0.5


@dataclasses.dataclass(frozen=True)
class Target:
    """The number an explanation explains: a class, and for a detector the box (xyxy, input pixels) it sits in."""

    class_id: int
    box: tuple[float, float, float, float] | None = None

    def to_dict(self) -> dict:
        return {"class_id": self.class_id, "box_xyxy": None if self.box is None else [round(v, 2) for v in self.box]}


class _Logits:
    kind = "logit"

    @staticmethod
    def choose(outputs: Mapping[str, torch.Tensor], class_id: int | None) -> Target:
        logits = outputs["logits"][0]
        return Target(int(logits.argmax()) if class_id is None else class_id)

    @staticmethod
    def score(outputs: Mapping[str, torch.Tensor], target: Target) -> torch.Tensor:
        return outputs["logits"][:, target.class_id]


class _HostNms:
    kind = "detection score"

    @staticmethod
    def choose(outputs: Mapping[str, torch.Tensor], class_id: int | None) -> Target:
        scores = outputs["scores"][0]  # (K, C)
        if class_id is None:
            k, class_id = divmod(int(scores.argmax()), scores.shape[1])
        else:
            k = int(scores[:, class_id].argmax())
        return Target(class_id, tuple(float(v) for v in outputs["boxes"][0, k]))

    @staticmethod
    def score(outputs: Mapping[str, torch.Tensor], target: Target) -> torch.Tensor:
        return _matched_max(outputs["boxes"], outputs["scores"][..., target.class_id], target)


class _GraphNms:
    kind = "detection score"

    @staticmethod
    def choose(outputs: Mapping[str, torch.Tensor], class_id: int | None) -> Target:
        rows = outputs["detections"][0]  # (max_det, 6), best first, padding rows of class -1
        wanted = rows[:, 5] >= 0 if class_id is None else rows[:, 5] == class_id
        if not bool(wanted.any()):
            # Nothing above the graph's threshold: explain the class anywhere (its score is 0 until one appears).
            return Target(0 if class_id is None else class_id)
        top = rows[wanted][0]
        return Target(int(top[5]), tuple(float(v) for v in top[:4]))

    @staticmethod
    def score(outputs: Mapping[str, torch.Tensor], target: Target) -> torch.Tensor:
        d = outputs["detections"]
        class_scores = torch.where(d[..., 5] == target.class_id, d[..., 4], torch.zeros_like(d[..., 4]))
        return _matched_max(d[..., :4], class_scores, target)


def _matched_max(boxes: torch.Tensor, class_scores: torch.Tensor, target: Target) -> torch.Tensor:
    """(N,): per image the highest of `class_scores` (N, K) among `boxes` (N, K, 4) matching the target box."""
    if target.box is not None:
        reference = torch.tensor([target.box], dtype=boxes.dtype)
        # Which box matches is a choice, not a quantity to differentiate: only the score carries gradient.
        iou = torch.stack([box_iou(b.detach(), reference)[:, 0] for b in boxes])
        class_scores = torch.where(iou >= MATCH_IOU, class_scores, torch.zeros_like(class_scores))
    return class_scores.max(dim=1).values


# sorted output names -> scorer (the names exported graphs give, see runtime/base.py)
_SCORERS = {("logits",): _Logits, ("boxes", "scores"): _HostNms, ("detections",): _GraphNms}


def _scorer(outputs: Mapping[str, torch.Tensor]):
    names = tuple(sorted(outputs))
    if names not in _SCORERS:
        raise UserInputError(f"cannot explain a model whose outputs are named {list(names)}; expected one of "
                             f"{[list(n) for n in _SCORERS]}")
    return _SCORERS[names]


def choose_target(outputs: Mapping[str, torch.Tensor], class_id: int | None = None) -> Target:
    """The target for one image's outputs (batch of 1): the top class or detection, or the top one of `class_id`."""
    return _scorer(outputs).choose(outputs, class_id)


def target_score(outputs: Mapping[str, torch.Tensor], target: Target) -> torch.Tensor:
    """(N,) the target's score in each row of a batch of outputs (differentiable where the outputs are)."""
    return _scorer(outputs).score(outputs, target)


def score_kind(outputs: Mapping[str, torch.Tensor]) -> str:
    """What `target_score` measures for these outputs: "logit" or "detection score"."""
    return _scorer(outputs).kind
