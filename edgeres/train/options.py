"""The training-loss options `edgeres train` and `edgeres compare` share, declared once (typer only: the CLI's
help loads without torch)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

BETAS = typer.Option(None, help="Adam/AdamW moment decay rates, e.g. 0.5,0.999 as pix2pix trains "
                                "(default: torch's 0.9,0.999).")
LOSS = typer.Option("mse", help="Image-to-image pixel loss: mse or l1.")
PERCEPTUAL = typer.Option(0.0, help="Image-to-image: weight of a VGG-16 feature (perceptual) loss term; needs "
                                    "--perceptual-weights.")
PERCEPTUAL_WEIGHTS = typer.Option(None, help="torchvision's VGG-16 weight file (vgg16-397923af.pth) for "
                                             "--perceptual.")
ADVERSARIAL = typer.Option(0.0, help="Image-to-image: weight of a pix2pix patch-discriminator loss term "
                                     "(0: no discriminator).")


def loss_fields(betas: Optional[str], loss: str, perceptual: float, perceptual_weights: Optional[Path],
                adversarial: float) -> dict[str, Any]:
    """The `betas` and `loss` fields of a TrainConfig (or CompareConfig) from these options."""
    from edgeres.tasks import LossConfig
    from edgeres.ui import float_values

    return {"betas": float_values(betas, "--betas") if betas else None,
            "loss": LossConfig(pixel=loss, perceptual=perceptual, adversarial=adversarial,
                               perceptual_weights=str(perceptual_weights) if perceptual_weights else None)}
