"""Training configuration: typed, validated, saved beside the run."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from edgeres.data import DataConfig
from edgeres.errors import UserInputError
from edgeres.tasks.base import LossConfig
from edgeres.train.device import check_device

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
    betas: tuple[float, float] | None = None  # adam/adamw moment decay rates (None: torch's 0.9, 0.999)
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    patience: int = 0               # early stopping: epochs without val-loss improvement; 0 = off
    balance: str = "none"           # class imbalance: weighted loss or class-balanced sampler
    label_smoothing: float = 0.0
    loss: LossConfig = LossConfig()  # pixel loss, perceptual and adversarial terms (image-to-image)
    weights: str | None = None      # local weight file for transfer learning
    freeze: str | None = None       # freeze stages up to and including this one
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    threads: int | None = None
    resume: bool = False
    device: str = "auto"            # auto, cpu, cuda or cuda:N; auto takes a GPU when there is one
    amp: bool | str = False         # mixed precision (edgeres.train.device); "auto": only where native

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("balance", self.balance, BALANCE)
        for name in ("epochs", "batch_size"):
            require_int(name, getattr(self, name), 1)
        require_int("patience", self.patience, 0, " (0 turns early stopping off)")
        require_int("seed", self.seed, 0)
        if self.threads is not None:
            require_int("threads", self.threads, 1, " (or unset for torch's default)")
        require_number("lr", self.lr, 0, open_low=True)
        require_number("weight_decay", self.weight_decay, 0)
        require_number("label_smoothing", self.label_smoothing, 0, 1, open_high=True)
        if self.betas is not None:
            if self.optimizer == "sgd":
                raise UserInputError(f"betas are Adam's moment decay rates; optimizer 'sgd' has none "
                                     f"(got {self.betas})")
            if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
                raise UserInputError(f"betas must be two numbers, e.g. 0.5,0.999; got {self.betas!r}")
            object.__setattr__(self, "betas", tuple(self.betas))
            for b in self.betas:
                require_number("each of betas", b, 0, 1, open_high=True)
        if not isinstance(self.loss, LossConfig):
            raise UserInputError(f"loss must be an edgeres.tasks.LossConfig, e.g. LossConfig(pixel='l1'); "
                                 f"got {self.loss!r}")
        check_device(self.device)
        if not (isinstance(self.amp, bool) or self.amp == "auto"):
            raise UserInputError(f"amp must be true, false or 'auto', got {self.amp!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data"] = self.data.to_dict()
        return d

    @property
    def out_dir(self) -> Path:
        return Path(self.out)


def require_int(field: str, value: Any, least: int, note: str = "") -> None:
    """Refuse anything but an integer >= `least` (a bool is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserInputError(f"{field} must be an integer >= {least}{note}, got {value!r}")


def require_number(field: str, value: Any, low: float, high: float | None = None, *,
                   open_low: bool = False, open_high: bool = False) -> None:
    """Refuse anything but a finite number in the interval from `low` to `high` (None: unbounded)."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if open_low else value >= low)
          and (high is None or (value < high if open_high else value <= high)))
    if not ok:
        if high is None:
            wanted = f"{'>' if open_low else '>='} {low}"
        else:
            wanted = f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise UserInputError(f"{field} must be a finite number {wanted}, got {value!r}")


def require_bool(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise UserInputError(f"{field} must be true or false, got {value!r}")


def _choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserInputError(f"{field} must be one of {list(allowed)}, got {value!r}")
