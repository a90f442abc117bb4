"""What every zoo model declares about itself, so other stages never sniff layer names."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from edgeres.errors import UserInputError


class EdgeModel(nn.Module):
    """Base of zoo models: named stages in forward order, a classifier, layers pruning must keep."""

    #: Top-level children in forward order; freezing "up to a stage" follows this order.
    stage_names: tuple[str, ...] = ()
    #: Stages whose outputs feature distillation may match, shallow to deep.
    feature_stages: tuple[str, ...] = ()
    classifier_name: str = "fc"

    def __init__(self) -> None:
        super().__init__()
        self.frozen: tuple[str, ...] = ()

    def prune_ignored(self) -> list[nn.Module]:
        """Modules whose output channels structured pruning must leave alone."""
        return [getattr(self, self.classifier_name)]

    def freeze(self, upto: str) -> list[str]:
        """Freeze every stage up to and including `upto`; frozen BatchNorms keep their statistics."""
        if upto not in self.stage_names:
            raise UserInputError(f"cannot freeze up to {upto!r}; stages are {list(self.stage_names)}")
        names = list(self.stage_names[: self.stage_names.index(upto) + 1])
        for name in names:
            for p in getattr(self, name).parameters():
                p.requires_grad_(False)
        self.frozen = tuple(names)
        self.train(self.training)
        return names

    def train(self, mode: bool = True) -> "EdgeModel":
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        return self


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
