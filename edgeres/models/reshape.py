"""Resize layers to recorded shapes, so a pruned model rebuilds from its architecture and a shape list."""
from __future__ import annotations

from torch import nn

from edgeres.errors import UserInputError


def _resized(module: nn.Module, shapes: dict[str, list[int]]) -> nn.Module:
    """A fresh module like `module` but with the channel counts that `shapes` (param name -> shape) give."""
    if isinstance(module, nn.Conv2d):
        out_c, in_per_group = shapes["weight"][0], shapes["weight"][1]
        groups = module.groups if module.groups == 1 else out_c  # pruning keeps depthwise convs depthwise
        return nn.Conv2d(in_per_group * groups, out_c, module.kernel_size, module.stride, module.padding,
                         module.dilation, groups, module.bias is not None, module.padding_mode)
    if isinstance(module, nn.BatchNorm2d):
        n = next(iter(shapes.values()))[0]
        return nn.BatchNorm2d(n, module.eps, module.momentum, module.affine, module.track_running_stats)
    if isinstance(module, nn.Linear):
        out_f, in_f = shapes["weight"]
        return nn.Linear(in_f, out_f, module.bias is not None)
    raise UserInputError(f"cannot resize a {type(module).__name__}; only Conv2d, BatchNorm2d and Linear are resizable")


def reshape_to(model: nn.Module, shapes: dict[str, list[int]]) -> nn.Module:
    """Replace, in place, every module one of whose tensors `shapes` lists with one of that size."""
    by_module: dict[str, dict[str, list[int]]] = {}
    for key, shape in shapes.items():
        owner, _, tensor = key.rpartition(".")
        by_module.setdefault(owner, {})[tensor] = shape
    modules = dict(model.named_modules())
    for owner, tensor_shapes in by_module.items():
        if owner not in modules:
            raise UserInputError(f"recorded shape for {owner!r}, which this architecture does not have")
        parent_name, _, child = owner.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, _resized(modules[owner], tensor_shapes))
    return model
