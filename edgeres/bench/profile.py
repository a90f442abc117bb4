"""Static model figures: parameters and multiply-accumulates at a given input size."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """MACs of one forward pass on a batch of one (convolutions and matmuls, as papers count them)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    return counter.get_total_flops() // 2
