"""Resumable training state in one safetensors file: the tensors, and the structure as JSON in its metadata.

One file written by one rename: a kill leaves the previous state or the new one, never the new weights
under the old epoch count (two files renamed one after the other could).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from edgeres.artifacts import atomic_path
from edgeres.errors import UserInputError

STATE_FILE = "state.safetensors"
_STRUCTURE_KEY = "edgeres_state"
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
    """Save a nested dict of tensors and plain values as one file, atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    structure = _split(state, tensors, "s")
    with atomic_path(d / STATE_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={_STRUCTURE_KEY: json.dumps(structure)})
    (d / "state.json").unlink(missing_ok=True)  # the two-file layout of earlier versions


def load_state(directory: str | Path) -> dict[str, Any] | None:
    """The saved state, or None when there is none (an older two-file state counts as none)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            structure = (f.metadata() or {}).get(_STRUCTURE_KEY)
            if structure is None:
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return _join(json.loads(structure), tensors)
    except (SafetensorError, json.JSONDecodeError, KeyError, OSError) as e:
        raise UserInputError(f"{path}: the saved training state is damaged ({e}); train again without --resume "
                             "into a new --out") from None
