import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from edgeres.artifacts import read_json
from edgeres.data import DataBundle, DataConfig, load_data
from edgeres.errors import UserInputError
from edgeres.evaluate import evaluate_artifact
from edgeres.train.config import TrainConfig
from edgeres.train.loop import train

DATA = DataConfig(source="digits", img_size=16)


def cfg(out, **kw):
    base = dict(model="test_se_resnet", data=DATA, out=str(out), epochs=3, batch_size=64, lr=3e-3, threads=1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "a"
    return train(cfg(out))


def test_training_writes_checkpoint_metrics_and_plots(trained):
    out = trained.out_dir
    for name in ("model.safetensors", "model.json", "metrics.json", "confusion_test.png", "curves.png",
                 "history.json", "train.json"):
        assert (out / name).is_file(), name
    metrics = read_json(out / "metrics.json")
    test = metrics["test"]
    assert test["n"] == 359 and len(test["confusion"]) == 10  # 20% of 1,797, stratified per class
    assert sum(map(sum, test["confusion"])) == 359
    assert set(test["per_class"]) == {str(i) for i in range(10)}
    assert test["accuracy"] > 0.5, "three epochs on digits should beat chance (0.1) by far"
    assert 0.5 < test["auc"] <= 1.0
    assert "val" in metrics and metrics["runner"]["backend"] == "torch"
    assert len(trained.history) == 3


def test_eval_reproduces_training_metrics(trained, tmp_path):
    metrics, written = evaluate_artifact(trained.out_dir, out=tmp_path / "ev")
    assert metrics["test"] == trained.metrics["test"]
    assert written == tmp_path / "ev" / "metrics.json"


def test_eval_on_other_data_keeps_the_runs_own_metrics(trained, tmp_path):
    """Metrics on other data than the run's go to eval-<data>/ inside the checkpoint, and record the data."""
    import shutil

    from PIL import Image

    run = tmp_path / "run"
    shutil.copytree(trained.out_dir, run)
    own = (run / "metrics.json").read_bytes()
    photos = tmp_path / "shop photos"
    rng = np.random.default_rng(0)
    for c in range(10):
        (photos / str(c)).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(photos / str(c) / f"{i}.png")
    metrics, written = evaluate_artifact(run, data=str(photos))
    assert written == run / "eval-shop_photos" / "metrics.json"
    assert (run / "metrics.json").read_bytes() == own
    recorded = read_json(written)
    assert recorded["data"]["source"] == str(photos) and recorded["test"]["n"] == metrics["test"]["n"] < 60
    # The run's own data named again is no other data: its metrics.json, as before.
    assert evaluate_artifact(run, data="digits")[1] == run / "metrics.json"


def test_same_seed_same_metrics(trained, tmp_path):
    again = train(cfg(tmp_path / "b"))
    assert again.metrics["test"] == trained.metrics["test"]
    assert [h["train_loss"] for h in again.history] == [h["train_loss"] for h in trained.history]


def test_existing_run_is_not_overwritten(trained):
    with pytest.raises(UserInputError, match="--resume"):
        train(cfg(trained.out_dir))


@pytest.mark.parametrize("resume", [False, True])
def test_out_that_is_a_file_is_refused(tmp_path, resume):
    afile = tmp_path / "afile.txt"
    afile.write_text("keep me")
    (tmp_path / "run").mkdir()
    for name, text in (("model.json", "{}"), ("model.safetensors", "weights")):
        (tmp_path / "run" / name).write_text(text)
    for out in (afile, tmp_path / "run" / "model.json"):  # a checkpoint's own file is not its run folder
        before = out.read_bytes()
        with pytest.raises(UserInputError, match=r"^--out .* is a file; expected a folder for the training run$"):
            train(cfg(out, resume=resume))
        assert out.read_bytes() == before


def test_resume_without_state_is_refused(tmp_path):
    with pytest.raises(UserInputError, match="no saved training state"):
        train(cfg(tmp_path / "none", resume=True))


def test_resume_with_other_model_is_refused(trained):
    with pytest.raises(UserInputError, match="model differs"):
        train(cfg(trained.out_dir, model="test_resnet", resume=True))


def _cli(*args):
    return [sys.executable, "-m", "edgeres.cli", *args]


@pytest.mark.slow
def test_killed_training_resumes_and_matches_uninterrupted_run(trained, tmp_path):
    out = tmp_path / "killed"
    argv = _cli("train", "--model", "test_se_resnet", "--data", "digits", "--img-size", "16", "--epochs", "3",
                "--lr", "0.003", "--threads", "1", "--out", str(out))
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "last" / "state.safetensors"  # one file, renamed into place whole
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.is_file():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = read_json(out / "history.json") if (out / "history.json").exists() else None
    assert done is None, "the run finished before it could be killed; the test proves nothing"
    subprocess.run([*argv, "--resume"], check=True, stdout=subprocess.DEVNULL)
    history = read_json(out / "history.json")
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert read_json(out / "metrics.json")["test"] == trained.metrics["test"]


@pytest.mark.slow
def test_cli_train_and_eval_exit_codes(tmp_path):
    bad_model = subprocess.run(_cli("train", "--model", "se_resnet81", "--data", "digits", "--out",
                                    str(tmp_path / "x")), capture_output=True, text=True)
    assert bad_model.returncode == 2
    assert "se_resnet18" in bad_model.stderr and "Traceback" not in bad_model.stderr
    missing = subprocess.run(_cli("train", "--model", "test_resnet", "--data", str(tmp_path / "nope"),
                                  "--out", str(tmp_path / "y")), capture_output=True, text=True)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    not_ckpt = subprocess.run(_cli("eval", str(tmp_path)), capture_output=True, text=True)
    assert not_ckpt.returncode == 2 and "model.safetensors" in not_ckpt.stderr
    usage = subprocess.run(_cli("train"), capture_output=True, text=True)
    assert usage.returncode == 2
    ok = subprocess.run(_cli("--help"), capture_output=True, text=True)
    assert ok.returncode == 0 and "train" in ok.stdout


def test_cli_models_lists_params(tmp_path):
    res = subprocess.run(_cli("models", "test_*", "--img-size", "32"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "test_se_resnet" in res.stdout and "resnet50" not in res.stdout.replace("test_", "")


def _imbalanced(root: Path, counts: dict[str, int]) -> DataBundle:
    """A folder dataset of distinct random 8x8 grey images, `counts[c]` per class `c`."""
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return load_data(DataConfig(str(root), img_size=16))


def test_balance_sampler_draws_the_rare_class_as_often_as_the_common_one(tmp_path):
    bundle = _imbalanced(tmp_path / "data", {"common": 60, "rare": 12})
    assert np.bincount(bundle.labels("train")).tolist() == [48, 10]
    drawn: list[torch.Tensor] = []

    def recording(logits, targets, images):
        drawn.append(targets.cpu())
        return F.cross_entropy(logits, targets)

    train(cfg(tmp_path / "run", epochs=3, balance="sampler", model="test_resnet", data=bundle.config),
          criterion=recording, bundle=bundle)
    seen = torch.cat(drawn)
    # Unbalanced, the rare class would be 10/58 = 17% of the draws; balanced it is half, give or take
    # the binomial spread of 174 draws (sd 3.8 points).
    assert len(seen) == 3 * 58 and 0.35 < seen.float().mean().item() < 0.65


def test_balance_loss_weights_classes_by_inverse_frequency(tmp_path, monkeypatch):
    bundle = _imbalanced(tmp_path / "data", {"common": 60, "rare": 12})
    weights: list[torch.Tensor | None] = []
    cross_entropy = F.cross_entropy

    def spy(logits, targets, weight=None, *args, **kwargs):
        if kwargs.get("reduction", "mean") == "mean":  # the training loss; validation sums, unweighted
            weights.append(weight)
        return cross_entropy(logits, targets, weight, *args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy)
    train(cfg(tmp_path / "run", epochs=1, balance="loss", model="test_resnet", data=bundle.config), bundle=bundle)
    inverse = 1.0 / torch.tensor(np.bincount(bundle.labels("train")), dtype=torch.float32)
    assert len(weights) == 1, "one training batch of 58 images"  # batch size 64
    assert weights[0] is not None
    torch.testing.assert_close(weights[0] / weights[0].sum(), inverse / inverse.sum())


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "edgeres.cli", "train",
                          "--model", "test_resnet", "--data", "digits", "--img-size", "16", "--epochs", "2",
                          "--threads", "1", "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert read_json(out / "train.json")["world_size"] == 2
    history = read_json(out / "history.json")
    assert [h["epoch"] for h in history] == [1, 2]
    # Each process saw half the training split (1,079 images, padded to an even 1,080) per epoch.
    assert history[0]["samples_per_process"] == 540
    assert json.loads((out / "metrics.json").read_text())["test"]["n"] == 359


@pytest.mark.slow
def test_torchrun_two_processes_train_a_detector(tmp_path):
    """DDP for detection: each process gets half the scenes, batched by the detection collate."""
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp-det"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "edgeres.cli", "train",
                          "--model", "test_yolo", "--data", "shapes-det", "--img-size", "64", "--epochs", "1",
                          "--batch-size", "16", "--threads", "1", "--out", str(out)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert read_json(out / "train.json")["world_size"] == 2
    history = read_json(out / "history.json")
    assert history[0]["samples_per_process"] == 210  # 420 training scenes of the default 600, split in two
    assert "val_map" in history[0]
    metrics = read_json(out / "metrics.json")
    assert metrics["task"] == "detection" and metrics["test"]["n"] == 90
