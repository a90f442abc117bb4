"""What every zoo model declares about itself, so other stages never sniff layer names."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from edgeres.errors import UserInputError
from edgeres.meta import DEFAULT_TASK


class EdgeModel(nn.Module):
    """Base of zoo models: named stages in forward order, a classifier, layers pruning must keep."""

    #: Top-level children in forward order; freezing "up to a stage" follows this order.
    stage_names: tuple[str, ...] = ()
    #: Stages whose outputs feature distillation may match, shallow to deep.
    feature_stages: tuple[str, ...] = ()
    classifier_name: str = "fc"
    #: What the outputs mean: the name of the task (edgeres.tasks) that trains, scores and exports this model.
    task: str = DEFAULT_TASK
    #: forward's outputs in order, named as the exported graphs name them (torch outputs carry no names).
    output_names: tuple[str, ...] = ("logits",)
    #: Module-name prefixes INT8 quantization must leave in float (a detector's output convs).
    keep_float: tuple[str, ...] = ()
    #: The submodule a classification network's weights load into (a detector's backbone); None: the whole model.
    backbone_name: str | None = None
    #: Top-level modules a classification weight file does not hold (a convolutional head): loading a file
    #: leaves them freshly initialised.
    added_modules: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.frozen: tuple[str, ...] = ()

    def prune_ignored(self) -> list[nn.Module]:
        """Modules whose output channels structured pruning must leave alone."""
        return [getattr(self, self.classifier_name)]

    def inference_module(self, nms: dict | None = None) -> nn.Module:
        """What runtimes run and exporters trace, with `output_names`; a classifier is its own."""
        if nms is not None:
            raise UserInputError(f"nms applies to detectors; {type(self).__name__} is a {self.task} model")
        return self

    def freeze(self, upto: str) -> list[str]:
        """Freeze every stage up to and including `upto`; frozen BatchNorms keep their statistics."""
        if upto not in self.stage_names:
            raise UserInputError(f"cannot freeze up to {upto!r}; stages are {list(self.stage_names)}")
        names = list(self.stage_names[: self.stage_names.index(upto) + 1])
        for name in names:
            for p in self.get_submodule(name).parameters():
                p.requires_grad_(False)
        self.frozen = tuple(names)
        self.train(self.training)
        return names

    def train(self, mode: bool = True) -> "EdgeModel":
        super().train(mode)
        for name in self.frozen:
            self.get_submodule(name).eval()
        return self


def named_outputs(model: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """`model(batch)` by the `output_names` the module declares (forward returns one tensor or a tuple)."""
    outputs = model(batch)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    if len(outputs) != len(model.output_names):
        raise ValueError(f"{type(model).__name__} returns {len(outputs)} outputs but names {model.output_names}")
    return dict(zip(model.output_names, outputs))


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode without gradients for the block (tracing, export, folding), then the model's own mode back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
