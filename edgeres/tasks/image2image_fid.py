"""FID and KID of an image-to-image model's outputs against its targets, by torchmetrics' maintained
implementations, on a feature network the user supplies (nothing is downloaded).

Two networks: Inception-v3 from a local torch-fidelity weight file (the published FID/KID), or the pooled
features (the classifier's input) of an edgeres classification checkpoint. The second is labelled everywhere as
not comparable with published Inception FID: the numbers depend on that checkpoint, so they rank models scored
with the same checkpoint and mean nothing beside a paper's FID.

LPIPS comes from image2image_lpips.py (the `lpips` package, its backbone from a local torchvision weight file):
`score_artifact` and `image_scores` add it beside FID/KID, or give it alone.

Imports torch at module level, like classify_losses.py: only the scoring code (`edgeres fid`, and `edgeres compare`
given weight files) imports this module, when it scores.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeres.errors import UserInputError
from edgeres.tasks.image2image_lpips import EXPECTED as LPIPS_EXPECTED
from edgeres.tasks.image2image_lpips import LpipsNetwork, lpips_network, lpips_scores

#: torch-fidelity's Inception-v3 weights (the TF FID network ported to PyTorch), which torchmetrics loads
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
NOT_COMPARABLE = "not comparable with published Inception FID"
KID_SUBSET_SIZE = 1000  # torchmetrics' default; smaller test sets use all their images per subset
KID_SUBSETS = 100


@dataclasses.dataclass
class FeatureNetwork:
    """A module from images (N, C, H, W) in [0, 1] to features (N, F), and what the scores may be compared with."""

    module: nn.Module  # with `num_features`, so torchmetrics need not probe it
    label: str  # "Inception-v3 (FILE)" or "features of CHECKPOINT (not comparable ...)"
    comparable: bool  # with published Inception FID/KID


def inception_network(weights: str | Path | None) -> FeatureNetwork:
    """Inception-v3 from torch-fidelity's local weight file; no file (or no torch-fidelity) exits 2 saying which."""
    if weights is None or not Path(weights).is_file():
        given = f" ({weights} does not exist)" if weights is not None else ""
        raise UserInputError(f"Inception FID/KID needs the local Inception-v3 weight file {INCEPTION_FILE} "
                             f"(torch-fidelity's, from its GitHub releases){given}: pass it with --inception-weights "
                             "FILE, or use --fid-features CHECKPOINT for features of an edgeres classifier "
                             f"({NOT_COMPARABLE})")
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        raise UserInputError("Inception FID/KID needs the torch-fidelity package (torchmetrics builds its Inception "
                             "network from it): pip install torch-fidelity")
    from torchmetrics.image.fid import NoTrainInceptionV3

    inception = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(weights))
    return FeatureNetwork(_Inception(inception), f"Inception-v3 ({Path(weights).name})", True)


def checkpoint_network(checkpoint: str | Path) -> FeatureNetwork:
    """The pooled features an edgeres classifier's head reads, fed as its training data was prepared."""
    from edgeres.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    if meta.task != "classification" or not hasattr(model, model.classifier_name):
        raise UserInputError(f"{checkpoint} is a {meta.task} checkpoint; FID/KID features come from a classification "
                             "checkpoint's pooled features")
    return FeatureNetwork(_Pooled(model, model.classifier_name, meta),
                          f"features of {Path(checkpoint).name} ({NOT_COMPARABLE})", False)


def distribution_scores(outputs: np.ndarray, targets: np.ndarray, network: FeatureNetwork,
                        kid_subset_size: int = KID_SUBSET_SIZE, batch_size: int = 64) -> dict[str, Any]:
    """FID and KID (mean and std over subsets) of `outputs` against `targets`, both (N, C, H, W) in [0, 1].

    KID's subset size is min(kid_subset_size, N): a test set smaller than torchmetrics' default is scored with
    every image in each subset instead of failing.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = len(outputs)
    if n < 2 or len(targets) != n:
        raise UserInputError(f"FID/KID need at least two output images and as many targets; got {n} outputs and "
                             f"{len(targets)} targets")
    subset = min(kid_subset_size, n)
    fid = FrechetInceptionDistance(feature=network.module, normalize=True)
    with warnings.catch_warnings():  # that KID keeps every feature: a test set's worth is small
        warnings.filterwarnings("ignore", message=".*will save all extracted features", category=UserWarning)
        kid = KernelInceptionDistance(feature=network.module, subsets=KID_SUBSETS, subset_size=subset,
                                      normalize=True)
    with torch.inference_mode():
        for real, images in ((True, targets), (False, outputs)):
            for start in range(0, n, batch_size):
                batch = torch.as_tensor(np.asarray(images[start:start + batch_size], np.float32))
                fid.update(batch, real=real)
                kid.update(batch, real=real)
        kid_mean, kid_std = kid.compute()
        return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
                "kid_subset_size": subset, "images": n, "feature_network": network.label,
                "comparable_with_published": network.comparable}


class _Pooled(nn.Module):
    """A classifier up to its head: resize, match channels, normalise as model.json says, capture the head's input."""

    def __init__(self, model: nn.Module, head: str, meta: Any) -> None:
        super().__init__()
        self.model = model.eval()
        self.size, self.chans = meta.img_size, meta.in_chans
        self.register_buffer("mean", torch.tensor(meta.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(meta.std, dtype=torch.float32).view(1, -1, 1, 1))
        self._captured: list[Any] = []
        getattr(model, head).register_forward_pre_hook(lambda _m, args: self._captured.append(args[0]))
        with torch.no_grad():
            self.num_features = int(self(torch.zeros(1, self.chans, self.size, self.size)).shape[1])

    def train(self, mode: bool = True) -> "_Pooled":
        return super().train(False)  # batch norm statistics stay the checkpoint's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _channels(x.float(), self.chans)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        self._captured.clear()
        self.model((x - self.mean) / self.std)
        return self._captured[-1].flatten(1)


class _Inception(nn.Module):
    """torchmetrics' Inception on [0, 1] float images of one or three channels (it takes uint8 RGB)."""

    num_features = 2048

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        self.inception = inception

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inception((_channels(x.float(), 3).clamp(0, 1) * 255).round().byte())


def _channels(x: torch.Tensor, chans: int) -> torch.Tensor:
    """Grey to RGB by repetition, RGB to grey by the mean."""
    if x.shape[1] == chans:
        return x
    return x.repeat(1, chans, 1, 1) if x.shape[1] == 1 else x.mean(1, keepdim=True)


def feature_network(inception_weights: str | Path | None = None,
                    features: str | Path | None = None) -> FeatureNetwork:
    """The network FID/KID use: Inception from its local file, or a classification checkpoint's features."""
    if features is not None and inception_weights is not None:
        raise UserInputError("give --inception-weights or --fid-features, not both")
    return checkpoint_network(features) if features is not None else inception_network(inception_weights)


def scoring_networks(inception_weights: str | Path | None = None, fid_features: str | Path | None = None,
                     lpips_weights: str | Path | None = None) -> tuple[FeatureNetwork | None, LpipsNetwork | None]:
    """The networks the scores need: FID/KID's when either of their options is given, LPIPS's when its file is;
    none at all exits 2 naming the files each score needs."""
    if inception_weights is None and fid_features is None and lpips_weights is None:
        raise UserInputError(f"no score asked for: FID/KID need the local Inception-v3 weight file {INCEPTION_FILE} "
                             "(torch-fidelity's) with --inception-weights FILE, or --fid-features CHECKPOINT "
                             f"(an edgeres classifier's features, {NOT_COMPARABLE}); LPIPS needs a torchvision "
                             f"backbone file with --lpips-weights FILE: {LPIPS_EXPECTED}")
    fid = None if inception_weights is None and fid_features is None else feature_network(inception_weights,
                                                                                          fid_features)
    return fid, None if lpips_weights is None else lpips_network(lpips_weights)


def image_scores(images: np.ndarray, targets: np.ndarray, network: FeatureNetwork | None = None,
                 lpips: LpipsNetwork | None = None, kid_subset_size: int = KID_SUBSET_SIZE) -> dict[str, Any]:
    """FID/KID on `network` and mean LPIPS on `lpips` (whichever is given) of `images` against `targets`."""
    scores: dict[str, Any] = {}
    if network is not None:
        scores.update(distribution_scores(images, targets, network, kid_subset_size))
    if lpips is not None:
        scores.update(lpips_scores(images, targets, lpips))
    return scores


def score_artifact(artifact: str | Path, network: FeatureNetwork | None, data: str | None = None,
                   split: str = "test", threads: int | None = None, kid_subset_size: int = KID_SUBSET_SIZE,
                   lpips: LpipsNetwork | None = None) -> dict[str, Any]:
    """FID/KID (on `network`) and LPIPS (on `lpips`) of an image-to-image artifact's outputs on `split` of its
    data, against the split's targets, and the same for the split's inputs (how far the degraded images are, for
    scale)."""
    from edgeres import runtime
    from edgeres.evaluate import load_task_data
    from edgeres.evaluate.predict import check_compatible, predict

    runner = runtime.load(artifact, threads=threads)
    if runner.meta.task != "image2image":
        raise UserInputError(f"{artifact} is a {runner.meta.task} model; FID/KID and LPIPS score image-to-image "
                             "outputs")
    bundle = load_task_data(runner.meta, data)
    check_compatible(runner.meta, bundle)
    predictions = predict(runner, bundle, split)
    return {"artifact": str(artifact), "split": split,
            **{name: image_scores(images, predictions.targets, network, lpips, kid_subset_size)
               for name, images in (("output", predictions.outputs), ("input", predictions.inputs))}}
