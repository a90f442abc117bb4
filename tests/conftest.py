import os
import sys

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


@pytest.fixture
def edgeres(monkeypatch, capsys):
    """Run `edgeres ARGS...` through its entry point; return (exit code, everything it printed)."""
    from edgeres import cli

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["edgeres", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        out = capsys.readouterr()
        code = exit_info.value.code
        return (0 if code is None else code), out.out + out.err

    return run


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
