"""PyTorch eager backend: runs an edgeres checkpoint's inference module (what its exports hold without NMS)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeres.checkpoint import load_checkpoint
from edgeres.errors import UserInputError
from edgeres.models.base import named_outputs
from edgeres.runtime.base import Outputs, Runner, RunnerInfo


class TorchRunner(Runner):
    def __init__(self, path: str | Path, precision: str | None = None, threads: int | None = None):
        if precision not in (None, "fp32"):
            raise UserInputError(f"the torch backend runs fp32 only, got precision={precision!r}")
        if threads is not None:
            torch.set_num_threads(threads)
        self.model, self.meta = load_checkpoint(path)
        self.module = self.model.inference_module().eval()
        self.info = RunnerInfo(
            backend="torch",
            precision="fp32",
            device="cpu",
            threads=torch.get_num_threads(),
            input_shape=(None, *self.meta.input_shape),
            path=str(path),
            versions={"torch": torch.__version__},
        )

    def run(self, batch: np.ndarray) -> Outputs:
        with torch.inference_mode():
            return {name: out.numpy() for name, out in named_outputs(self.module, torch.from_numpy(batch)).items()}
