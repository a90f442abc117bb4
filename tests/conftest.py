import os
import sys

import numpy as np
import pytest
import torch

# Two cores on CI: keep each test process from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A test_se_resnet trained three epochs on digits at 24x24: real weights (int8 has margins to keep)."""
    from edgeres.data import DataConfig
    from edgeres.train.config import TrainConfig
    from edgeres.train.loop import train

    out = tmp_path_factory.mktemp("tiny") / "ckpt"
    train(TrainConfig(model="test_se_resnet", data=DataConfig("digits", img_size=24), out=str(out), epochs=3,
                      lr=3e-3, threads=1))
    return out


def _run_edgeres(*args: object) -> int:
    from edgeres import cli

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["edgeres", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    return exit_info.value.code or 0


@pytest.fixture
def edgeres(capsys):
    """Run `edgeres ARGS...` through its entry point; return (exit code, everything it printed)."""

    def run(*args: object) -> tuple[int, str]:
        code = _run_edgeres(*args)
        out = capsys.readouterr()
        return code, out.out + out.err

    return run


@pytest.fixture(scope="session")
def run_edgeres():
    """`edgeres ARGS...` through its entry point, for fixtures of any scope: returns the exit code."""
    return _run_edgeres


I2I_SIZE = 16  # the image-to-image tests' picture size


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """48 smooth grey pictures (blurred blobs), 16 px: enough to denoise, quick to train on."""
    from PIL import Image, ImageFilter

    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for i in range(48):
        pixels = (rng.random((8, 8)) * 255).astype(np.uint8)
        picture = Image.fromarray(pixels, "L").resize((I2I_SIZE, I2I_SIZE), Image.BICUBIC)
        picture.filter(ImageFilter.GaussianBlur(1)).save(root / f"p{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def feature_classifier(tmp_path_factory):
    """A random test_resnet checkpoint whose pooled features stand in for FID/KID's network (no download)."""
    from edgeres.checkpoint import save_checkpoint
    from edgeres.meta import ModelMeta
    from edgeres.models import create

    torch.manual_seed(0)
    model = create("test_resnet", num_classes=10, in_chans=1)
    meta = ModelMeta(arch="test_resnet", num_classes=10, in_chans=1, img_size=I2I_SIZE, mean=(0.5,), std=(0.5,))
    return save_checkpoint(model, meta, tmp_path_factory.mktemp("cls") / "cls")


@pytest.fixture(scope="session")
def random_detector(tmp_path_factory):
    """A checkpoint of a random test_yolo at 64 px with anchors fitted to shapes-det and raised objectness and
    class scores, so that it finds boxes to compare at the confidence predict draws (0.25)."""
    from edgeres.checkpoint import save_checkpoint
    from edgeres.data import DataConfig
    from edgeres.meta import ModelMeta
    from edgeres.models import create
    from edgeres.tasks import get_task

    task = get_task("detection")
    data = DataConfig("shapes-det", img_size=64, detect_images=24)
    bundle = task.load_data(data)
    anchors = task.model_kwargs(bundle)
    torch.manual_seed(0)
    model = create("test_yolo", num_classes=len(bundle.class_names), **anchors).eval()
    with torch.no_grad():
        for head in model.heads:
            head.bias.view(model.num_anchors, -1)[:, 4:] += 4.0
    meta = ModelMeta(arch="test_yolo", num_classes=len(bundle.class_names), img_size=64, arch_kwargs=anchors,
                     class_names=list(bundle.class_names), task="detection", mean=tuple(bundle.mean),
                     std=tuple(bundle.std), data=data.to_dict())
    return save_checkpoint(model, meta, tmp_path_factory.mktemp("random-detector") / "ckpt")
