"""Knowledge distillation as a training criterion: soft teacher targets, optionally matched stage features."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgeres.checkpoint import ModelMeta, load_checkpoint
from edgeres.errors import UserInputError
from edgeres.tasks import Criterion
from edgeres.tasks.classify_losses import kd_loss

#: soft_loss(student outputs, teacher outputs, temperature) -> loss: how the student copies the teacher.
SoftLoss = Callable[[Any, Any, float], torch.Tensor]


class Distiller(nn.Module):
    """criterion(outputs, targets, images) = alpha * hard + (1 - alpha) * soft + feature_weight * feature MSE.

    alpha: weight of the hard-label loss (1 means no distillation at all).
    hard_loss: the hard-label loss, the student's task's (default: plain cross-entropy).
    soft_loss: how the student's outputs copy the teacher's, the task's (default: Hinton's KD on logits).
    feature_stages: stage names to match (default: the student's `feature_stages`); each gets a learned
        1x1 conv from the student's width to the teacher's, a parameter of this module.
    input_shape: (C, H, W) used once to measure stage widths; default (student's input channels, 64, 64).
    The teacher is frozen and kept in eval mode, and moves with this module (`.to(device)`). Call
    `close()` (or use `with`) to remove the hooks.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, temperature: float = 4.0, alpha: float = 0.7,
                 feature_weight: float = 0.0, feature_stages: tuple[str, ...] | list[str] | None = None,
                 *, input_shape: tuple[int, int, int] | None = None, hard_loss: Criterion | None = None,
                 soft_loss: SoftLoss | None = None):
        super().__init__()
        if not temperature > 0:
            raise UserInputError(f"temperature must be positive, got {temperature}")
        if not 0 <= alpha <= 1:
            raise UserInputError(f"alpha (the hard-label weight) must be in [0, 1], got {alpha}")
        if not feature_weight >= 0:
            raise UserInputError(f"feature_weight must be >= 0, got {feature_weight}")
        self.temperature, self.alpha, self.feature_weight = float(temperature), float(alpha), float(feature_weight)
        self.hard_loss = hard_loss or (lambda logits, targets, images: F.cross_entropy(logits, targets))
        self.soft_loss = soft_loss or kd_loss
        teacher.eval().requires_grad_(False)
        # A tuple keeps both models out of this module's parameters: the optimizer that trains the
        # criterion's parameters must see the adapters only, never the frozen teacher or the student twice.
        self._models = (teacher, student)
        self._features: dict[str, dict[str, torch.Tensor]] = {"student": {}, "teacher": {}}
        self._hooks: list = []
        self.stages: tuple[str, ...] = ()
        self.adapters = nn.ModuleDict()
        self.last: dict[str, float] = {}
        if self.feature_weight > 0:
            self.stages = tuple(feature_stages or getattr(student, "feature_stages", ()))
            if not self.stages:
                raise UserInputError("feature distillation needs feature_stages; the student declares none")
            self._hook_stages()
            self._build_adapters(input_shape or (_in_chans(student), 64, 64))

    def _apply(self, fn, recurse: bool = True):
        # nn.Module.to/.cuda/.cpu all come here: the teacher, held outside this module's tree (see
        # __init__), must run on the student's device. The student is the trainer's to move.
        self.teacher._apply(fn, recurse)
        return super()._apply(fn, recurse)

    @property
    def teacher(self) -> nn.Module:
        return self._models[0]

    @property
    def student(self) -> nn.Module:
        return self._models[1]

    def _hook_stages(self) -> None:
        for role, model in (("student", self.student), ("teacher", self.teacher)):
            modules = dict(model.named_modules())
            missing = [s for s in self.stages if s not in modules]
            if missing:
                raise UserInputError(f"the {role} has no stage(s) {missing}; "
                                     f"its stages are {list(getattr(model, 'feature_stages', ()))}")
            for stage in self.stages:
                self._hooks.append(modules[stage].register_forward_hook(self._recorder(role, stage)))

    def _recorder(self, role: str, stage: str):
        def record(module: nn.Module, inputs, output: torch.Tensor) -> None:
            self._features[role][stage] = output
        return record

    @torch.no_grad()
    def _build_adapters(self, input_shape: tuple[int, int, int]) -> None:
        """Run both models once to read each stage's width, then make the student-to-teacher adapters."""
        was_training = self.student.training
        probe = torch.zeros(2, *input_shape)
        self.student.eval()(probe)
        self.student.train(was_training)
        self.teacher(probe)
        for stage in self.stages:
            s, t = self._features["student"][stage], self._features["teacher"][stage]
            if s.dim() != 4 or t.dim() != 4:
                raise UserInputError(f"stage {stage!r} does not output NCHW feature maps")
            self.adapters[_key(stage)] = nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False)
        self._clear()

    def forward(self, outputs: Any, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The distillation loss for a batch the student has just run forward on (its outputs: a tensor, or a
        tuple of them for a multi-output model)."""
        if self.teacher.training:  # someone switched it back: soft targets must not see dropout or batch stats
            self.teacher.eval()
        with torch.no_grad():
            teacher_outputs = self.teacher(images)
        if _shapes(teacher_outputs) != _shapes(outputs):
            raise UserInputError(f"teacher outputs {_shapes(teacher_outputs)} do not match the student's "
                                 f"{_shapes(outputs)}: teacher and student need the same classes (and anchors)")
        ce = self.hard_loss(outputs, targets, images)
        kd = self.soft_loss(outputs, teacher_outputs, self.temperature)
        loss = self.alpha * ce + (1 - self.alpha) * kd
        self.last = {"ce": ce.item(), "kd": kd.item()}
        if self.feature_weight > 0:
            feat = self.feature_loss()
            loss = loss + self.feature_weight * feat
            self.last["feature"] = feat.item()
        self._clear()
        return loss

    def feature_loss(self) -> torch.Tensor:
        """Mean over stages of the MSE between adapted student features and teacher features."""
        losses = []
        for stage in self.stages:
            s, t = self._features["student"].get(stage), self._features["teacher"].get(stage)
            if s is None or t is None or s.shape[0] != t.shape[0]:
                raise RuntimeError(f"no matching student and teacher features for stage {stage!r}: "
                                   "run the student forward on the same batch before calling the criterion")
            size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
            # Architectures may downsample at different points in a stage: compare on the coarser grid.
            s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
            losses.append(F.mse_loss(self.adapters[_key(stage)](s), t))
        return torch.stack(losses).mean()

    def _clear(self) -> None:
        for feats in self._features.values():
            feats.clear()

    def close(self) -> None:
        """Remove the forward hooks from teacher and student."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._clear()

    def __enter__(self) -> "Distiller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _shapes(outputs: Any) -> list[tuple[int, ...]]:
    return [tuple(o.shape) for o in (outputs if isinstance(outputs, (tuple, list)) else (outputs,))]


def _key(stage: str) -> str:
    return stage.replace(".", "__")  # ModuleDict keys may not contain dots


def _in_chans(model: nn.Module) -> int:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise UserInputError("cannot tell the student's input channels; pass input_shape")
    return first.in_channels


def load_teacher(path: str | Path, student: ModelMeta | None = None) -> nn.Module:
    """Load a teacher from an edgeres checkpoint, frozen in eval mode; check it fits the student's task."""
    teacher, meta = load_checkpoint(path)
    if student is not None:
        checks = [("classes", meta.num_classes, student.num_classes),
                  ("input channels", meta.in_chans, student.in_chans)]
        if meta.class_names and student.class_names:
            checks.append(("class names", meta.class_names, student.class_names))
        # The teacher sees the student's batches: normalised for another mean/std, its soft targets are noise.
        checks += [("normalisation mean", list(meta.mean), list(student.mean)),
                   ("normalisation std", list(meta.std), list(student.std))]
        for what, theirs, ours in checks:
            if theirs != ours:
                raise UserInputError(f"teacher {path} does not fit the student: {what} {theirs} vs {ours}")
    return teacher.eval().requires_grad_(False)
