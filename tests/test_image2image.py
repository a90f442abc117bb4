"""Image-to-image: pairs (degraded and paired folders), the U-Net, PSNR/SSIM, training, export and the gate."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from edgeres.data import DataConfig
from edgeres.data.pairs import Degradation, PairAugment
from edgeres.errors import UserInputError
from edgeres.evaluate.gate import GateConfig, check
from edgeres.models import create, list_models, model_task
from edgeres.tasks import get_task
from edgeres.tasks.image2image_metrics import PSNR_CAP, ImagePredictions, image_metrics, per_image_psnr, per_image_ssim

TASK = get_task("image2image")


def _data(**kw) -> DataConfig:
    return DataConfig(**{"source": "digits", "img_size": 16, **kw})


def test_every_unet_variant_keeps_the_input_shape_and_starts_as_the_identity():
    names = list_models("*unet*")
    assert names == ["test_unet", "unet_resnet18", "unet_resnet50", "unet_se_resnet18", "unet_se_resnet50"]
    assert all(model_task(n) == "image2image" for n in names)
    for name in names[1:]:  # shapes only, on the meta device: no memory, no initialisation
        with torch.device("meta"):
            model = create(name, num_classes=1, in_chans=3)
            assert model(torch.empty(2, 3, 64, 64)).shape == (2, 3, 64, 64)
        assert model.task == "image2image" and model.output_names == ("image",)
        assert ("_se_" in name) == any(type(m).__name__ == "SqueezeExcite" for m in model.encoder.modules())
    tiny = create("test_unet", in_chans=1).eval()
    x = torch.rand(2, 1, 16, 24)
    assert torch.equal(tiny(x), x)  # the zero head adds nothing: a fresh model is the identity


def test_a_classifiers_weights_load_into_the_encoder(tmp_path):
    from safetensors.torch import save_file

    from edgeres.models import load_weights

    classifier = create("test_resnet", num_classes=10, in_chans=3)
    save_file(classifier.state_dict(), tmp_path / "cls.safetensors")
    unet = create("test_unet", in_chans=1)
    report = load_weights(unet, tmp_path / "cls.safetensors")
    assert report.into == "encoder" and sorted(report.dropped) == ["fc.bias", "fc.weight"] and report.adapted == ["conv1.weight"]
    assert torch.equal(unet.encoder.layer4[0].conv2.weight, classifier.layer4[0].conv2.weight)
    assert torch.allclose(unet.encoder.conv1.weight, classifier.conv1.weight.sum(1, keepdim=True))


def test_inference_module_clamps_to_image_range():
    model = create("test_unet", in_chans=1).eval()
    torch.nn.init.constant_(model.head.bias, 2.0)
    out = model.inference_module()(torch.rand(2, 1, 16, 16))
    assert out.min() >= 0 and out.max() == 1.0 and model(torch.rand(2, 1, 16, 16)).max() > 1


def test_degradations_are_seeded_on_held_out_splits_and_random_on_train():
    bundle = TASK.load_data(_data())
    assert bundle.class_names == ["denoise"] and bundle.mean == (0.0,) and bundle.std == (1.0,)
    x1, y1 = next(bundle.batches("val", 8))
    x2, y2 = next(bundle.batches("val", 8))
    assert x1.shape == (8, 1, 16, 16) and y1.shape == (8, 2, 1, 16, 16)
    assert np.array_equal(x1, x2) and np.array_equal(y1[:, 1], x1)
    noise = x1 - y1[:, 0]
    assert 0.03 < noise.std() < 0.1  # sigma 0.1, partly clipped at 0 on black background
    train = bundle.dataset("train", augment=False)
    assert not torch.equal(train[0][0], train[0][0])
    for kind in ("inpaint", "sr2", "sr4"):
        x, y = next(TASK.load_data(_data(pairs=kind)).batches("test", 4))
        assert not np.array_equal(x, y[:, 0]), kind
    hole = next(TASK.load_data(_data(pairs="inpaint")).batches("test", 4))[0]
    assert ((hole == 0.5).reshape(4, -1).sum(1) >= 16).all()  # a 4x4 hole at least
    with pytest.raises(UserInputError, match="pairs must be one of"):
        _data(pairs="deblur")
    with pytest.raises(UserInputError, match="sigma"):
        Degradation("denoise", sigma=0)


def test_pairs_stay_aligned_through_augmentation():
    torch.manual_seed(0)
    target = torch.rand(3, 16, 16)
    flipped = shifted = 0
    for _ in range(20):
        x, y = PairAugment(hflip=True)(target * 0.5, target)
        assert torch.equal(x, y * 0.5)
        flipped += torch.equal(y, target.flip(-1))
        shifted += not torch.equal(y, target) and not torch.equal(y, target.flip(-1))
    assert flipped and shifted  # the augmentation did move the images


def _write_pairs(root, names, size=16, offset=0):
    for side in ("input", "target"):
        (root / side).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        clean = rng.integers(0, 200, (size, size), dtype=np.uint8)
        Image.fromarray(clean).save(root / "target" / name)
        Image.fromarray(clean + offset).save(root / "input" / name)


def test_paired_folders_load_by_name_and_augment_together(tmp_path):
    _write_pairs(tmp_path, [f"{i:02d}.png" for i in range(10)], offset=20)
    bundle = TASK.load_data(DataConfig(str(tmp_path), img_size=16))
    assert bundle.class_names == ["paired"] and bundle.in_chans == 1
    assert sum(bundle.count(s) for s in ("train", "val", "test")) == 10
    x, y = next(bundle.batches("train", 10))
    assert np.allclose(x - y[:, 0], 20 / 255, atol=1e-6)
    ds = bundle.dataset("train", augment=True)
    for i in range(len(ds)):
        x, y = ds[i]
        assert torch.allclose(x - y[0], torch.full_like(x, 20 / 255), atol=1e-6)
    with pytest.raises(UserInputError, match="already has inputs|paired input"):
        TASK.load_data(DataConfig(str(tmp_path), img_size=16, pairs="denoise"))


def test_mismatched_pair_names_are_refused_by_name(tmp_path):
    _write_pairs(tmp_path, ["a.png", "b.png"])
    Image.new("L", (16, 16)).save(tmp_path / "input" / "stray.png")
    Image.new("L", (16, 16)).save(tmp_path / "target" / "other.png")
    with pytest.raises(UserInputError, match=r"only in .*input/ \(e.g. stray.png\).*only in .*target/ \(e.g. other.png\)"):
        TASK.load_data(DataConfig(str(tmp_path), img_size=16))


def test_psnr_and_ssim_known_answers():
    rng = np.random.default_rng(0)
    target = rng.random((3, 1, 16, 16))
    assert per_image_psnr(target, target).tolist() == [PSNR_CAP] * 3
    assert per_image_ssim(target, target) == pytest.approx([1.0] * 3)
    shifted = target + 0.1  # MSE 0.01 -> PSNR 20 dB; 0.01 -> 40 dB
    assert per_image_psnr(shifted, target) == pytest.approx([20.0] * 3, abs=1e-4)
    assert per_image_psnr(target + 0.01, target) == pytest.approx([40.0] * 3, abs=1e-4)
    assert (per_image_ssim(rng.random((3, 1, 16, 16)), target) < 0.2).all()
    m = image_metrics(ImagePredictions(target, shifted, target.copy()))
    assert m["psnr"] == PSNR_CAP and m["input_psnr"] == pytest.approx(20.0, abs=1e-6)
    assert m["psnr_gain"] == pytest.approx(PSNR_CAP - 20.0) and m["ssim"] == pytest.approx(1.0)


def test_export_comparator_judges_by_psnr():
    ref = {"image": np.full((2, 1, 8, 8), 0.5, np.float32)}
    close = TASK.compare(ref, {"image": ref["image"] + 1e-3})  # MSE 1e-6: 60 dB
    assert close["psnr_db"] == pytest.approx(60.0, abs=1e-3) and TASK.judge(close, TASK.tolerance("fp32")) == []
    mid = TASK.compare(ref, {"image": ref["image"] + 0.0125})  # 38 dB: fine for INT8, not for fp32
    assert mid["psnr_db"] == pytest.approx(38.06, abs=0.01) and TASK.judge(mid, TASK.tolerance("int8")) == []
    assert any("PSNR against PyTorch 38.1 dB < 40 dB" in r for r in TASK.judge(mid, TASK.tolerance("fp32")))
    far = TASK.compare(ref, {"image": ref["image"] + 0.05})  # 26 dB
    assert len(TASK.judge(far, TASK.tolerance("int8"))) == 2  # the mean and the worst image
    broken = TASK.compare(ref, {"image": np.full_like(ref["image"], np.nan)})
    assert TASK.judge(broken, TASK.tolerance("int8"))


def test_gate_pairs_per_image_psnr_and_ssim():
    rng = np.random.default_rng(0)
    targets = rng.random((20, 1, 16, 16))
    inputs = np.clip(targets + rng.normal(0, 0.1, targets.shape), 0, 1)
    good = np.clip(targets + rng.normal(0, 0.02, targets.shape), 0, 1)
    worse = np.clip(targets + rng.normal(0, 0.05, targets.shape), 0, 1)
    base, cand = ImagePredictions(targets, inputs, good), ImagePredictions(targets, inputs, worse)
    ev = TASK.gate_evidence(base, cand, ["denoise"])
    assert [m.key for m in ev.metrics] == ["psnr", "ssim"] and ev.n == 20 and not ev.constant
    assert ev.metrics[0].delta_points == pytest.approx(-8.0, abs=0.5)  # noise x2.5: -20 log10 2.5 = -8 dB
    assert ev.resample(np.tile(np.arange(20), (3, 1))) == pytest.approx(np.tile([m.delta_points for m in ev.metrics], (3, 1)))
    result = check(base, cand, ["denoise"], GateConfig(max_drop=1.0, n_boot=200), task=TASK)
    assert not result.passed and "PSNR (dB) dropped" in result.reasons[0]
    same = check(base, base, ["denoise"], GateConfig(n_boot=200), task=TASK)
    assert same.passed and same.delta_ci_points == (0.0, 0.0)
    with pytest.raises(UserInputError, match="same test images"):
        TASK.gate_evidence(base, ImagePredictions(targets[:5], inputs[:5], good[:5]), ["denoise"])


@pytest.mark.slow
def test_training_beats_the_noisy_input_and_the_export_validates_by_psnr(tmp_path):
    from edgeres.export import ExportConfig, export_checkpoint
    from edgeres.train.config import TrainConfig
    from edgeres.train.loop import train

    data = DataConfig("shapes", img_size=16, shapes_per_class=16, sigma=0.2)  # 48 train, 16 val, 16 test images
    cfg = TrainConfig(model="test_unet", data=data, out=str(tmp_path / "run"), epochs=6, batch_size=8, lr=3e-3,
                      threads=2)
    result = train(cfg)
    test = result.metrics["test"]
    assert test["psnr"] > test["input_psnr"] + 1.0, test  # the model removes noise the input had
    assert result.history[-1]["val_psnr"] > result.history[0]["val_psnr"]
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["task"] == "image2image" and meta["class_names"] == ["denoise"] and meta["metrics"]["test"]["psnr"]
    assert (tmp_path / "run" / "examples_test.png").is_file()
    record = export_checkpoint(tmp_path / "run", tmp_path / "exp", ExportConfig(formats=("onnx",), validate_size=16))
    (entry,) = record["artifacts"]
    assert entry["status"] == "ok" and not entry["validation"]["failures"]
    assert entry["validation"]["psnr_db"] >= 40 and entry["validation"]["val_psnr"] == pytest.approx(
        entry["validation"]["source_val_psnr"], abs=0.01)
