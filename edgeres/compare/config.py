"""What `edgeres compare` trains and measures: one typed configuration for the CLI, the recipe and Python users."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from edgeres.data import DataConfig
from edgeres.errors import UserInputError
from edgeres.tasks.base import LossConfig
from edgeres.train.config import TrainConfig, require_int

# A classifier's metrics the comparison table reports beside PR AUC and calibration (from class probabilities).
# A task that does not list them among its summary keys is compared on its own table columns instead.
TASK_METRICS = ("accuracy", "macro_f1", "auc")


@dataclasses.dataclass(frozen=True)
class LatencyConfig:
    """How each trained model is timed: torch Runner, batch 1, `rounds` interleaved rounds of `runs` calls."""

    rounds: int = 5
    runs: int = 20              # timed calls per variant per round
    warmup: int = 5             # untimed calls per variant before the first round

    def __post_init__(self) -> None:
        require_int("rounds", self.rounds, 1)
        require_int("runs", self.runs, 1)
        require_int("warmup", self.warmup, 0)


@dataclasses.dataclass(frozen=True)
class ImageScoring:
    """Scores an image-to-image comparison adds from local weight files (nothing is downloaded): LPIPS on a
    torchvision backbone file, FID and KID on torch-fidelity's Inception-v3 file or on an edgeres classification
    checkpoint's features (not comparable with published Inception FID)."""

    lpips_weights: str | None = None
    inception_weights: str | None = None
    fid_features: str | None = None     # a classification checkpoint folder

    def __post_init__(self) -> None:
        for name in ("lpips_weights", "inception_weights", "fid_features"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, str(value))
        if self.inception_weights is not None and self.fid_features is not None:
            raise UserInputError("give inception_weights or fid_features for FID/KID, not both")

    @property
    def given(self) -> bool:
        return any(v is not None for v in dataclasses.asdict(self).values())


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Variants trained on the same data, split, seed and training settings, into `out`/models/<variant>."""

    models: tuple[str, ...]
    data: DataConfig
    out: str
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adamw"
    betas: tuple[float, float] | None = None
    scheduler: str = "cosine"
    patience: int = 0
    balance: str = "none"
    loss: LossConfig = LossConfig()
    weights: Mapping[str, str] = dataclasses.field(default_factory=dict)  # variant -> local weight file
    freeze: str | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool | str = False
    threads: int | None = None      # CPU threads for torch, training and timing alike (None: torch's default)
    latency: LatencyConfig = LatencyConfig()
    scoring: ImageScoring = ImageScoring()  # LPIPS, FID and KID columns for image-to-image models

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "weights", dict(self.weights))
        if not self.models:
            raise UserInputError("models: name at least one model variant to compare (`edgeres models` lists them)")
        twice = sorted({m for m in self.models if self.models.count(m) > 1})
        if twice:
            raise UserInputError(f"models: each variant once, got {', '.join(twice)} more than once")
        check_models(self.models)
        check_scoring(self.models, self.scoring)
        strays = sorted(set(self.weights) - set(self.models))
        if strays:
            raise UserInputError(f"weights: {', '.join(strays)} is not among the compared models "
                                 f"({', '.join(self.models)}); give NAME=FILE for a compared model")
        for m in self.models:
            self.train_config(m)  # the training settings are checked once, here, by TrainConfig itself

    def train_config(self, model: str, resume: bool = False) -> TrainConfig:
        """The TrainConfig of variant `model`: the shared settings, its own weights and output folder."""
        return TrainConfig(model=model, data=self.data, out=str(self.variant_dir(model)), epochs=self.epochs,
                           batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer, betas=self.betas,
                           scheduler=self.scheduler, patience=self.patience, balance=self.balance, loss=self.loss,
                           weights=self.weights.get(model), freeze=self.freeze, seed=self.seed, resume=resume,
                           threads=self.threads, device=self.device, amp=self.amp)

    def variant_dir(self, model: str) -> Path:
        return Path(self.out) / "models" / model

    def settings(self) -> dict[str, Any]:
        """What decides the trained weights besides the model name: a rerun into `out` must match it."""
        d = dataclasses.asdict(self)
        d["data"] = self.data.to_dict()
        for key in ("models", "out", "threads", "latency", "scoring"):
            d.pop(key)
        return d


def check_models(models: tuple[str, ...]) -> None:
    """Refuse unknown names (listing the known ones) and models of different tasks, which share no metric."""
    from edgeres.models import list_models, model_task
    from edgeres.tasks import get_task

    known = list_models()
    unknown = [m for m in models if m not in known]
    if unknown:
        raise UserInputError(f"unknown model {', '.join(map(repr, unknown))}; known models: {', '.join(known)}")
    tasks = {m: get_task(model_task(m)) for m in models}
    for m, task in tasks.items():
        if not (class_figures(task) or task.compare_columns):
            raise UserInputError(f"compare supports classification models and tasks that name their comparison "
                                 f"columns; {m} is a {task.name} model, which names none")
    if len({t.name for t in tasks.values()}) > 1:
        listed = ", ".join(f"{m} ({t.name})" for m, t in tasks.items())
        raise UserInputError(f"compare needs models of one task, whose metrics share a table; got {listed}")


def check_scoring(models: tuple[str, ...], scoring: ImageScoring) -> None:
    """LPIPS, FID and KID score output images against targets: a classifier's table has no place for them."""
    from edgeres.models import model_task
    from edgeres.tasks import get_task

    task = get_task(model_task(models[0]))
    if scoring.given and class_figures(task):
        raise UserInputError(f"LPIPS, FID and KID (--lpips-weights, --inception-weights, --fid-features; in a "
                             f"recipe lpips_weights, inception_weights, fid_features) score image-to-image outputs; "
                             f"{models[0]} is a {task.name} model: leave them out")


def class_figures(task: Any) -> bool:
    """Whether the table holds a classifier's figures (its TASK_METRICS, PR AUC, calibration, per-class recall);
    otherwise it holds the task's own `table_columns`."""
    return set(TASK_METRICS) <= set(task.summary_keys)
