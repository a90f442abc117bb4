"""Image-to-image training losses: MSE or L1, a perceptual term on VGG-16 features from a local file, a pix2pix
patch discriminator trained alongside (and resumed with the run), Adam's betas; the CLI and recipe options."""
from __future__ import annotations

import json

import pytest
import torch

from edgeres.errors import UserInputError
from edgeres.tasks import LossConfig, get_task

TASK = get_task("image2image")
SIZE = 16


class _Bundle:
    in_chans, img_size = 1, SIZE


def _labels(target: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    return torch.stack([target, noisy], 1)  # (N, 2, C, H, W): target, input


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """VGG-16's first layers (all the perceptual loss reads) with random weights, named as in torchvision's file."""
    from torchvision.models import vgg16

    torch.manual_seed(0)
    layers = vgg16(weights=None).features[:16]
    path = tmp_path_factory.mktemp("vgg") / "vgg16-features.pth"
    torch.save({f"features.{k}": v for k, v in layers.state_dict().items()}, path)
    return path


# --- the criterion ---

def test_l1_trains_on_the_mean_absolute_error_and_validation_stays_mse():
    target, output = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)
    labels = _labels(target, target)
    l1 = TASK.criterion(_Bundle(), loss=LossConfig(pixel="l1"))(output, labels, target)
    mse = TASK.criterion(_Bundle())(output, labels, target)
    assert l1.item() == pytest.approx(0.5) and mse.item() == pytest.approx(0.25)
    assert TASK.loss_sum(output, labels).item() == pytest.approx(2 * 0.25)  # val loss: MSE whatever trains


def test_perceptual_term_reads_vgg16_from_a_local_file(vgg_file):
    criterion = TASK.criterion(_Bundle(), loss=LossConfig(perceptual=1.0, perceptual_weights=str(vgg_file)))
    target = torch.rand(2, 1, SIZE, SIZE)
    same = criterion(target.clone(), _labels(target, target), target)
    assert same.item() == pytest.approx(0.0, abs=1e-6) and criterion.last["perceptual"] == pytest.approx(0, abs=1e-6)
    output = (target + 0.2 * torch.randn_like(target)).requires_grad_(True)
    loss = criterion(output, _labels(target, target), target)
    assert criterion.last["perceptual"] > 0.01 and loss.item() > criterion.last["pixel"]
    loss.backward()
    assert output.grad is not None and output.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in criterion.parameters())  # VGG stays fixed
    assert criterion.state_dict() == {}  # nor is it saved with the training state: its file brings it back


def test_perceptual_weights_must_be_vgg16(tmp_path):
    from torchvision.models import resnet18

    from edgeres.tasks.image2image_losses import VGGFeatures

    other = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), other)
    with pytest.raises(UserInputError, match="is not VGG-16.*vgg16-397923af.pth"):
        VGGFeatures(other)
    with pytest.raises(UserInputError, match="does not exist"):
        VGGFeatures(tmp_path / "missing.pth")
    with pytest.raises(UserInputError, match="needs VGG-16 weights"):
        LossConfig(perceptual=0.1)
    with pytest.raises(UserInputError, match="loss must be one of mse, l1"):
        LossConfig(pixel="huber")


def test_the_discriminator_learns_and_the_generators_optimizer_leaves_it_alone():
    from edgeres.models import create
    from edgeres.train.config import TrainConfig
    from edgeres.train.loop import _build_optimizer

    criterion = TASK.criterion(_Bundle(), loss=LossConfig(adversarial=0.1))
    model = create("test_unet", num_classes=1, in_chans=1)
    cfg = TrainConfig(model="test_unet", data=None, out="unused", betas=(0.5, 0.999))
    optimizer, _ = _build_optimizer(cfg, model, criterion)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters()} and optimizer.param_groups[0]["betas"] == (0.5, 0.999)

    target = torch.rand(4, 1, SIZE, SIZE)
    noisy = (target + 0.2 * torch.randn_like(target)).clamp(0, 1)
    before = [p.detach().clone() for p in criterion.discriminator.parameters()]
    loss = criterion(model(noisy), _labels(target, noisy), noisy)
    after = list(criterion.discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # one discriminator step was taken
    assert {"pixel", "adversarial", "discriminator"} <= set(criterion.last)
    loss.backward()
    assert all(p.grad is None for p in criterion.discriminator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with torch.no_grad():  # scoring without gradients takes no discriminator step
        frozen = [p.detach().clone() for p in criterion.discriminator.parameters()]
        criterion(model(noisy), _labels(target, noisy), noisy)
    assert all(torch.equal(a, b) for a, b in zip(frozen, criterion.discriminator.parameters()))


def test_the_discriminator_and_its_optimizer_resume_from_the_training_state(tmp_path):
    from edgeres.train.state import load_state, save_state

    first = TASK.criterion(_Bundle(), loss=LossConfig(adversarial=0.1))
    target = torch.rand(4, 1, SIZE, SIZE)
    first(target * 0.5, _labels(target, target), target)
    save_state({"criterion": first.state_dict()}, tmp_path / "last")
    second = TASK.criterion(_Bundle(), loss=LossConfig(adversarial=0.1))
    second.load_state_dict(load_state(tmp_path / "last")["criterion"])
    for a, b in zip(first.discriminator.state_dict().values(), second.discriminator.state_dict().values()):
        assert torch.equal(a, b)
    step = lambda c: next(iter(c.d_optimizer.state_dict()["state"].values()))["step"]  # noqa: E731
    assert float(step(second)) == float(step(first)) == 1.0


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_the_patch_grid_fits_every_image_size(size):
    class Bundle:
        in_chans, img_size = 3, size

    criterion = TASK.criterion(Bundle(), loss=LossConfig(adversarial=1.0))
    x = torch.rand(2, 3, size, size)
    grid = criterion.discriminator(x, x)
    assert grid.shape[0] == 2 and grid.shape[2] >= 1 and grid.shape[3] >= 1


def test_a_classifier_refuses_image_losses():
    with pytest.raises(UserInputError, match="image-to-image training options; this is a classification model"):
        get_task("classification").criterion(None, loss=LossConfig(pixel="l1"))


# --- the command line and the recipe ---

@pytest.mark.slow
def test_train_with_l1_a_discriminator_and_betas_then_resume(edgeres, pictures, tmp_path):
    run = tmp_path / "run"
    args = ["train", "-m", "test_unet", "-d", pictures, "-o", run, "--img-size", SIZE, "--batch-size", 8,
            "--pairs", "denoise", "--sigma", 0.2, "--loss", "l1", "--adversarial", 0.05, "--betas", "0.5,0.999",
            "--optimizer", "adam", "--threads", 1]
    code, text = edgeres(*args, "--epochs", 1)
    assert code == 0, text
    recorded = json.loads((run / "train.json").read_text())
    assert recorded["loss"]["pixel"] == "l1" and recorded["loss"]["adversarial"] == 0.05
    assert recorded["betas"] == [0.5, 0.999]
    code, text = edgeres(*args, "--epochs", 2, "--resume")
    assert code == 0, text
    assert [row["epoch"] for row in json.loads((run / "history.json").read_text())] == [1, 2]
    code, text = edgeres(*[a if a != "l1" else "mse" for a in args], "--epochs", 3, "--resume")
    assert code == 2 and "loss differs from the interrupted run" in text


@pytest.mark.parametrize("extra, message", [
    (["-m", "test_resnet", "-d", "digits", "--loss", "l1"], "image-to-image training options"),
    (["-m", "test_unet", "-d", "digits", "--optimizer", "sgd", "--betas", "0.5,0.999"], "optimizer 'sgd' has none"),
    (["-m", "test_unet", "-d", "digits", "--betas", "0.5"], "betas must be two numbers"),
    (["-m", "test_unet", "-d", "digits", "--betas", "0.5,1.5"], "each of betas"),
    (["-m", "test_unet", "-d", "digits", "--perceptual", "0.1"], "--perceptual-weights FILE"),
])
def test_bad_loss_options_exit_2(edgeres, tmp_path, extra, message):
    code, text = edgeres("train", "-o", tmp_path / "r", "--epochs", 1, "--img-size", SIZE, *extra)
    assert code == 2 and message in text, text


def test_recipe_training_fields_reach_the_train_config(tmp_path):
    from edgeres.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata: {source: digits, pairs: denoise}\n"
                    "train: {model: test_unet, loss: l1, adversarial: 0.01, betas: [0.5, 0.999]}\n")
    settings = load_recipe(path).train.training_settings()
    assert settings["loss"] == LossConfig(pixel="l1", adversarial=0.01) and settings["betas"] == (0.5, 0.999)
    path.write_text("name: r\ndata: {source: digits}\ntrain: {model: test_unet, perceptual: 0.1}\n")
    with pytest.raises(UserInputError, match="needs VGG-16 weights"):
        load_recipe(path)


def test_a_unet_student_distils_from_a_larger_backbone():
    """Output and stage-feature distillation from unet_resnet18 (widths 128-512) into test_unet (16-64)."""
    from edgeres.compress.distill import Distiller
    from edgeres.models import create

    teacher, student = (create(m, num_classes=1, in_chans=1) for m in ("unet_resnet18", "test_unet"))
    with Distiller(teacher, student, alpha=0.5, feature_weight=1.0, input_shape=(1, SIZE, SIZE),
                   hard_loss=TASK.criterion(_Bundle()), soft_loss=TASK.soft_loss) as distiller:
        widths = {stage: (a.in_channels, a.out_channels) for stage, a in distiller.adapters.items()}
        assert sorted(widths.values()) == [(16, 128), (32, 256), (64, 512)]
        target = torch.rand(2, 1, SIZE, SIZE)
        loss = distiller(student(target), _labels(target, target), target)
        assert {"ce", "kd", "feature"} <= set(distiller.last) and distiller.last["feature"] > 0
        loss.backward()
        assert all(a.weight.grad is not None for a in distiller.adapters.values())
        assert all(p.grad is None for p in teacher.parameters())


def _average_on_rank(rank: int, path: str) -> None:
    import torch.distributed as dist

    from edgeres.tasks.image2image_losses import PatchDiscriminator, _average_gradients

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        d = PatchDiscriminator(1, layers=1)
        for p in d.parameters():
            p.grad = torch.full_like(p, float(rank + 1))  # rank 0: ones, rank 1: twos
        _average_gradients(d)
        assert all(torch.allclose(p.grad, torch.full_like(p, 1.5)) for p in d.parameters())
    finally:
        dist.destroy_process_group()


def test_under_torchrun_the_discriminators_take_the_mean_gradient(tmp_path):
    """Two gloo processes, as torchrun starts them: each discriminator steps on the mean of both gradients."""
    import torch.multiprocessing as mp

    mp.spawn(_average_on_rank, args=(str(tmp_path / "rendezvous"),), nprocs=2, join=True)


def test_compare_trains_every_variant_with_the_same_loss_and_betas(tmp_path):
    from edgeres.compare import CompareConfig
    from edgeres.data import DataConfig

    loss = LossConfig(pixel="l1", adversarial=0.01)
    config = CompareConfig(models=("test_unet", "unet_resnet18"), out=str(tmp_path),
                           data=DataConfig(source="digits", pairs="denoise"), betas=(0.5, 0.999), loss=loss)
    for model in config.models:
        trained = config.train_config(model)
        assert (trained.loss, trained.betas) == (loss, (0.5, 0.999))
    assert config.settings()["loss"]["pixel"] == "l1"  # a rerun with another loss trains again


def test_the_progress_bar_shows_each_loss_term():
    from torch.utils.data import DataLoader, TensorDataset

    from edgeres.models import create
    from edgeres.train.loop import train_epoch

    criterion = TASK.criterion(_Bundle(), loss=LossConfig(pixel="l1", adversarial=0.1))
    model = create("test_unet", num_classes=1, in_chans=1)
    target = torch.rand(8, 1, SIZE, SIZE)
    loader = DataLoader(TensorDataset(target, _labels(target, target)), batch_size=4)
    shown: list[dict] = []
    train_epoch(model, loader, torch.optim.Adam(model.parameters()), criterion,
                progress=lambda n, **fields: shown.append(fields), task=TASK)
    assert len(shown) == 2 and {"loss", "pixel", "adversarial", "discriminator"} <= set(shown[-1])
