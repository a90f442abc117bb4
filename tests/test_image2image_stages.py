"""Image-to-image through the stages: train's CLI and the recipe (pairs, sigma), the report's and the gate's units
(dB), `edgeres check` on a broken generator and an INT8 export, bench, predict's output images, FID/KID on a
supplied feature network, and compare's table."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from edgeres.errors import UserInputError
from edgeres.tasks import get_task
from edgeres.tasks.image2image_metrics import ImagePredictions

TASK = get_task("image2image")
SIZE = 16


@pytest.fixture(scope="module")
def trained(pictures, run_edgeres, tmp_path_factory):
    """A test_unet denoiser trained through `edgeres train --pairs denoise --sigma 0.2`."""
    run = tmp_path_factory.mktemp("i2i") / "run"
    assert run_edgeres("train", "-m", "test_unet", "-d", pictures, "-o", run, "--epochs", 4, "--img-size", SIZE,
                       "--batch-size", 4, "--lr", 0.003, "--pairs", "denoise", "--sigma", 0.2, "--threads", 2) == 0
    return run


def _broken(run, out):
    """`run`'s generator with its head negated: it adds the noise it learned to remove (a descendant of `run`)."""
    from edgeres.checkpoint import checkpoint_sha256, load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(run)
    with torch.no_grad():
        model.head.weight.neg_()
        model.head.bias.neg_()
    meta.parent_sha256 = checkpoint_sha256(run)
    return save_checkpoint(model, meta, out)


# --- 1. CLI and recipe ---

def test_train_takes_pairs_and_sigma_from_the_command_line(trained):
    recorded = json.loads((trained / "train.json").read_text())["data"]
    assert (recorded["pairs"], recorded["sigma"]) == ("denoise", 0.2)
    test = json.loads((trained / "metrics.json").read_text())["test"]
    # sigma 0.2 leaves about 14 dB; the trained model is scored against that noisier input
    assert test["input_psnr"] < 16 and test["psnr"] > test["input_psnr"] + 1.0


def test_bad_pairs_exit_2_naming_the_choices(edgeres, pictures, tmp_path):
    code, text = edgeres("train", "-m", "test_unet", "-d", pictures, "-o", tmp_path / "r", "--pairs", "blur")
    assert code == 2 and "pairs must be one of" in text and "denoise" in text


def test_the_recipe_data_stage_takes_pairs_and_sigma():
    from pydantic import ValidationError

    from edgeres.data import DataConfig
    from edgeres.recipe import DataStage

    stage = DataStage(source="digits", pairs="sr2", sigma=0.05)
    config = DataConfig(**stage.model_dump())  # how the pipeline builds it
    assert (config.pairs, config.sigma) == ("sr2", 0.05)
    for bad in ({"pairs": "blur"}, {"sigma": 0}, {"sigma": 1.5}):
        with pytest.raises(ValidationError):
            DataStage(source="digits", **bad)


# --- 2. units in the report and the gate ---

def _artifact(name, psnr):
    return {"name": name, "backend": "torch", "precision": "fp32", "task": "image2image",
            "metrics": {"psnr": psnr, "ssim": 0.9, "mse": 0.001}}


def _predictions(noise: float, seed: int = 0) -> ImagePredictions:
    rng = np.random.default_rng(seed)
    targets = rng.random((12, 1, SIZE, SIZE)).astype(np.float32)
    inputs = np.clip(targets + rng.normal(0, 0.1, targets.shape), 0, 1).astype(np.float32)
    outputs = np.clip(targets + rng.normal(0, noise, targets.shape), 0, 1).astype(np.float32)
    return ImagePredictions(targets, inputs, outputs)


def test_the_report_and_the_gate_show_psnr_in_db(tmp_path):
    from edgeres.evaluate.gate import GateConfig, check
    from edgeres.report.render import render_report, summary_rows

    columns, rows = summary_rows({"baseline": "a", "artifacts": [_artifact("a", 34.45), _artifact("b", 34.33)]})
    psnr, delta = columns.index("PSNR dB"), columns.index("Δ PSNR (dB)")
    assert [r[psnr] for r in rows] == ["34.45", "34.33"] and [r[delta] for r in rows] == ["+0.00", "-0.12"]
    base = _predictions(0.02)
    noise = np.random.default_rng(1).normal(0, 0.05, base.targets.shape)
    worse = ImagePredictions(base.targets, base.inputs, np.clip(base.targets + noise, 0, 1).astype(np.float32))
    result = check(base, worse, ["denoise"], GateConfig(max_drop=1.0, n_boot=200), task=TASK)
    assert not result.passed
    psnr_check = result.checks[0]
    assert psnr_check.limit == "drop <= 1 dB" and psnr_check.measured.split()[1] == "dB"
    assert result.reasons[0].startswith("PSNR (dB) dropped") and "dB" in result.reasons[0]
    results = {"artifacts": [_artifact("a", 34.45)], "gate": result.to_dict()}
    text = render_report(results, tmp_path)["report.md"].read_text()
    gate_line = next(line for line in text.splitlines() if line.startswith("PSNR (dB) "))
    assert " dB (baseline)" in gate_line and "points" not in gate_line
    assert "%" not in gate_line.replace("95% paired-bootstrap", "")


def test_classifier_figures_keep_percent_and_points():
    from edgeres.report.render import summary_rows

    artifacts = [{"name": n, "task": "classification", "metrics": {"accuracy": a}} for n, a in (("a", 0.9), ("b", 0.88))]
    columns, rows = summary_rows({"baseline": "a", "artifacts": artifacts})
    metric, delta = get_task("classification").report_columns
    assert rows[1][columns.index(metric)] == "88.00" and rows[1][columns.index(delta)] == "-2.00"


# --- 3. check and bench ---

def test_check_fails_a_broken_generator_with_exit_1(edgeres, trained, tmp_path):
    broken = _broken(trained, tmp_path / "broken")
    code, text = edgeres("check", "--baseline", trained, "--candidate", broken, "--max-drop", "1")
    assert code == 1 and "PSNR (dB) dropped" in text and "> allowed 1" in text
    code, text = edgeres("check", "--baseline", trained, "--candidate", trained, "--max-drop", "1")
    assert code == 0 and "gate passed" in text


@pytest.mark.slow
def test_check_passes_the_int8_openvino_export_and_bench_measures_it(edgeres, trained, tmp_path):
    from edgeres.bench.run import BenchConfig, bench_artifacts
    from edgeres.export import ExportConfig, export_checkpoint
    from edgeres.report.render import render_report

    record = export_checkpoint(trained, tmp_path / "exp", ExportConfig(formats=("openvino",), precisions=("int8",),
                                                                      calib_size=32))
    (entry,) = record["artifacts"]
    int8 = tmp_path / "exp" / entry["file"]
    code, text = edgeres("check", "--baseline", trained, "--candidate", int8, "--max-drop", "1",
                         "--json", tmp_path / "gate.json")
    assert code == 0 and "gate passed" in text
    gate = json.loads((tmp_path / "gate.json").read_text())
    assert [m["unit"] for m in gate["metric_checks"]] == ["dB", "points"]
    results = bench_artifacts([trained, int8], BenchConfig(runs=3, warmup=1, budget_s=1, min_seconds=0,
                                                           end_to_end=False))
    for a in results["artifacts"]:
        assert a["latency"] and a["size_bytes"] > 0 and a["metrics"]["psnr"] > 10 and 0 < a["metrics"]["ssim"] <= 1
    assert "| PSNR dB |" in render_report(results, tmp_path / "report")["report.md"].read_text()


# --- 4. predict ---

def test_predict_writes_the_restored_image_at_the_inputs_size(trained, pictures, tmp_path):
    from edgeres.predict import predict_images

    images = tmp_path / "in"
    images.mkdir()
    Image.open(pictures / "p00.png").resize((40, 24)).save(images / "wide.png")
    doc = predict_images(trained, images, tmp_path / "out")
    (record,) = doc["predictions"]
    written = Image.open(tmp_path / "out" / record["annotated"])
    assert written.size == (40, 24)  # the restored picture itself, not input and output side by side
    assert "png_base64" not in record and record["model_size"] == [SIZE, SIZE]
    assert np.asarray(written).std() > 0


# --- 5. FID and KID ---

def test_fid_and_kid_on_a_classifiers_features(feature_classifier):
    from edgeres.tasks.image2image_fid import NOT_COMPARABLE, checkpoint_network, distribution_scores

    network = checkpoint_network(feature_classifier)
    assert not network.comparable and NOT_COMPARABLE in network.label
    clean = _predictions(0.01)
    same = distribution_scores(clean.targets, clean.targets, network)
    near = distribution_scores(clean.outputs, clean.targets, network)
    far = distribution_scores(clean.inputs, clean.targets, network)
    assert abs(same["fid"]) < 1e-3 and same["fid"] < near["fid"] < far["fid"]
    assert near["kid_mean"] < far["kid_mean"]
    assert far["kid_subset_size"] == 12 and far["comparable_with_published"] is False  # 12 images < 1000


def test_fid_command_labels_checkpoint_features_and_needs_the_inception_file(edgeres, trained, feature_classifier,
                                                                             tmp_path):
    code, text = edgeres("fid", trained, "--fid-features", feature_classifier, "--json", tmp_path / "fid.json")
    assert code == 0 and "not comparable with published Inception FID" in " ".join(text.split())
    scores = json.loads((tmp_path / "fid.json").read_text())
    assert scores["output"]["comparable_with_published"] is False
    assert scores["output"]["fid"] < scores["input"]["fid"]  # the denoised images sit nearer the clean ones
    code, text = edgeres("fid", trained)
    assert code == 2 and "weights-inception-2015-12-05-6726825d.pth" in text
    code, text = edgeres("fid", trained, "--inception-weights", tmp_path / "missing.pth")
    assert code == 2 and "missing.pth does not exist" in text


def test_fid_refuses_a_checkpoint_that_is_no_classifier(trained):
    from edgeres.tasks.image2image_fid import checkpoint_network

    with pytest.raises(UserInputError, match="classification checkpoint"):
        checkpoint_network(trained)


# --- 6. compare ---

def test_compare_tabulates_the_tasks_own_columns(pictures, tmp_path):
    from edgeres.compare import CompareConfig, LatencyConfig, compare_models
    from edgeres.compare.output import table_rows
    from edgeres.data import DataConfig

    data = DataConfig(str(pictures), img_size=SIZE, pairs="denoise", sigma=0.2)
    with pytest.raises(UserInputError, match="models of one task"):
        CompareConfig(models=("test_resnet", "test_unet"), data=data, out=str(tmp_path / "mixed"))
    document = compare_models(CompareConfig(models=("test_unet",), data=data, out=str(tmp_path / "cmp"), epochs=1,
                                            batch_size=8, threads=2, latency=LatencyConfig(rounds=1, runs=3)))
    headers, rows = table_rows(document)
    assert headers == ["model", "MSE", "PSNR dB", "SSIM", "gain dB", "params", "MMACs", "train s", "s/epoch",
                       "p50 ms"]
    assert rows[0][0] == "test_unet" and float(rows[0][2]) > 10 and "–" not in rows[0]
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert "PSNR dB" in html and "Per-class recall" not in html


def test_classes_narrow_a_built_in_set_for_pairs():
    from edgeres.data import DataConfig

    some = TASK.load_data(DataConfig("digits", img_size=SIZE, classes=("0", "1")))
    every = TASK.load_data(DataConfig("digits", img_size=SIZE))
    assert sum(map(len, some.indices.values())) == 360 < sum(map(len, every.indices.values())) == 1797
