"""LPIPS on a local torchvision backbone file: zero for an image with itself, growing with noise, the file's own
weights in the trunk, wrong or missing files refused (exit 2); `edgeres fid --lpips-weights`; LPIPS, FID and KID
columns in a recipe's image-to-image comparison, alike in compare.md, compare.json and compare.html; and a
classifier comparison refusing them. No weights are downloaded: random torchvision networks stand in."""
from __future__ import annotations

import html
import json

import numpy as np
import pytest
import torch
import torchvision
import yaml

from edgeres.errors import UserInputError
from edgeres.tasks.image2image_lpips import LPIPS_FILES, lpips_network, lpips_scores

SIZE = 16


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One thread (two on two shared, busy cores wait on each other), and later test modules get theirs back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save(tmp_path_factory, build, name, seed=0):
    torch.manual_seed(seed)
    path = tmp_path_factory.mktemp("weights") / name
    torch.save(build(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def alex(tmp_path_factory):
    """A random AlexNet saved as torchvision saves its weights: the user's local backbone file."""
    return _save(tmp_path_factory, torchvision.models.alexnet, "alexnet.pth")


@pytest.fixture(scope="module")
def squeeze(tmp_path_factory):
    return _save(tmp_path_factory, torchvision.models.squeezenet1_1, "squeezenet.pth")


def _images(n=4, chans=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, chans, SIZE, SIZE)).astype(np.float32)


def _noisy(images, sigma, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0, sigma, images.shape), 0, 1).astype(np.float32)


# --- the metric ---

@pytest.mark.parametrize("backbone", ["alex", "squeeze"])
def test_lpips_is_zero_for_an_image_with_itself_and_grows_with_noise(backbone, request):
    network = lpips_network(request.getfixturevalue(backbone))
    assert network.net == backbone and network.label.startswith(f"LPIPS {backbone} (")
    for chans in (1, 3):  # grey repeats to three channels
        clean = _images(chans=chans)
        assert lpips_scores(clean, clean, network)["lpips"] == pytest.approx(0.0, abs=1e-7)
        scores = [lpips_scores(_noisy(clean, sigma), clean, network) for sigma in (0.02, 0.08, 0.3)]
        values = [s["lpips"] for s in scores]
        assert 0 < values[0] < values[1] < values[2], values
        assert scores[0]["images"] == 4 and scores[0]["lpips_upsampled_to"] == 32  # 16 px: too small for AlexNet


def test_the_trunk_holds_the_files_weights(squeeze, tmp_path_factory):
    network = lpips_network(squeeze)
    saved = torch.load(squeeze, weights_only=True)
    fire = network.module.net.slice2.get_submodule("3")  # slice2 keeps torchvision's index: features.3
    assert torch.equal(fire.squeeze.weight, saved["features.3.squeeze.weight"])
    other = lpips_network(_save(tmp_path_factory, torchvision.models.squeezenet1_1, "other.pth", seed=1))
    clean = _images()
    noisy = _noisy(clean, 0.1)
    assert lpips_scores(noisy, clean, network)["lpips"] != pytest.approx(lpips_scores(noisy, clean, other)["lpips"])


def test_a_wrong_or_missing_file_is_refused_naming_the_expected_files(tmp_path_factory, tmp_path):
    resnet = _save(tmp_path_factory, torchvision.models.resnet18, "resnet18.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    for path, why in ((resnet, "none of the networks"), (tmp_path / "missing.pth", "does not exist"),
                      (garbage, "weights_only")):
        with pytest.raises(UserInputError, match=why) as error:
            lpips_network(path)
        assert all(name in str(error.value) for name in LPIPS_FILES.values())


# --- the fid command and the comparison ---

@pytest.fixture(scope="module")
def compared(pictures, alex, feature_classifier, run_edgeres, tmp_path_factory):
    """Two denoisers compared through a recipe's compare stage with LPIPS and checkpoint-feature FID/KID."""
    tmp = tmp_path_factory.mktemp("run")
    recipe = {"name": "cmp", "data": {"source": str(pictures), "img_size": SIZE, "pairs": "denoise", "sigma": 0.2},
              "compare": {"models": ["test_unet", "unet_resnet18"], "epochs": 1, "lr": 0.003, "batch_size": 8,
                          "threads": 1, "rounds": 1, "runs": 3, "lpips_weights": str(alex),
                          "fid_features": str(feature_classifier)}}
    path = tmp / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert run_edgeres("run", path, "--out", tmp / "run") == 0
    return tmp / "run" / "compare"


def test_compare_adds_lpips_fid_and_kid_alike_in_md_json_and_html(compared):
    from edgeres.compare.output import table_rows

    document = json.loads((compared / "compare.json").read_text())
    headers, rows = table_rows(document)
    assert headers[:8] == ["model", "MSE", "PSNR dB", "SSIM", "gain dB", "LPIPS", "FID", "KID"]
    assert [r[0] for r in rows] == ["test_unet", "unet_resnet18"]
    for variant in document["variants"]:
        assert variant["metrics"]["LPIPS"] == variant["image_scores"]["lpips"] > 0
        assert variant["metrics"]["FID"] == variant["image_scores"]["fid"]
    scores = document["image_scores"]
    assert scores["comparable_with_published"] is False
    assert "not comparable with published Inception FID" in scores["feature_network"]
    assert scores["inputs"]["lpips"] > 0 and scores["lpips_network"] == "LPIPS alex (alexnet.pth)"
    md = (compared / "compare.md").read_text()
    page = html.unescape((compared / "compare.html").read_text())
    for row in rows:
        assert "| " + " | ".join(row) + " |" in md
        assert all(f">{c}<" in page for c in row[5:8])  # the same LPIPS, FID and KID cells
    for text in (md, " ".join(page.split())):
        assert "not comparable with published Inception FID" in text and "LPIPS alex (alexnet.pth)" in text


def test_fid_command_prints_lpips_alone_or_beside_fid(edgeres, compared, alex, feature_classifier, tmp_path):
    checkpoint = compared / "models" / "test_unet"
    code, text = edgeres("fid", checkpoint, "--lpips-weights", alex, "--json", tmp_path / "lpips.json")
    assert code == 0, text
    scores = json.loads((tmp_path / "lpips.json").read_text())
    assert "fid" not in scores["output"] and "FID" not in text.split("LPIPS alex")[1]
    for row in ("output", "input"):
        assert f"{scores[row]['lpips']:.4f}" in text
    code, text = edgeres("fid", checkpoint, "--lpips-weights", alex, "--fid-features", feature_classifier,
                         "--json", tmp_path / "both.json")
    both = json.loads((tmp_path / "both.json").read_text())
    assert code == 0 and {"fid", "kid_mean", "lpips"} <= set(both["output"])
    assert both["output"]["lpips"] == pytest.approx(scores["output"]["lpips"])
    code, text = edgeres("fid", checkpoint)
    assert code == 2 and "--lpips-weights" in text and "weights-inception-2015-12-05-6726825d.pth" in text


def test_fid_command_refuses_a_wrong_lpips_file(edgeres, feature_classifier, tmp_path):
    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    code, text = edgeres("fid", feature_classifier, "--lpips-weights", wrong)
    assert code == 2 and "alexnet-owt-7be5be79.pth" in text


def test_a_classifier_comparison_refuses_image_scores(edgeres, alex, tmp_path):
    code, text = edgeres("compare", "-m", "test_resnet", "--data", "digits", "--img-size", "16", "--out",
                         tmp_path / "cmp", "--lpips-weights", alex)
    assert code == 2 and "score image-to-image outputs" in text and "classification" in text
    assert not (tmp_path / "cmp").exists()  # refused before anything was trained
