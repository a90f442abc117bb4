"""What a task gives the stages: its data, loss, how a batch is scored, how outputs become predictions, metrics,
the comparator export validation uses, the gate's evidence and the report's metric columns.

A stage asks `get_task(meta.task)` for these and never asks which task it serves (MMDeploy's codebase
tasks work the same way). This module imports no torch: the report and readers of exported files use tasks.
"""
from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import numpy as np

from edgeres.errors import UserInputError

if TYPE_CHECKING:
    import PIL.Image
    import torch

#: criterion(outputs, targets, images) -> loss; distillation passes one that also asks a teacher.
Criterion = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


PIXEL_LOSSES = ("mse", "l1")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Training-loss choices for a task that offers them (`Task.loss_options`; image-to-image): the pixel loss,
    a perceptual term on VGG-16 features from a local weight file, a pix2pix patch-discriminator term."""

    pixel: str = "mse"
    perceptual: float = 0.0             # weight of the VGG-16 feature loss (0: off)
    perceptual_weights: str | None = None  # torchvision's VGG-16 weight file (vgg16-397923af.pth) it needs
    adversarial: float = 0.0            # weight of the generator's adversarial loss (0: no discriminator)
    discriminator_lr: float = 2e-4      # the discriminator's Adam, betas (0.5, 0.999), as pix2pix trains it

    def __post_init__(self) -> None:
        if self.pixel not in PIXEL_LOSSES:
            raise UserInputError(f"loss must be one of {', '.join(PIXEL_LOSSES)}, got {self.pixel!r}")
        for name in ("perceptual", "adversarial", "discriminator_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise UserInputError(f"{name} must be a number >= 0, got {value!r}")
        if self.discriminator_lr == 0:
            raise UserInputError("discriminator_lr must be > 0")
        if self.perceptual and not self.perceptual_weights:
            raise UserInputError("a perceptual loss needs VGG-16 weights, which are not downloaded: pass "
                                 "torchvision's vgg16-397923af.pth with --perceptual-weights FILE "
                                 "(perceptual_weights: in a recipe)")

    @property
    def is_default(self) -> bool:
        return self == LossConfig(discriminator_lr=self.discriminator_lr)


@dataclasses.dataclass(frozen=True)
class Paired:
    """Two classifiers' per-image outcomes on the same test images."""

    labels: np.ndarray
    baseline: np.ndarray  # bool per image: the baseline got it right
    candidate: np.ndarray


@dataclasses.dataclass(frozen=True)
class MetricDelta:
    """A metric the gate limits, under both models on the same test images: fractions, and the change in points."""

    key: str  # its key in metrics.json: "accuracy", "map50"
    name: str  # how checks and reasons call it: "accuracy", "mAP@0.5"
    baseline: float
    candidate: float
    delta_points: float
    test: str | None = None  # a paired significance test reported beside the bootstrap, e.g. "McNemar"
    p_value: float | None = None
    detail: str | None = None  # what a failure reason adds, e.g. "20 images newly wrong, 0 newly right"
    #: The unit of delta_points (and of the gate's max_drop for it). "points": values are fractions shown in
    #: percent; any other unit (e.g. "dB"): values are shown as they are, in that unit.
    unit: str = "points"


@dataclasses.dataclass(frozen=True)
class ClassDelta:
    """A per-class metric under both models; None when the test set holds nothing of the class."""

    name: str
    support: int
    baseline: float | None
    candidate: float | None
    delta_points: float | None


@dataclasses.dataclass
class GateEvidence:
    """What a task hands the gate about two models' predictions on the same n test images.

    The gate resamples image indices (the same rows for both models) and asks `resample` for the metrics'
    changes on each row; the percentile interval of those is the paired-bootstrap CI.
    """

    n: int
    metrics: list[MetricDelta]  # each is limited by GateConfig.max_drop; the first is the headline
    resample: Callable[[np.ndarray], np.ndarray]  # (B, n) image indices -> (B, len(metrics)) deltas in points
    per_class: list[ClassDelta]
    class_metric: str  # what per_class holds, as reasons name it: "recall", "AP@0.5:0.95"
    support_unit: str  # what a class's support counts: "images", "boxes"
    constant: bool = False  # both models' per-image outcomes are equal, so every resampled delta is 0
    # Figures GateResult has always carried for this task (classification: accuracies and McNemar counts)
    legacy: dict[str, Any] = dataclasses.field(default_factory=dict)


def nonfinite_reasons(stats: dict[str, Any]) -> list[str]:
    """Export validation's first verdict for any task: NaN or inf outputs on either side (counted by its
    `compare` as `nonfinite_reference` / `nonfinite_candidate`) fail, since agreement on NaN is no agreement."""
    sides = (("reference (PyTorch)", "nonfinite_reference"), ("exported", "nonfinite_candidate"))
    return [f"{who} outputs hold {stats[key]} NaN/inf values" for who, key in sides if stats.get(key)]


class Task(abc.ABC):
    """One kind of model output (class logits, boxes, images) and everything a stage does with it."""

    name: ClassVar[str]
    #: The headline metric: its key in metrics.json and in training history (`train_<metric>`), a fraction.
    metric: ClassVar[str]
    #: Whether an export can put this task's postprocessing (NMS) into the graph (`ExportConfig.nms`).
    graph_nms: ClassVar[bool] = False
    #: Per-split metrics copied into model.json and a compression record.
    summary_keys: ClassVar[tuple[str, ...]]
    #: Report summary headers: the headline metric in percent, and its change from the baseline in points.
    report_columns: ClassVar[tuple[str, str]]
    #: How the report shows the headline: value x scale, in `headline_unit` (what a chart's axis names), and
    #: its changes in `delta_unit`. A fraction shows in percent and changes in points; PSNR in dB both ways.
    headline_scale: ClassVar[float] = 100.0
    headline_unit: ClassVar[str] = "%"
    delta_unit: ClassVar[str] = "points"
    #: Headers of `table_columns` that `edgeres compare` tabulates for this task's models. Empty: compare gives it
    #: no table of its own (a classifier's table is compare's, with PR AUC and calibration from its probabilities).
    compare_columns: ClassVar[tuple[str, ...]] = ()
    #: The task trains with a LossConfig's choices (pixel loss, perceptual and adversarial terms).
    loss_options: ClassVar[bool] = False

    # --- data and model ---
    @abc.abstractmethod
    def load_data(self, config: Any) -> Any:
        """The task's data bundle for an `edgeres.data.DataConfig` (splits, batches, labels, class names)."""

    def model_kwargs(self, bundle: Any) -> dict[str, Any]:
        """Constructor arguments the data decides (e.g. a detector's anchors), for `models.create`."""
        return {}

    # --- training (torch tensors) ---
    @abc.abstractmethod
    def criterion(self, bundle: Any, device: Any = "cpu", *, model: Any = None, label_smoothing: float = 0.0,
                  class_weighted: bool = False, loss: LossConfig | None = None) -> Criterion:
        """The training loss; model: the model trained (a loss may read it, e.g. anchors); class_weighted: weigh
        classes by inverse training-split frequency; loss: choices a task with `loss_options` offers."""

    def refuse_loss_options(self, loss: LossConfig | None) -> None:
        """A task without `loss_options` refuses any choice but the default, naming it."""
        if loss is not None and not loss.is_default and not self.loss_options:
            raise UserInputError(f"loss, perceptual and adversarial are image-to-image training options; this is a "
                                 f"{self.name} model (got {loss})")

    @abc.abstractmethod
    def loss_sum(self, outputs: Any, targets: "torch.Tensor", model: Any = None) -> "torch.Tensor":
        """The plain validation loss, summed over the batch."""

    @abc.abstractmethod
    def soft_loss(self, student: Any, teacher: Any, temperature: float) -> "torch.Tensor":
        """How a student's raw outputs copy a teacher's (knowledge distillation), softened by `temperature`."""

    @abc.abstractmethod
    def batch_score(self, outputs: Any, targets: "torch.Tensor") -> float | None:
        """The headline metric summed over the batch's samples (divided by the count, it is the metric), or None
        when the metric is not a sum over samples (mAP): the loop then scores a split only at its end."""

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

    def relate_splits(self, metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """What one split's metrics take from another's (a binary classifier's threshold is chosen on val and
        applied to test); `metrics` is {split: metrics}. Nothing by default."""
        return metrics

    @abc.abstractmethod
    def write_plots(self, metrics: dict[str, dict[str, Any]], out: Path, class_names: list[str]) -> list[Path]:
        """Plots of each split's metrics into `out`; returns the files written."""

    def write_examples(self, bundle: Any, predictions: Any, out: Path, split: str = "test") -> list[Path]:
        """Pictures of predictions on the first images of `split` (e.g. boxes drawn on test images); none by
        default."""
        return []

    # --- predict on a user's images (numpy and PIL) ---
    @abc.abstractmethod
    def prepare(self, image: "PIL.Image.Image", meta: Any) -> tuple[np.ndarray, Any]:
        """One image to the model's input (CHW float32, prepared as the training data was) and what `describe`
        needs to map the results back onto the image."""

    @abc.abstractmethod
    def describe(self, outputs: Mapping[str, np.ndarray], contexts: list[Any], class_names: list[str]) -> list[dict]:
        """A batch's named outputs to one JSON-ready prediction per image, in the image's own coordinates."""

    @abc.abstractmethod
    def draw(self, image: "PIL.Image.Image", prediction: dict[str, Any]) -> "PIL.Image.Image":
        """A copy of `image` with `prediction` drawn on it."""

    def predicted_image(self, image: "PIL.Image.Image",
                        prediction: dict[str, Any]) -> tuple["PIL.Image.Image", dict[str, Any]]:
        """What `edgeres predict` writes for one image: the picture (by default `image` with the prediction drawn
        on it) and the prediction's JSON record (by default the prediction itself)."""
        return self.draw(image, prediction), prediction

    # --- export validation ---
    @abc.abstractmethod
    @abc.abstractmethod
    def deploy_fields(self, output_names: list[str]) -> dict[str, Any]:
        """What a deploy bundle's `infer.py` must know to feed the model and read its outputs as `describe` does:
        {"input": {"resize": "resize" | "letterbox", ...}, "postprocess": {...}}."""

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
    def gate_evidence(self, baseline: Any, candidate: Any, class_names: list[str]) -> GateEvidence:
        """The gate's evidence from two models' predictions of one split, refusing predictions that are not paired
        (other images, other order, other ground truth)."""

    def table_columns(self, metrics: dict[str, Any]) -> list[tuple[str, Any]]:
        """(header, value) pairs of one split's metrics (or its `summary`) for a command's table."""
        return [(key, metrics.get(key)) for key in self.summary_keys]

    def headline(self, metrics: dict[str, Any] | None) -> float | None:
        """The headline metric (a fraction) from one split's metrics, or None when it was not measured."""
        value = (metrics or {}).get(self.metric)
        return float(value) if value is not None else None

    def summary(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The metrics of one split worth keeping beside the weights."""
        return {k: metrics[k] for k in self.summary_keys}
