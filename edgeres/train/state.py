"""Resumable training state as safetensors + JSON: tensors go to one file, structure to the other."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from edgeres.artifacts import atomic_path, read_json, write_json

_TENSOR = "__tensor__"


def _split(tree: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(tree, torch.Tensor):
        tensors[path] = tree.detach().cpu().contiguous()
        return {_TENSOR: path}
    if isinstance(tree, dict):
        return {"__dict__": [[_split(k, tensors, f"{path}/k{i}"), _split(v, tensors, f"{path}/{i}")]
                             for i, (k, v) in enumerate(tree.items())]}
    if isinstance(tree, (list, tuple)):
        return {"__list__": [_split(v, tensors, f"{path}/{i}") for i, v in enumerate(tree)],
                "tuple": isinstance(tree, tuple)}
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot store {type(tree).__name__} in training state")


def _join(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict) and _TENSOR in tree:
        return tensors[tree[_TENSOR]]
    if isinstance(tree, dict) and "__dict__" in tree:
        return {_join(k, tensors): _join(v, tensors) for k, v in tree["__dict__"]}
    if isinstance(tree, dict) and "__list__" in tree:
        items = [_join(v, tensors) for v in tree["__list__"]]
        return tuple(items) if tree["tuple"] else items
    return tree


def save_state(state: dict[str, Any], directory: str | Path) -> None:
    """Save a nested dict of tensors and plain values; the JSON is written last and marks it complete."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    structure = _split(state, tensors, "s")
    with atomic_path(d / "state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json(d / "state.json", structure)


def load_state(directory: str | Path) -> dict[str, Any] | None:
    """The saved state, or None when there is none (or only a half-written one)."""
    d = Path(directory)
    if not (d / "state.json").is_file() or not (d / "state.safetensors").is_file():
        return None
    return _join(read_json(d / "state.json"), load_file(str(d / "state.safetensors")))
