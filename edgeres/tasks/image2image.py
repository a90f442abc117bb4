"""Image-to-image: denoise, inpaint, super-resolve. The model outputs an image the size of its input; PSNR
is the headline, measured beside the input's own PSNR so the gain in dB shows; MSE or L1 trains it."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from edgeres.errors import UserInputError
from edgeres.tasks import image2image_predict
from edgeres.tasks.base import Criterion, GateEvidence, LossConfig, MetricDelta, Task
from edgeres.tasks.image2image_metrics import (IMAGE, QAT_TOLERANCE, TOLERANCES, ImagePredictions, Tolerance,
                                               compare_images, image_metrics, image_output, judge, per_image_psnr,
                                               per_image_ssim, psnr_from_mse)

if TYPE_CHECKING:
    import torch

EXAMPLES = 8  # images in the examples grid


class ImageToImage(Task):
    """Paired image restoration: inputs and outputs in [0, 1], same size and channels.

    Labels are (N, 2, C, H, W): the target and the input the model was given (edgeres.data.pairs), so the
    metrics score the input too. Headline and history metric: PSNR in dB (not a fraction like the others).
    """

    name = "image2image"
    metric = "psnr"
    summary_keys = ("psnr", "ssim", "psnr_gain", "input_psnr", "mse")
    report_columns = ("PSNR dB", "Δ PSNR (dB)")
    headline_scale, headline_unit, delta_unit = 1.0, "dB", "dB"
    compare_columns = ("MSE", "PSNR dB", "SSIM", "gain dB")
    loss_options = True

    def load_data(self, config: Any) -> Any:
        """A PairBundle: paired input/target folders, or a built-in set or image folder degraded by
        `config.pairs` (default denoise) with noise std `config.sigma`."""
        from edgeres.data.pairs import load_pair_data  # the data package imports torch

        return load_pair_data(config, getattr(config, "pairs", None), getattr(config, "sigma", 0.1))

    # torch is imported by the loss methods alone, as in Classification.
    def criterion(self, bundle: Any, device: Any = "cpu", *, model: Any = None, label_smoothing: float = 0.0,
                  class_weighted: bool = False, loss: LossConfig | None = None) -> Criterion:
        """Per-pixel MSE or L1 of the output against the target, plus `loss`'s perceptual and adversarial terms
        (edgeres.tasks.image2image_losses) when it weighs them."""
        if label_smoothing or class_weighted:
            raise UserInputError("image-to-image training takes neither label smoothing nor class-weighted loss "
                                 f"(got label_smoothing={label_smoothing}, class_weighted={class_weighted}); "
                                 "leave them at their defaults")
        loss = loss or LossConfig()
        pixel = _pixel_loss(loss.pixel)
        if not (loss.perceptual or loss.adversarial):
            return lambda outputs, targets, images: pixel(outputs, _target(targets))
        from edgeres.tasks.image2image_losses import GeneratorLoss

        return GeneratorLoss(pixel, loss, bundle.in_chans, bundle.img_size)

    def loss_sum(self, outputs: "torch.Tensor", targets: "torch.Tensor", model: Any = None) -> "torch.Tensor":
        """The per-image MSE, summed over the batch: the best epoch is the one of the best val PSNR, whatever
        loss trained it."""
        return _pixel_loss("mse")(outputs, _target(targets)) * outputs.shape[0]

    def soft_loss(self, student: "torch.Tensor", teacher: "torch.Tensor", temperature: float) -> "torch.Tensor":
        """The student's image against the teacher's (MSE); an image has no temperature to soften."""
        import torch.nn.functional as F

        return F.mse_loss(student.float(), teacher.float())

    def batch_score(self, outputs: "torch.Tensor", targets: "torch.Tensor") -> float:
        """PSNR (dB) of each clamped output image, summed over the batch."""
        diff = outputs.detach().float().clamp(0, 1) - _target(targets).float()
        mse = (diff * diff).flatten(1).mean(1).cpu().numpy()
        return float(psnr_from_mse(mse).sum()) if len(mse) else 0.0

    def postprocess(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The "image" output, clipped to [0, 1] (the exported graph clamps already; a runtime may round past)."""
        return np.clip(image_output(outputs), 0.0, 1.0)

    def collect(self, labels: list[np.ndarray], predictions: list[np.ndarray]) -> ImagePredictions:
        pairs = np.concatenate([_checked_labels(y) for y in labels])
        outputs = np.concatenate(predictions).astype(np.float32)
        if outputs.shape != pairs[:, 0].shape:
            raise UserInputError(f"outputs have shape {outputs.shape}, targets {pairs[:, 0].shape}; an "
                                 "image-to-image model returns an image the size of its input")
        return ImagePredictions(pairs[:, 0], pairs[:, 1], outputs)

    def metrics(self, predictions: ImagePredictions, class_names: list[str]) -> dict[str, Any]:
        return image_metrics(predictions)

    def write_plots(self, metrics: dict[str, dict[str, Any]], out: Path, class_names: list[str]) -> list[Path]:
        """None: the examples grid shows what the numbers mean."""
        return []

    def write_examples(self, bundle: Any, predictions: ImagePredictions, out: Path, split: str = "test",
                       count: int = EXAMPLES) -> list[Path]:
        """A grid of the split's first images: input | output | target per row."""
        n = min(count, len(predictions))
        return [image2image_predict.example_grid(predictions.inputs[:n], predictions.outputs[:n],
                                                 predictions.targets[:n], out / f"examples_{split}.png")]

    def prepare(self, image: Any, meta: Any) -> tuple[np.ndarray, Any]:
        return image2image_predict.prepare(image, meta)

    def describe(self, outputs: Mapping[str, np.ndarray], contexts: list[Any], class_names: list[str]) -> list[dict]:
        return image2image_predict.describe(outputs, contexts, class_names)

    def draw(self, image: Any, prediction: dict[str, Any]) -> Any:
        return image2image_predict.draw(image, prediction)

    def predicted_image(self, image: Any, prediction: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The restored image itself at the input's size; the JSON keeps its statistics, not its pixels."""
        return image2image_predict.output_image(image, prediction)

    def deploy_fields(self, output_names: list[str]) -> dict[str, Any]:
        return {"input": {"resize": "resize"}, "postprocess": {"output": IMAGE, "range": [0.0, 1.0]}}

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """PSNR of the exported output against PyTorch's, over the batch and for its worst image."""
        return compare_images(reference, candidate)

    def tolerance(self, precision: str, *, simulated: bool = False) -> Tolerance:
        return QAT_TOLERANCE if simulated else TOLERANCES[precision]

    def judge(self, stats: dict[str, Any], tolerance: Tolerance) -> list[str]:
        return judge(stats, tolerance)

    def gate_evidence(self, baseline: ImagePredictions, candidate: ImagePredictions,
                      class_names: list[str]) -> GateEvidence:
        """Mean PSNR change in dB (its MetricDelta unit) and SSIM change in points (x100), per image paired."""
        _check_paired(baseline, candidate)
        psnr_b, psnr_c = per_image_psnr(baseline.outputs, baseline.targets), per_image_psnr(candidate.outputs,
                                                                                         candidate.targets)
        ssim_b, ssim_c = per_image_ssim(baseline.outputs, baseline.targets), per_image_ssim(candidate.outputs,
                                                                                         candidate.targets)
        diffs = np.stack([psnr_c - psnr_b, 100.0 * (ssim_c - ssim_b)], axis=1)  # (n, 2)
        n = len(diffs)
        metrics = [MetricDelta("psnr", "PSNR (dB)", float(psnr_b.mean()), float(psnr_c.mean()),
                               float(diffs[:, 0].mean()), detail=_detail(psnr_b, psnr_c), unit="dB"),
                   MetricDelta("ssim", "SSIM", float(ssim_b.mean()), float(ssim_c.mean()), float(diffs[:, 1].mean()))]
        return GateEvidence(n, metrics, lambda idx: diffs[idx].mean(axis=1), [], "PSNR (dB)", "images",
                            constant=np.array_equal(baseline.outputs, candidate.outputs))

    def table_columns(self, metrics: dict[str, Any]) -> list[tuple[str, Any]]:
        return [("PSNR dB", metrics["psnr"]), ("input PSNR dB", metrics["input_psnr"]),
                ("gain dB", metrics["psnr_gain"]), ("SSIM", metrics["ssim"]), ("MSE", metrics["mse"])]


def _pixel_loss(name: str) -> Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]:
    """The mean per-pixel MSE or L1 of two image batches, in float32."""
    import torch.nn.functional as F

    fn = F.mse_loss if name == "mse" else F.l1_loss
    return lambda a, b: fn(a.float(), b.float())


def _target(targets: "torch.Tensor") -> "torch.Tensor":
    """The target images of a label batch (N, 2, C, H, W) = [target, input]."""
    return targets[:, 0] if targets.ndim == 5 else targets


def _checked_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim != 5 or labels.shape[1] != 2:
        raise UserInputError(f"image-to-image labels have shape {labels.shape}; expected (N, 2, C, H, W): each "
                             "image's target and input")
    return labels


def _detail(baseline: np.ndarray, candidate: np.ndarray) -> str:
    worse = int((candidate < baseline - 0.1).sum())
    better = int((candidate > baseline + 0.1).sum())
    return f"{worse} images lost more than 0.1 dB, {better} gained more"


def _check_paired(baseline: ImagePredictions, candidate: ImagePredictions) -> None:
    """Refuse predictions of other images, in another order, or with other targets or inputs."""
    if len(baseline) == 0:
        raise UserInputError("no test images: the gate needs predictions on at least one image")
    if len(baseline) != len(candidate):
        raise UserInputError(f"baseline has outputs for {len(baseline)} images, candidate {len(candidate)}; "
                             "both must be evaluated on the same test images")
    for what in ("targets", "inputs"):
        a, b = getattr(baseline, what), getattr(candidate, what)
        if a.shape != b.shape or not np.array_equal(a, b):
            raise UserInputError(f"the {what} differ between baseline and candidate; both models must be evaluated "
                                 "on the same test images in the same order")
