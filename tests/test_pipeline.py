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
    "prune": {"macs": 0.7, "round_to": 1, "finetune_epochs": 0, "distill": False},
    "export": {"to": ["onnx"], "precisions": ["fp32"]},
    "bench": {"runs": 5, "warmup": 1, "budget_s": 2, "min_seconds": 0},
    "check": {"candidate": "fastest", "max_drop": 100.0},
    "report": {},
}


def _write(tmp_path, recipe, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    recipe = load_recipe(_write(tmp, MINI))
    return tmp / "run", recipe, run_recipe(recipe, out=tmp / "run")


def test_pipeline_runs_every_stage_and_records_a_manifest(first_run):
    run, _, summary = first_run
    assert summary["stages"] == {s: "ran" for s in ("train", "prune", "export", "bench", "check", "report")}
    assert summary["passed"] is True
    manifest = read_json(run / "manifest.json")
    for stage, rec in manifest["stages"].items():
        assert rec["status"] == "done" and rec["outputs"] and rec["wall_s"] >= 0 and rec["versions"]["torch"], stage
    assert "model.safetensors" in manifest["stages"]["train"]["outputs"]
    assert (run / "report" / "report.html").is_file() and (run / "check" / "junit.xml").is_file()
    results = read_json(run / "bench" / "results.json")
    assert [a["backend"] for a in results["artifacts"]] == ["torch", "torch", "onnxruntime"]


def test_rerun_skips_unchanged_stages(first_run):
    run, recipe, _ = first_run
    assert set(run_recipe(recipe, out=run)["stages"].values()) == {"skipped"}


def test_a_damaged_output_is_remade(first_run):
    run, recipe, _ = first_run
    (run / "report" / "report.md").write_text("edited by hand")
    stages = run_recipe(recipe, out=run)["stages"]
    assert stages["report"] == "ran" and stages["bench"] == "skipped"


def test_interrupted_training_stage_resumes(first_run, tmp_path):
    run, recipe, _ = first_run
    from edgeres.pipeline import Manifest

    manifest = Manifest(run)
    manifest.record("train", status="started")  # as a killed run leaves it: started, with last/ on disk
    (run / "train" / "history.json").unlink()
    stages = run_recipe(recipe, out=run)["stages"]
    assert stages["train"] == "resumed"


def test_changed_stage_config_reruns_it_and_what_follows(first_run):
    run, _, _ = first_run
    changed = load_recipe(_write(run.parent, {**MINI, "bench": {**MINI["bench"], "runs": 6}}, "r2.yaml"))
    stages = run_recipe(changed, out=run)["stages"]
    assert stages == {"train": "skipped", "prune": "skipped", "export": "skipped", "bench": "ran",
                      "check": "ran", "report": "ran"}


@pytest.mark.parametrize("patch,field", [
    ({"train": {"model": "test_resnet", "epochs": 0}}, "train.epochs"),
    ({"data": {"source": "digits", "img_size": 16, "colour": True}}, "data.colour"),
    ({"export": {"to": ["tflite"]}}, "export.to"),
])
def test_invalid_recipe_names_the_field(tmp_path, patch, field):
    with pytest.raises(UserInputError, match=field.replace(".", r"\.")):
        load_recipe(_write(tmp_path, {**MINI, **patch}))


def test_packaged_demo_recipe_is_valid():
    assert "demo" in list_recipes()
    demo = load_recipe("demo")
    assert demo.train.model == "se_resnet18" and demo.data.img_size == 64 and demo.prune.macs == 0.5
    with pytest.raises(UserInputError, match="packaged recipes"):
        load_recipe("no-such-recipe")


def test_cli_run_exits_1_when_the_gate_fails(first_run, tmp_path):
    run, _, _ = first_run
    # Same stages up to bench (skipped); a latency limit of 0 ms no artifact can meet fails the gate.
    strict = _write(tmp_path, {**MINI, "check": {"candidate": "fastest", "max_drop": 100.0, "max_latency_ms": 0.0}})
    res = subprocess.run([sys.executable, "-m", "edgeres.cli", "run", str(strict), "--out", str(run)],
                         capture_output=True, text=True)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "latency" in res.stderr and "report:" in res.stderr
    assert "train: unchanged, skipped" in res.stderr
