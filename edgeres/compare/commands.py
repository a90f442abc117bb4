"""`edgeres compare`, registered on the main app: parses, calls `compare_models`, prints the table."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeres.train.options import ADVERSARIAL, BETAS, LOSS, PERCEPTUAL, PERCEPTUAL_WEIGHTS, loss_fields


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)


def compare_cmd(
    models: str = typer.Option(..., "--models", "-m", help="Variants to compare, comma-separated "
                                                           "(see `edgeres models`), e.g. resnet18,se_resnet18."),
    data: str = typer.Option(..., "--data", "-d", help="'digits', 'shapes' or an image folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for models/<variant>/, compare.md/.json/.html, plots."),
    epochs: int = typer.Option(10, help="Training epochs, every variant alike."),
    img_size: int = typer.Option(64, help="Input images are resized to this square size."),
    batch_size: int = typer.Option(64, help="Images per training step."),
    lr: float = typer.Option(1e-3, help="Peak learning rate."),
    optimizer: str = typer.Option("adamw", help="adamw, adam or sgd."),
    scheduler: str = typer.Option("cosine", help="cosine, plateau or none."),
    patience: int = typer.Option(0, help="Early stop after this many epochs without val-loss gain (0: off)."),
    balance: str = typer.Option("none", help="Class imbalance: none, loss (weighted) or sampler."),
    betas: Optional[str] = BETAS,
    loss: str = LOSS,
    perceptual: float = PERCEPTUAL,
    perceptual_weights: Optional[Path] = PERCEPTUAL_WEIGHTS,
    adversarial: float = ADVERSARIAL,
    weights: Optional[list[str]] = typer.Option(None, help="NAME=FILE: local weights variant NAME starts from "
                                                           "(repeat for several variants)."),
    freeze: Optional[str] = typer.Option(None, help="Freeze stages up to and including this one in every variant, "
                                                    "e.g. layer3."),
    in_chans: Optional[int] = typer.Option(None, help="Input channels (default: the data's own)."),
    split: Optional[str] = typer.Option(None, help="train,val,test fractions for a folder without splits."),
    augment: bool = typer.Option(True, help="Augment the training split."),
    skip_bad: bool = typer.Option(False, help="Skip unreadable images (and count them) instead of failing."),
    pairs: Optional[str] = typer.Option(None, help="Image-to-image models: pairs made from the data (denoise, "
                                                   "inpaint, sr2, sr4; default: input/ and target/ folders, else "
                                                   "denoise)."),
    sigma: float = typer.Option(0.1, help="Image-to-image denoise: the noise's std in image range [0, 1]."),
    seed: int = typer.Option(0, help="Seed for the split, initialisation and shuffling, the same for every variant."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch, in training and timing alike."),
    rounds: int = typer.Option(5, help="Interleaved timing rounds."),
    runs: int = typer.Option(20, help="Timed calls per model per round."),
    device: str = typer.Option("auto", help="Train on: auto (a GPU when there is one), cpu, cuda or cuda:N."),
    amp: bool = typer.Option(False, help="Mixed-precision training, as in `edgeres train --amp`."),
    lpips_weights: Optional[Path] = typer.Option(None, help="Image-to-image: an LPIPS column, on torchvision's "
                                                            "backbone file (alexnet-owt-7be5be79.pth, "
                                                            "vgg16-397923af.pth or squeezenet1_1-b8a52dc0.pth)."),
    inception_weights: Optional[Path] = typer.Option(None, help="Image-to-image: FID and KID columns on "
                                                                "torch-fidelity's Inception-v3 file."),
    fid_features: Optional[Path] = typer.Option(None, help="Image-to-image: or FID and KID on an edgeres classifier's "
                                                           "features (not comparable with published FID)."),
) -> None:
    """Train several variants on the same data and settings; compare accuracy, F1, AUCs, calibration (another
    task: its own metrics, e.g. MSE, PSNR, SSIM), size, MACs, training time and latency in one table (a rerun into
    the same --out reuses the trained variants). Image-to-image variants gain LPIPS, FID and KID columns given
    their weight files."""
    from edgeres.compare import CompareConfig, ImageScoring, LatencyConfig, compare_models
    from edgeres.compare.output import table_rows
    from edgeres.data import DataConfig
    from edgeres.ui import console, csv_values, float_values, print_table, progress_bar

    data_config = DataConfig(source=data, img_size=img_size, in_chans=in_chans, seed=seed, augment=augment,
                             skip_bad=skip_bad, split=float_values(split, "--split") if split else None,
                             pairs=pairs, sigma=sigma)
    config = CompareConfig(
        models=csv_values(models, "--models"), out=str(out), data=data_config, epochs=epochs, batch_size=batch_size,
        lr=lr, optimizer=optimizer, scheduler=scheduler, patience=patience, balance=balance,
        **loss_fields(betas, loss, perceptual, perceptual_weights, adversarial),
        weights=named_files(weights or [], "--weights"), freeze=freeze, seed=seed, device=device, amp=amp,
        threads=threads, latency=LatencyConfig(rounds=rounds, runs=runs),
        scoring=ImageScoring(lpips_weights, inception_weights, fid_features))
    with progress_bar("comparing", total=None) as advance:
        document = compare_models(config, progress=lambda what: advance(0, now=what))
    print_table(f"comparison on {data} (test split, {document['data']['test_images']} images) -> {out}",
                *table_rows(document))
    console.print(f"wrote {out / 'compare.md'}, {out / 'compare.html'} and {out / 'compare.json'}")


def named_files(pairs: list[str], option: str) -> dict[str, str]:
    """["a=x.pt", "b=y.pt"] -> {"a": "x.pt", "b": "y.pt"}; anything else is bad input naming `option`."""
    from edgeres.errors import UserInputError

    named: dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserInputError(f"{option} takes NAME=FILE (a compared model and its weight file), got {pair!r}")
        if name.strip() in named:
            raise UserInputError(f"{option}: {name.strip()} is given twice")
        named[name.strip()] = path.strip()
    return named
