"""What a task gives the stages: its loss, how a batch is scored, how outputs become predictions, metrics,
the comparator export validation uses, the gate's paired statistic and the report's metric columns.

A stage asks `get_task(meta.task)` for these and never asks which task it serves (MMDeploy's codebase
tasks work the same way). This module imports no torch: the report and readers of exported files use tasks.
"""
from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import numpy as np

if TYPE_CHECKING:
    import torch

#: criterion(outputs, targets, images) -> loss; distillation passes one that also asks a teacher.
Criterion = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


@dataclasses.dataclass(frozen=True)
class Paired:
    """Two models' per-image outcomes on the same test images: what the gate resamples and counts."""

    labels: np.ndarray
    baseline: np.ndarray  # bool per image: the baseline got it right
    candidate: np.ndarray


class Task(abc.ABC):
    """One kind of model output (class logits, boxes, images) and everything a stage does with it."""

    name: ClassVar[str]
    #: The headline metric: its key in metrics.json and in training history (`train_<metric>`), a fraction.
    metric: ClassVar[str]
    #: Per-split metrics copied into model.json and a compression record.
    summary_keys: ClassVar[tuple[str, ...]]
    #: Report summary headers: the headline metric in percent, and its change from the baseline in points.
    report_columns: ClassVar[tuple[str, str]]

    # --- training (torch tensors) ---
    @abc.abstractmethod
    def criterion(self, bundle: Any, device: Any = "cpu", *, label_smoothing: float = 0.0,
                  class_weighted: bool = False) -> Criterion:
        """The training loss; class_weighted: weigh classes by inverse training-split frequency."""

    @abc.abstractmethod
    def loss_sum(self, outputs: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
        """The plain validation loss, summed over the batch."""

    @abc.abstractmethod
    def batch_score(self, outputs: "torch.Tensor", targets: "torch.Tensor") -> float:
        """The headline metric summed over the batch's samples (divided by the count, it is the metric)."""

    # --- inference on any runtime (numpy) ---
    @abc.abstractmethod
    def postprocess(self, outputs: Mapping[str, np.ndarray]) -> Any:
        """A batch's raw outputs, by name as any Runner returns them, to its predictions."""

    @abc.abstractmethod
    def collect(self, labels: list[np.ndarray], predictions: list[Any]) -> Any:
        """One split's predictions, from its batches' labels and postprocessed outputs, in dataset order."""

    @abc.abstractmethod
    def metrics(self, predictions: Any, class_names: list[str]) -> dict[str, Any]:
        """The metrics of one split's predictions (JSON-ready)."""

    @abc.abstractmethod
    def write_plots(self, metrics: dict[str, dict[str, Any]], out: Path, class_names: list[str]) -> list[Path]:
        """Plots of each split's metrics into `out`; returns the files written."""

    # --- export validation ---
    @abc.abstractmethod
    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Statistics of an exported model's named outputs against the source model's on the same inputs."""

    @abc.abstractmethod
    def tolerance(self, precision: str, *, simulated: bool = False) -> Any:
        """What an export at `precision` must meet (a dataclass); simulated: the reference fake-quantizes."""

    @abc.abstractmethod
    def judge(self, stats: dict[str, Any], tolerance: Any) -> list[str]:
        """Reasons `stats` fail `tolerance`; empty when the export is valid."""

    # --- gate and report ---
    @abc.abstractmethod
    def paired(self, baseline: Any, candidate: Any, class_names: list[str]) -> Paired:
        """Per-image outcomes of two models' predictions, refusing predictions that are not paired."""

    def headline(self, metrics: dict[str, Any] | None) -> float | None:
        """The headline metric (a fraction) from one split's metrics, or None when it was not measured."""
        value = (metrics or {}).get(self.metric)
        return float(value) if value is not None else None

    def summary(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The metrics of one split worth keeping beside the weights."""
        return {k: metrics[k] for k in self.summary_keys}
