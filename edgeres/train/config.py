"""Training configuration: typed, validated, saved beside the run."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgeres.data import DataConfig
from edgeres.errors import UserInputError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "plateau", "none")
BALANCE = ("none", "loss", "sampler")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: str
    data: DataConfig
    out: str
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    patience: int = 0               # early stopping: epochs without val-loss improvement; 0 = off
    balance: str = "none"           # class imbalance: weighted loss or class-balanced sampler
    label_smoothing: float = 0.0
    weights: str | None = None      # local weight file for transfer learning
    freeze: str | None = None       # freeze stages up to and including this one
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    threads: int | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("balance", self.balance, BALANCE)
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserInputError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise UserInputError(f"lr must be positive, got {self.lr}")
        if self.patience < 0:
            raise UserInputError(f"patience must be >= 0 (0 turns early stopping off), got {self.patience}")
        if not 0 <= self.label_smoothing < 1:
            raise UserInputError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data"] = self.data.to_dict()
        return d

    @property
    def out_dir(self) -> Path:
        return Path(self.out)


def _choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserInputError(f"{field} must be one of {list(allowed)}, got {value!r}")
