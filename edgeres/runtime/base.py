"""The Runner interface every backend implements: numpy NCHW float32 in, numpy outputs by name out."""
from __future__ import annotations

import abc
import dataclasses
from typing import Any

import numpy as np

from edgeres.errors import UserInputError
from edgeres.meta import ModelMeta

#: A model's outputs by name, as the exported graph names them ("logits" for a classifier), like Polygraphy's runners.
Outputs = dict[str, np.ndarray]


@dataclasses.dataclass
class RunnerInfo:
    """What actually executes: reported, not requested."""

    backend: str
    precision: str
    device: str
    threads: int | None
    input_shape: tuple[int | None, int, int, int]  # None batch means any batch size
    path: str
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Runner(abc.ABC):
    """One model under one runtime. Call it with a normalised float32 NCHW batch."""

    info: RunnerInfo
    meta: ModelMeta

    def __call__(self, batch: np.ndarray) -> Outputs:
        return self.run(self.check_input(batch))

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> Outputs:
        """Run a batch already checked by `check_input`; return the model's raw outputs by name."""

    def check_input(self, batch: np.ndarray) -> np.ndarray:
        """Refuse a wrong dtype, rank, channel count or size with a message naming the expected shape."""
        n, c, h, w = self.info.input_shape
        expected = f"({n if n is not None else 'N'}, {c}, {h}, {w}) float32"
        if not isinstance(batch, np.ndarray):
            raise UserInputError(f"input must be a numpy array of shape {expected}, got {type(batch).__name__}")
        if batch.dtype != np.float32:
            raise UserInputError(f"input dtype must be float32 (shape {expected}), got {batch.dtype}")
        if batch.ndim != 4:
            raise UserInputError(f"input must be 4-D NCHW {expected}, got shape {tuple(batch.shape)}")
        if batch.shape[1:] != (c, h, w) or (n is not None and batch.shape[0] != n):
            raise UserInputError(f"input shape must be {expected}, got {tuple(batch.shape)}")
        return np.ascontiguousarray(batch)


def run_any_batch(runner: Runner, batch: np.ndarray) -> Outputs:
    """Outputs for every row of `batch`; a fixed-batch runner gets chunks of its size, the last one padded."""
    fixed = runner.info.input_shape[0]
    if fixed is None or len(batch) == fixed:
        return runner(batch)
    chunks = []
    for start in range(0, len(batch), fixed):
        chunk = batch[start:start + fixed]
        pad = np.repeat(chunk[-1:], fixed - len(chunk), axis=0)  # padding rows' outputs are dropped
        chunks.append({name: out[: len(chunk)] for name, out in runner(np.concatenate([chunk, pad])).items()})
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
