"""Image-to-image metrics: MSE, PSNR and SSIM per image (torchmetrics), of the model's output and of its input
(the "do nothing" baseline), and the export comparator: PSNR of an exported model's output against PyTorch's."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from edgeres.errors import UserInputError
from edgeres.tasks.base import nonfinite_reasons

IMAGE = "image"  # the output every edgeres image-to-image model names
DATA_RANGE = 1.0  # images are compared in [0, 1]
#: PSNR of identical images is infinite; it is reported as this (a float32 rounding difference is ~140 dB).
PSNR_CAP = 100.0
SSIM_KERNEL = 11  # torchmetrics' default Gaussian window, narrowed for images smaller than it


@dataclasses.dataclass
class ImagePredictions:
    """One split's targets, the inputs the model was given and its outputs, (N, C, H, W) in [0, 1], in order."""

    targets: np.ndarray
    inputs: np.ndarray
    outputs: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


def image_output(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The "image" output (N, C, H, W) of a runner's named outputs."""
    if IMAGE not in outputs:
        raise UserInputError(f"an image-to-image model's output is named {IMAGE!r}; these are named {sorted(outputs)}")
    image = np.asarray(outputs[IMAGE], dtype=np.float32)
    if image.ndim != 4:
        raise UserInputError(f"{IMAGE!r} has shape {image.shape}; expected (N, C, H, W)")
    return image


def per_image_mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return (diff * diff).reshape(len(diff), -1).mean(axis=1)


def psnr_from_mse(mse: np.ndarray | float) -> np.ndarray:
    """10 log10(range² / MSE) in dB, PSNR_CAP where the images are (nearly) identical."""
    mse = np.asarray(mse, np.float64)
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(DATA_RANGE**2 / mse)
    return np.minimum(db, PSNR_CAP)


def per_image_psnr(preds: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """PSNR of each image in dB (torchmetrics' peak_signal_noise_ratio per image), capped at PSNR_CAP."""
    import torch
    from torchmetrics.functional.image import peak_signal_noise_ratio

    p, t = torch.from_numpy(np.asarray(preds, np.float64)), torch.from_numpy(np.asarray(targets, np.float64))
    db = peak_signal_noise_ratio(p, t, data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))
    return np.minimum(np.nan_to_num(db.numpy(), nan=PSNR_CAP, posinf=PSNR_CAP), PSNR_CAP)


def per_image_ssim(preds: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """SSIM of each image (torchmetrics, Gaussian window 11 or the largest odd size the image holds)."""
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    side = min(np.shape(targets)[-2:])
    kernel = min(SSIM_KERNEL, side if side % 2 else side - 1)
    p, t = torch.from_numpy(np.asarray(preds, np.float64)), torch.from_numpy(np.asarray(targets, np.float64))
    ssim = structural_similarity_index_measure(p, t, data_range=DATA_RANGE, kernel_size=kernel,
                                               sigma=1.5 * kernel / SSIM_KERNEL, reduction="none")
    return np.asarray(ssim.numpy(), np.float64).reshape(len(p))


def image_metrics(p: ImagePredictions) -> dict[str, Any]:
    """Mean per-image MSE, PSNR (dB) and SSIM of the outputs and of the inputs, and what the model gained."""
    if len(p) == 0:
        raise UserInputError("no images to score")
    out = {"mse": per_image_mse(p.outputs, p.targets), "psnr": per_image_psnr(p.outputs, p.targets),
           "ssim": per_image_ssim(p.outputs, p.targets)}
    given = {"mse": per_image_mse(p.inputs, p.targets), "psnr": per_image_psnr(p.inputs, p.targets),
             "ssim": per_image_ssim(p.inputs, p.targets)}
    metrics: dict[str, Any] = {"n": len(p)}
    metrics.update({k: float(v.mean()) for k, v in out.items()})
    metrics.update({f"input_{k}": float(v.mean()) for k, v in given.items()})
    metrics["psnr_gain"] = metrics["psnr"] - metrics["input_psnr"]
    metrics["ssim_gain"] = metrics["ssim"] - metrics["input_ssim"]
    metrics["psnr_improved"] = float((out["psnr"] > given["psnr"]).mean())  # share of images made better
    return metrics


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """What an export must meet: its output's PSNR against PyTorch's output, over the validation batch."""

    min_psnr_db: float
    min_image_psnr_db: float  # the worst single image


TOLERANCES = {
    "fp32": Tolerance(min_psnr_db=40.0, min_image_psnr_db=40.0),
    "fp16": Tolerance(min_psnr_db=35.0, min_image_psnr_db=30.0),
    # Measured on a digits denoiser (unet_resnet18, 64 px, 34.4 dB on val): ONNX Runtime 57 dB, OpenVINO 48 dB
    # against PyTorch with the model's keep_float; 29 dB (a 6.5 dB loss on val) when the decoder's last blocks
    # were quantized too, which this refuses.
    "int8": Tolerance(min_psnr_db=35.0, min_image_psnr_db=30.0),
}
# QAT: an INT8 runtime against the fake-quantized torch model; integer kernels requantize unlike the simulation.
QAT_TOLERANCE = TOLERANCES["int8"]


def compare_images(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """PSNR (dB) of the exported output against the reference: over the batch, the worst image; max abs diff."""
    ref, cand = image_output(reference), image_output(candidate)
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape}, candidate {cand.shape}")
    nonfinite = {"nonfinite_reference": int((~np.isfinite(ref)).sum()),
                 "nonfinite_candidate": int((~np.isfinite(cand)).sum())}
    if any(nonfinite.values()):
        return {"psnr_db": None, "min_image_psnr_db": None, "max_abs_diff": None, **nonfinite}
    mse = per_image_mse(cand, ref)
    return {"psnr_db": float(psnr_from_mse(mse.mean())), "min_image_psnr_db": float(psnr_from_mse(mse.max())),
            "max_abs_diff": float(np.abs(cand.astype(np.float64) - ref).max()), **nonfinite}


def judge(stats: dict[str, Any], tolerance: Tolerance) -> list[str]:
    """Reasons the exported output is too far from PyTorch's; empty when it is close enough."""
    reasons = nonfinite_reasons(stats)
    if reasons:
        return reasons
    if stats["psnr_db"] < tolerance.min_psnr_db:
        reasons.append(f"output PSNR against PyTorch {stats['psnr_db']:.1f} dB < {tolerance.min_psnr_db:g} dB")
    if stats["min_image_psnr_db"] < tolerance.min_image_psnr_db:
        reasons.append(f"worst image's PSNR against PyTorch {stats['min_image_psnr_db']:.1f} dB < "
                       f"{tolerance.min_image_psnr_db:g} dB")
    return reasons
