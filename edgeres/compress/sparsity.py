"""Unstructured global magnitude pruning: zeros in place, shapes unchanged."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from edgeres.errors import UserInputError

NOTE = ("Unstructured sparsity leaves every tensor its dense shape: dense runtimes (PyTorch, ONNX Runtime, "
        "OpenVINO, TensorRT without sparse kernels) run exactly as many MACs and gain no speed. It shrinks the "
        "model only once the weights are compressed (e.g. zipped), or runs faster on sparse kernels; "
        "structured pruning (`prune`) is what makes dense runtimes faster.")


def sparsify(model: nn.Module, sparsity: float) -> dict[str, Any]:
    """Zero the `sparsity` fraction of smallest-magnitude conv and linear weights across the model, permanently."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise UserInputError(f"sparsity must be a fraction in [0, 1), got {sparsity!r}")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise UserInputError(f"{type(model).__name__} has no Conv2d or Linear weights to sparsify")
    if sparsity > 0:
        torch_prune.global_unstructured([(m, "weight") for _, m in layers],
                                        pruning_method=torch_prune.L1Unstructured, amount=float(sparsity))
        for _, m in layers:
            torch_prune.remove(m, "weight")  # bake the mask into the weight: no hooks, plain state dict
    per_layer, zeros, total = {}, 0, 0
    with torch.no_grad():
        for name, m in layers:
            z, n = int((m.weight == 0).sum()), m.weight.numel()
            per_layer[name] = z / n
            zeros, total = zeros + z, total + n
    return {"sparsity": zeros / total, "requested": float(sparsity), "zeros": zeros, "weights": total,
            "layers": per_layer, "note": NOTE}
