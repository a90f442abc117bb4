import os

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
