"""The packaged recipes of the published systems, shrunk to tiny models and images: every stage they list runs
and writes what the recipe promises (the full-size runs and their figures are in the README)."""
import pytest
import yaml

from edgeres.artifacts import read_json
from edgeres.pipeline import run_recipe
from edgeres.recipe import list_recipes, load_recipe

#: The zoo model each recipe names -> a tiny one of the same family.
TINY = {"se_resnet50v2_convhead": "test_se_resnet_v2_convhead", "asff_resnet50": "test_asff_resnet",
        "resnet50": "test_resnet_bottleneck", "resnet101": "test_resnet", "resnet152": "test_se_resnet",
        "resnet18": "test_resnet", "se_resnet18": "test_se_resnet", "simam_resnet18": "test_simam_resnet",
        "yolo_resnet18": "test_yolo", "unet_resnet18": "test_unet", "unet_resnet50": "test_unet",
        "unet_se_resnet18": "test_unet", "unet_se_resnet50": "test_unet"}
PUBLISHED = ("mri-se-resnet50v2", "skin-asff-resnet50", "resnet-depth", "resnet18-variants")


def _shrunk(name: str) -> dict:
    r = load_recipe(name).model_dump(exclude_none=True)
    for block in (r.get("data"), r.get("compare", {}).get("data")):
        if block:
            block.update(img_size=64 if block["source"] == "shapes-det" else 24, shapes_per_class=10,
                         detect_images=24)
    if "train" in r:
        r["train"].update(model=TINY[r["train"]["model"]], epochs=1)
    if "compare" in r:
        r["compare"].update(models=[TINY[m] for m in r["compare"]["models"]],
                            transfer=[TINY[m] for m in r["compare"].get("transfer", [])], epochs=1, rounds=1, runs=3)
    if "prune" in r:
        r["prune"].update(finetune_epochs=1)
    if "export" in r:  # INT8 and OpenVINO have their own tests: one FP32 ONNX file keeps this suite short
        r["export"].update(to=["onnx"], precisions=["fp32"])
        r.get("check", {}).update(candidate="fastest")
    if "bench" in r:
        r["bench"].update(runs=3, warmup=1, budget_s=2, min_seconds=0)
    if "explain" in r:
        r["explain"].update(panel_images=2, drift_images=1)
    return r


def test_the_published_systems_are_packaged():
    assert set(PUBLISHED) <= set(list_recipes())
    for name in PUBLISHED:
        recipe = load_recipe(name)
        models = ([recipe.train.model] if recipe.train else []) + (recipe.compare.models if recipe.compare else [])
        assert set(models) <= set(TINY), f"{name}: add a tiny stand-in for {set(models) - set(TINY)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED)
def test_a_published_recipe_runs_every_stage(name, tmp_path):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_shrunk(name)))
    recipe = load_recipe(path)
    summary = run_recipe(recipe, out=tmp_path / "run")
    listed = [s for s in ("train", "prune", "export", "bench", "explain", "check", "report", "compare")
              if getattr(recipe, s) is not None]
    assert list(summary["stages"]) == listed and set(summary["stages"].values()) == {"ran"}
    run = tmp_path / "run"
    if recipe.compare:
        document = read_json(run / "compare" / "compare.json")
        assert [v["model"] for v in document["variants"]] == recipe.compare.models
    if recipe.check:  # one epoch of a tiny model: the gate runs and judges; its verdict is not the point here
        assert read_json(run / "check" / "gate.json")["metric_checks"]
    if recipe.explain:
        assert (run / "report" / "plots" / "gradcam_panel.png").is_file()
        assert "## Explanations" in (run / "report" / "report.md").read_text()
    if recipe.data is not None and recipe.data.classes and len(recipe.data.classes) == 2:
        point = read_json(run / "train" / "metrics.json")["test"]["binary"]["operating_point"]
        assert point["chosen_on"] == "val"
