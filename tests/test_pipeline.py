import subprocess
import sys

import pytest
import yaml

from edgeres.artifacts import read_json
from edgeres.errors import UserInputError
from edgeres.pipeline import run_recipe
from edgeres.recipe import list_recipes, load_recipe

MINI = {
    "name": "mini",
    "data": {"source": "digits", "img_size": 16},
    "train": {"model": "test_se_resnet", "epochs": 1, "lr": 0.003},
    "export": {"to": ["onnx"], "precisions": ["fp32"]},
    "bench": {"runs": 5, "warmup": 1, "budget_s": 2, "min_seconds": 0},
    # The ONNX export of the trained model must keep its accuracy: a real limit it can fail.
    "check": {"candidate": "model.fp32.onnx", "max_drop": 0.5},
    "report": {},
}
STAGES = ("train", "export", "bench", "check", "report")


def _write(tmp_path, recipe, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    recipe = load_recipe(_write(tmp, MINI))
    return tmp / "run", recipe, run_recipe(recipe, out=tmp / "run")


@pytest.mark.slow
def test_pipeline_runs_every_stage_and_records_a_manifest(first_run):
    run, _, summary = first_run
    assert summary["stages"] == {s: "ran" for s in STAGES}
    manifest = read_json(run / "manifest.json")
    for stage, rec in manifest["stages"].items():
        assert rec["status"] == "done" and rec["outputs"] and rec["wall_s"] >= 0 and rec["versions"]["torch"], stage
    assert "model.safetensors" in manifest["stages"]["train"]["outputs"]
    assert (run / "report" / "report.html").is_file() and (run / "check" / "junit.xml").is_file()
    results = read_json(run / "bench" / "results.json")
    assert [a["backend"] for a in results["artifacts"]] == ["torch", "onnxruntime"]


def test_gate_judges_the_export_on_the_whole_test_split(first_run):
    from edgeres.data import DataConfig, load_data

    run, _, summary = first_run
    gate = read_json(run / "check" / "gate.json")
    assert summary["passed"] is True and gate["passed"] is True and gate["candidate_name"].endswith("fp32.onnx")
    assert gate["n"] == len(load_data(DataConfig("digits", img_size=16)).indices["test"])
    assert gate["candidate_accuracy"] == gate["baseline_accuracy"] > 0.2  # fp32 ONNX predicts as PyTorch does


def test_rerun_skips_unchanged_stages(first_run):
    run, recipe, _ = first_run
    assert set(run_recipe(recipe, out=run)["stages"].values()) == {"skipped"}


def _own_copy(first_run, tmp_path):
    """A copy of the shared run, so that a test's changes never reach another test."""
    import shutil

    shutil.copytree(first_run[0], tmp_path / "run")
    return tmp_path / "run", first_run[1]


def test_a_damaged_output_is_remade(first_run, tmp_path):
    run, recipe = _own_copy(first_run, tmp_path)
    (run / "report" / "report.md").write_text("edited by hand")
    stages = run_recipe(recipe, out=run)["stages"]
    assert stages["report"] == "ran" and stages["bench"] == "skipped"


def test_interrupted_training_stage_resumes(first_run, tmp_path):
    run, recipe = _own_copy(first_run, tmp_path)
    from edgeres.pipeline import Manifest

    manifest = Manifest(run)
    manifest.record("train", status="started")  # as a killed run leaves it: started, with last/ on disk
    (run / "train" / "history.json").unlink()
    stages = run_recipe(recipe, out=run)["stages"]
    assert stages["train"] == "resumed"


@pytest.mark.slow
def test_changed_stage_config_reruns_it_and_what_follows(first_run, tmp_path):
    run, _ = _own_copy(first_run, tmp_path)
    changed = load_recipe(_write(tmp_path, {**MINI, "bench": {**MINI["bench"], "runs": 6}}, "r2.yaml"))
    stages = run_recipe(changed, out=run)["stages"]
    assert stages == {"train": "skipped", "export": "skipped", "bench": "ran", "check": "ran", "report": "ran"}


@pytest.mark.parametrize("patch,field", [
    ({"train": {"model": "test_resnet", "epochs": 0}}, r"train\.epochs"),
    # An unknown key is the file's own text: it is located by line, not quoted.
    ({"data": {"source": "digits", "img_size": 16, "colour": True}}, r"data \(line \d+, column \d+\): unknown field;"),
    # ... with the schema's nearest name as a guess (a schema name, not the file's text)
    ({"train": {"model": "test_resnet", "epochz": 3}}, r"train \(line \d+, column \d+\): unknown field \(did you "
                                                       r"mean epochs\?\); expected one of epochs"),
    ({"export": {"to": ["tflite"]}}, r"export\.to"),
])
def test_invalid_recipe_names_the_field(tmp_path, patch, field):
    with pytest.raises(UserInputError, match=field):
        load_recipe(_write(tmp_path, {**MINI, **patch}))


def test_packaged_demo_recipe_is_valid():
    assert "demo" in list_recipes()
    demo = load_recipe("demo")
    assert demo.train.model == "se_resnet18" and demo.data.img_size == 64 and demo.prune.macs == 0.5
    with pytest.raises(UserInputError, match="packaged recipes"):
        load_recipe("no-such-recipe")


@pytest.mark.slow
def test_cli_run_exits_1_when_the_gate_fails(first_run, tmp_path):
    copy, _ = _own_copy(first_run, tmp_path)
    # Two thirds of the channels cut and no fine-tuning: the exported candidate loses far more than 0.5 points.
    gutted = _write(tmp_path, {**MINI, "prune": {"macs": 0.3, "round_to": 1, "finetune_epochs": 0, "distill": False}})
    res = subprocess.run([sys.executable, "-m", "edgeres.cli", "run", str(gutted), "--out", str(copy)],
                         capture_output=True, text=True)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "accuracy dropped" in res.stderr and "report:" in res.stderr
    assert "train: unchanged, skipped" in res.stderr and "prune: running" in res.stderr
    gate = read_json(copy / "check" / "gate.json")
    assert gate["passed"] is False and gate["delta_points"] < -0.5


@pytest.mark.slow
def test_detect_demo_recipe_runs_every_stage_on_a_tiny_detector(tmp_path):
    """The packaged detect-demo, shrunk (tiny model, 64 px, few scenes, one epoch): data, train, prune with
    distillation, ONNX and OpenVINO INT8 exports, bench, the mAP gate and the report all run on a detector."""
    demo = load_recipe("detect-demo").model_dump()
    assert demo["train"]["model"] == "yolo_resnet18" and demo["data"]["source"] == "shapes-det"
    demo["data"].update(img_size=64, detect_images=48)
    demo["train"].update(model="test_yolo", epochs=1)
    demo["prune"].update(finetune_epochs=1, round_to=1)  # the tiny model's 8-wide layers cannot halve in steps of 8
    demo["export"].update(calib_size=8)
    demo["bench"].update(runs=3, warmup=1, budget_s=2, min_seconds=0)
    summary = run_recipe(load_recipe(_write(tmp_path, demo)), out=tmp_path / "run")
    assert set(summary["stages"]) >= {"train", "prune", "export", "bench", "check", "report"}
    results = read_json(tmp_path / "run" / "bench" / "results.json")
    assert {a["task"] for a in results["artifacts"]} == {"detection"}
    gate = read_json(tmp_path / "run" / "check" / "gate.json")
    assert [m["key"] for m in gate["metric_checks"]] == ["map", "map50"]
    assert "mAP@0.5:0.95" in (tmp_path / "run" / "report" / "report.md").read_text()
