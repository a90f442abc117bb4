"""A recipe's explain stage (Grad-CAM panel, explanation drift per artifact), the drift gate condition, the
report's evaluation and explanation sections, and `edgeres run --data/--weights`."""
import logging
import warnings

import pytest

from edgeres.artifacts import read_json
from edgeres.errors import UserInputError
from edgeres.pipeline import run_recipe
from edgeres.recipe import load_recipe, with_overrides
from test_pipeline import _write

RECIPE = {
    "name": "explained",
    "data": {"source": "shapes", "img_size": 24, "shapes_per_class": 12, "classes": ["round", "ring"]},
    "train": {"model": "test_se_resnet", "epochs": 2, "lr": 0.003, "freeze": "layer2"},
    "export": {"to": ["onnx"], "precisions": ["fp32"]},
    "bench": {"runs": 5, "warmup": 1, "budget_s": 2, "min_seconds": 0},
    "explain": {"panel_images": 4, "drift_images": 3},
    # The FP32 ONNX file of the same weights looks where the checkpoint looks: drift stays near 0.
    "check": {"candidate": "model.fp32.onnx", "max_drop": 0.5, "max_explanation_drift": 0.05,
              "explanation_images": 3},
    "report": {},
}


@pytest.fixture(scope="module")
def explained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explained")
    recipe = load_recipe(_write(tmp, RECIPE))
    return tmp / "run", run_recipe(recipe, out=tmp / "run")


@pytest.mark.slow
def test_explain_stage_writes_a_panel_and_drift_per_artifact(explained_run):
    run, summary = explained_run
    assert summary["stages"]["explain"] == "ran" and summary["passed"] is True
    doc = read_json(run / "explain" / "explanations.json")
    assert (run / "explain" / "gradcam_panel.png").is_file() and len(doc["panel"]["images"]) == 4
    assert [d["name"] for d in doc["drift"]] == ["model.fp32.onnx"]
    assert doc["drift"][0]["rank_correlation_mean"] > 0.99 and len(doc["drift"][0]["images"]) == 3
    gate = read_json(run / "check" / "gate.json")
    assert [c["passed"] for c in gate["checks"] if c["name"] == "explanation drift"] == [True]


@pytest.mark.slow
def test_report_shows_the_binary_evaluation_and_the_explanations(explained_run):
    run, _ = explained_run
    md = (run / "report" / "report.md").read_text()
    assert "test_se_resnet (trained) on the test split" in md
    assert "Two classes, positive: ring" in md and "chosen on val" in md
    assert "| model.fp32.onnx |" in md and "## Explanations" in md
    assert (run / "report" / "plots" / "gradcam_panel.png").is_file()


def test_freeze_without_weights_is_not_applied(tmp_path, caplog):
    recipe = load_recipe(_write(tmp_path, {**RECIPE, "train": {**RECIPE["train"], "epochs": 1}, "export": None,
                                           "bench": None, "explain": None, "check": None, "report": None}))
    with caplog.at_level(logging.WARNING, logger="edgeres"):
        run_recipe(recipe, out=tmp_path / "run")
    assert "freeze: layer2 is not applied" in caplog.text
    assert read_json(tmp_path / "run" / "train" / "train.json")["freeze"] is None


def test_overrides_move_every_data_stage_and_start_from_weights(tmp_path):
    recipe = load_recipe(_write(tmp_path, {**RECIPE, "compare": {"models": ["test_resnet"],
                                                                 "data": RECIPE["data"]}}))
    moved = with_overrides(recipe, data="/some/folder", weights="w.safetensors")
    assert moved.data.source == moved.compare.data.source == "/some/folder"
    assert moved.data.classes is None and moved.compare.data.classes is None  # made for the built-in data
    assert moved.train.weights == "w.safetensors" and moved.train.freeze == "layer2"
    assert recipe.data.source == "shapes"  # the loaded recipe is not changed
    picked = with_overrides(recipe, data="/some/folder", classes=("a", "b"))  # as the CLI parses them
    assert picked.data.classes == picked.compare.data.classes == ["a", "b"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydantic warns when a field holds another type than declared
        picked.model_dump()
    with pytest.raises(UserInputError, match="--data"):
        with_overrides(recipe, classes=["a", "b"])
    only_compare = load_recipe(_write(tmp_path, {"name": "c", "data": RECIPE["data"],
                                                 "compare": {"models": ["test_resnet"]}}, "c.yaml"))
    with pytest.raises(UserInputError, match="--weights"):
        with_overrides(only_compare, weights="w.safetensors")
    transfer = load_recipe(_write(tmp_path, {"name": "t", "data": RECIPE["data"],
                                             "compare": {"models": ["test_resnet", "test_se_resnet"],
                                                         "transfer": ["test_resnet"]}}, "t.yaml"))
    assert with_overrides(transfer, weights="w.safetensors").compare.weights == {"test_resnet": "w.safetensors"}
    assert with_overrides(transfer).compare.weights == {}


def test_a_recipe_prunes_unstructured(tmp_path):
    recipe = load_recipe(_write(tmp_path, {"name": "sparse", "data": {"source": "digits", "img_size": 16},
                                           "train": {"model": "test_resnet", "epochs": 1},
                                           "prune": {"sparsity": 0.5, "finetune_epochs": 0}}))
    run_recipe(recipe, out=tmp_path / "run")
    compression = read_json(tmp_path / "run" / "pruned" / "model.json")["compression"]
    assert compression["prune"]["kind"] == "unstructured" and compression["prune"]["sparsity"] == 0.5
    with pytest.raises(UserInputError, match="exactly one of"):
        run_recipe(load_recipe(_write(tmp_path, {**recipe.model_dump(exclude_none=True),
                                                 "prune": {"sparsity": 0.5, "macs": 0.5}}, "both.yaml")),
                   out=tmp_path / "run2")


def test_a_packaged_name_is_found_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "resnet-depth").mkdir()  # e.g. a run directory named after the recipe
    monkeypatch.chdir(tmp_path)
    assert load_recipe("resnet-depth").name == "resnet-depth"
