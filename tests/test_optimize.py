"""`edgeres optimize`: the search space's ranking and keys, BatchNorm recalibration, and the search itself
(end to end, resumed after a failure, and refused or failed through the CLI) on the tiny trained checkpoint."""
import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeres.artifacts import read_json
from edgeres.errors import UserInputError
from edgeres.optimize.run import OptimizeConfig, optimize
from edgeres.optimize.search import STATE_FILE, Search
from edgeres.optimize.space import (Candidate, Quantization, Structure, macs_for_latency, pareto, quantizations,
                                    rank, validate_grid)


def _rec(name: str, val: float, ms: float) -> dict:
    return {"name": name, "val": val, "latency_ms": ms}


def _names(records: list[dict]) -> list[str]:
    return [r["name"] for r in records]


# ---------------------------------------------------------------- space: ranking


def test_rank_without_target_puts_feasible_fastest_first():
    records = [_rec("accurate", 0.95, 2.0), _rec("fast", 0.94, 1.0), _rec("too_lossy", 0.80, 0.5)]
    # baseline 0.95, limit 2 points: "too_lossy" (15 points) is the fastest yet comes last.
    assert _names(rank(records, 0.95, 2.0, None)) == ["fast", "accurate", "too_lossy"]


def test_rank_with_target_puts_the_most_accurate_within_it_first():
    records = [_rec("fast", 0.93, 1.0), _rec("fits", 0.945, 1.4), _rec("slow", 0.95, 2.0),
               _rec("too_lossy", 0.80, 0.5)]
    ranked = _names(rank(records, 0.95, 2.0, target_ms=1.5))
    assert ranked[:2] == ["fits", "fast"], ranked
    assert set(ranked[2:]) == {"slow", "too_lossy"}


def test_rank_orders_infeasible_records_by_shortfall():
    # Limit 2 points, target 1 ms: each misses one constraint by a different share of its limit.
    records = [_rec("far_acc", 0.85, 0.5),     # 10 points dropped: 8 over a 2-point limit -> 4.0
               _rec("near_lat", 0.95, 1.1),    # 10% over the target -> 0.1
               _rec("near_acc", 0.92, 0.5),    # 3 points dropped: 1 over -> 0.5
               _rec("far_lat", 0.95, 3.0)]     # 200% over the target -> 2.0
    assert _names(rank(records, 0.95, 2.0, target_ms=1.0)) == ["near_lat", "near_acc", "far_lat", "far_acc"]


def test_rank_slack_admits_a_short_fine_tune_within_it():
    records = [_rec("dropped_3", 0.92, 1.0), _rec("dropped_1", 0.94, 2.0)]
    assert _names(rank(records, 0.95, 2.0, None)) == ["dropped_1", "dropped_3"]
    assert _names(rank(records, 0.95, 2.0, None, slack=1.5)) == ["dropped_3", "dropped_1"]


def test_pareto_removes_dominated_records_fastest_first():
    records = [_rec("best_slow", 0.96, 3.0), _rec("dominated", 0.90, 2.5), _rec("middle", 0.93, 2.0),
               _rec("fastest", 0.85, 1.0), _rec("same_speed_worse", 0.84, 1.0)]
    assert _names(pareto(records)) == ["fastest", "middle", "best_slow"]


def test_pareto_keeps_exact_ties():
    a, b = _rec("a", 0.9, 1.0), _rec("b", 0.9, 1.0)
    assert _names(pareto([a, b])) == ["a", "b"]


# ---------------------------------------------------------------- space: interpolation


def test_macs_for_latency_interpolates_on_log_log_axes():
    points = [(0.4, 4.0), (0.1, 1.0)]  # unsorted on purpose
    # On log-log axes these lie on ms = 10 * macs, so 2 ms is 0.2 of the MACs (linear interpolation gives 0.2
    # too; the next case tells them apart).
    assert macs_for_latency(points, 2.0) == pytest.approx(0.2)
    curved = [(0.1, 1.0), (0.4, 2.0)]  # ms = 2 * (macs / 0.4) ** 0.5
    fraction = macs_for_latency(curved, 1.5)
    assert 0.1 < fraction < 0.4
    assert fraction == pytest.approx(0.4 * (1.5 / 2.0) ** 2)


def test_macs_for_latency_is_none_outside_what_was_measured():
    points = [(0.1, 1.0), (0.25, 1.8), (0.4, 4.0)]
    assert macs_for_latency(points, 0.5) is None
    assert macs_for_latency(points, 4.5) is None
    assert macs_for_latency(points[:1], 1.0) is None
    assert macs_for_latency([], 1.0) is None
    between = macs_for_latency(points, 3.0)
    assert 0.25 < between < 0.4


# ---------------------------------------------------------------- space: keys


def test_keys_are_fixed_values():
    """A resumed search finds its steps by these keys: they must not depend on the process (no hash())."""
    # Recorded once; a change here makes every saved search.json redo all its steps.
    assert Structure(0.8, 8).key == "s-3ac38ef192"
    assert Candidate(Structure(0.8, 8), "l2", False, 2).key == "c-6d8644e902"
    assert Quantization().key == "q-67edb1b95a"


def test_keys_are_distinct_across_the_space():
    structures = [Structure(m, r) for m in (0.4, 0.25, 0.15, 0.1) for r in (8, 16, 32)]
    assert len({s.key for s in structures}) == len(structures)
    assert Structure(0.4, 8).key == Structure(0.4, 8).key
    candidates = [Candidate(s, imp, kd, ep) for s in structures for imp in ("l1", "l2", "taylor")
                  for kd in (True, False) for ep in (1, 2, 4)]
    assert len({c.key for c in candidates}) == len(candidates)
    for backend in ("openvino", "onnxruntime"):
        qs = quantizations(backend, max_drop=1.0, train_size=5000)
        assert qs[0] == Quantization(), "the exporter's default comes first: the hand path"
        assert len({q.key for q in qs}) == len(qs)
    all_keys = [s.key for s in structures] + [c.key for c in candidates] + [Quantization().key]
    assert len(set(all_keys)) == len(all_keys)


# ---------------------------------------------------------------- space and config: bad input


@pytest.mark.parametrize("grid", [
    dict(macs=[1.5]), dict(macs=[0]), dict(macs=[1.0]), dict(macs=[True]), dict(macs=["0.4"]),
    dict(round_to=[0]), dict(round_to=[2.5]), dict(round_to=[True]),
    dict(importances=["foo"]), dict(importances=[]),
])
def test_validate_grid_refuses_bad_values(grid):
    args = {"macs": [0.4], "round_to": [8], "importances": ["l2"], **grid}
    with pytest.raises(UserInputError):
        validate_grid(**args)


def test_validate_grid_accepts_a_good_grid():
    validate_grid([0.4, 0.1], [1, 16], ["l1", "l2", "bn", "taylor"])


@pytest.mark.parametrize("fields, words", [
    (dict(macs=(1.5,)), "between 0 and 1"),
    (dict(backend="foo"), "backend"),
    (dict(backend="tensorrt"), "--device"),
    (dict(backend="tensorrt", device="host"), "--device"),
    (dict(max_drop=-1.0), "max_drop"),
    (dict(max_drop=100.0), "max_drop"),
    (dict(target_ms=0.0), "target_ms"),
    (dict(target_ms=-2.0), "target_ms"),
    (dict(budget_minutes=0.0), "budget_minutes"),
    (dict(first_epochs=0), "first_epochs"),
    (dict(first_epochs=True), "first_epochs"),
    (dict(eta=1), "eta"),
    (dict(rungs=0), "rungs"),
    (dict(finalists=0), "finalists"),
    (dict(threads=0), "threads"),
    (dict(round_to=(0,)), "rounding"),
    (dict(importances=("magic",)), "importance"),
])
def test_optimize_config_refuses_bad_values(fields, words):
    with pytest.raises(UserInputError, match=words):
        OptimizeConfig(**fields)


def test_optimize_config_accepts_tensorrt_with_a_device_profile():
    config = OptimizeConfig(backend="tensorrt", device="jetson-orin-nano")
    assert not config.measured_here
    assert OptimizeConfig().measured_here


# ---------------------------------------------------------------- recalibrate_bn


def _val_accuracy(model: nn.Module, bundle) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in bundle.batches("val", 128):
            right += int((model(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
            total += len(y)
    return right / total


def test_recalibrate_bn_restores_accuracy_of_wrong_statistics(tiny_checkpoint):
    from edgeres.checkpoint import load_checkpoint
    from edgeres.compress.job import recalibrate_bn
    from edgeres.evaluate import load_task_data

    model, meta = load_checkpoint(tiny_checkpoint)
    bundle = load_task_data(meta)
    before = _val_accuracy(model, bundle)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns
    for i, m in enumerate(bns):
        m.running_mean.fill_(5.0)
        m.running_var.fill_(0.01)
        m.momentum = 0.1 + 0.01 * i  # each layer its own, to see each one restored
    broken = _val_accuracy(model, bundle)
    assert broken < before - 0.3, (before, broken)
    weights = {k: v.clone() for k, v in model.named_parameters()}

    model.eval()
    assert recalibrate_bn(model, bundle, batch_size=64) == len(bns)

    assert not model.training, "the mode it was called in is kept"
    assert [m.momentum for m in bns] == pytest.approx([0.1 + 0.01 * i for i in range(len(bns))])
    for k, v in model.named_parameters():
        assert torch.equal(v, weights[k]), f"{k}: recalibration must not train the weights"
    after = _val_accuracy(model, bundle)
    assert after >= before - 0.03, (before, broken, after)


def test_recalibrate_bn_without_batchnorm_returns_zero():
    from edgeres.compress.job import recalibrate_bn

    class NoBatches:
        def batches(self, split, batch_size):
            raise AssertionError("a model without BatchNorm needs no pass over the data")

    assert recalibrate_bn(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), NoBatches()) == 0


def test_finetune_config_refuses_a_non_bool_recalibrate_bn():
    from edgeres.compress.job import FinetuneConfig

    with pytest.raises(UserInputError, match="recalibrate_bn"):
        FinetuneConfig(recalibrate_bn="yes")


# ---------------------------------------------------------------- the search


def _tiny(**fields) -> OptimizeConfig:
    base = dict(macs=(0.8,), round_to=(8,), importances=("bn",), distill=(False,), rungs=1, first_epochs=1,
                finalists=1, budget_minutes=10.0, threads=1, allocations=("uniform",))
    return OptimizeConfig(**{**base, **fields})


@pytest.mark.slow
def test_search_end_to_end_openvino_publishes_files_recipe_and_report(tiny_checkpoint, tmp_path):
    """Plumbing, not search quality: max_drop is 15 points because the tiny model pruned and fine-tuned one
    epoch loses several points, and this test is about what a finished search leaves behind."""
    from edgeres import runtime
    from edgeres.recipe import load_recipe

    out = tmp_path / "search"
    config = _tiny(max_drop=15.0, allocations=("uniform", "latency"))
    result = optimize(tiny_checkpoint, out, config)

    for name in (STATE_FILE, "report.md", "pareto.png", "optimize.json"):
        assert (out / name).is_file(), name
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_json(out / "optimize.json")["chosen"] == json.loads(json.dumps(result["chosen"]))
    state = read_json(out / STATE_FILE)
    kinds = {s.get("kind") for s in state["steps"].values()}
    assert {"export", "probe", "timing", "train", "gate"} <= kinds, kinds

    chosen = result["chosen"]
    assert chosen is not None, result["failure"]
    assert chosen["passed"]
    assert state["result"]["chosen"]["key"] == chosen["key"]
    assert "Chosen" in (out / "report.md").read_text()

    recipe = load_recipe(out / "recipe.yaml")
    structure = chosen["candidate"]["structure"]
    if structure["allocation"] == "latency":  # the latency-aware structure of the 0.8 level won
        assert recipe.prune.latency == structure["amount"] and recipe.prune.global_pruning
        assert recipe.prune.macs is None and recipe.prune.latency_device == "host"
    else:
        assert recipe.prune.macs == structure["macs"] == 0.8
    probes = [p["structure"]["allocation"] for p in result["probe"]]
    assert probes.count("uniform") == 1 and probes.count("latency") == 1, probes
    assert recipe.prune.round_to == chosen["candidate"]["structure"]["round_to"] == 8
    assert recipe.prune.importance == "bn" and recipe.prune.distill is False
    assert recipe.prune.finetune_epochs == chosen["candidate"]["epochs"]
    assert recipe.export.to == ["openvino"] and recipe.export.precisions == ["int8"]
    assert recipe.train.model == "test_se_resnet"
    assert recipe.check.max_drop == 15.0

    published = out / "export" / os.path.basename(chosen["file"])
    assert published.suffix == ".xml" and published.is_file()
    assert str(published) == result["published"]["file"]
    assert published.read_bytes() == open(chosen["file"], "rb").read()
    runner = runtime.load(published, threads=1)
    assert runner.info.backend == "openvino"
    x = np.zeros([1 if d is None else d for d in runner.info.input_shape], dtype=np.float32)
    assert runner(x)["logits"].shape == (1, 10)
    assert (out / "model" / "model.safetensors").is_file()

    # The recipe runs as written: the same structure and INT8 choice, rebuilt from the data.
    from edgeres.pipeline import run_recipe

    summary = run_recipe(recipe, out=tmp_path / "rerun")
    rerun = Path(summary["run"])
    rebuilt = read_json(rerun / "pruned" / "model.json")["compression"]["prune"]
    assert rebuilt["config"]["target"] == ("latency" if structure["allocation"] == "latency" else "macs")
    if structure["allocation"] == "latency":  # widths follow the retrained weights' importance
        assert rebuilt["achieved"] <= structure["amount"] + 1e-9
    else:  # uniform widths depend on the fraction alone
        assert rebuilt["macs_fraction"] == pytest.approx(chosen["macs_fraction"], abs=1e-9)
    assert (rerun / "export" / os.path.basename(chosen["file"])).is_file()


def _count(monkeypatch, name: str, fail_on: int | None = None, partial: bool = False) -> list:
    """Wrap Search.<name>, recording each call's first argument; raise KeyboardInterrupt on call `fail_on`,
    after leaving a half-written step folder when `partial`."""
    real = getattr(Search, name)
    calls = []

    def wrapper(self, *args, **kwargs):
        calls.append(args[0] if args else None)
        if fail_on is not None and len(calls) == fail_on:
            if partial:
                out = args[1]
                out.mkdir(parents=True, exist_ok=True)
                (out / "model.safetensors").write_bytes(b"half written")
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Search, name, wrapper)
    return calls


@pytest.mark.slow
def test_search_resumes_without_redoing_recorded_steps(tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "search"
    # Two first-rung candidates; ONNX Runtime is the quicker backend to export and time.
    config = _tiny(backend="onnxruntime", importances=("l2", "bn"), max_drop=15.0)
    prunes = _count(monkeypatch, "prune", fail_on=2, partial=True)
    with pytest.raises(KeyboardInterrupt):
        optimize(tiny_checkpoint, out, config)
    assert len(prunes) == 2
    first, second = prunes
    saved = read_json(out / STATE_FILE)
    assert first.key in saved["steps"] and second.key not in saved["steps"]
    assert "dense" in saved["steps"] and "timing-probe" in saved["steps"]
    spent = saved["seconds"]
    assert spent > 0
    first_weights = (out / "work" / first.key / "model.safetensors").read_bytes()

    monkeypatch.undo()
    prunes = _count(monkeypatch, "prune")
    exports = _count(monkeypatch, "export_int8")
    timings = _count(monkeypatch, "latencies")
    result = optimize(tiny_checkpoint, out, config)
    assert [c.key for c in prunes] == [second.key], "only the step that failed runs again"
    assert {Path(ckpt).name for ckpt in exports} <= {first.key, second.key}, \
        "neither the dense file nor a probe is exported again"
    assert len(exports) == len(quantizations("onnxruntime", 15.0, 1))
    assert len(timings) == 1, "the probe's timing is recorded; only the finalists are timed"
    dense_file = saved["steps"]["dense"]["file"]
    assert result["dense"]["file"] == dense_file
    assert result["chosen"] is not None, result["failure"]
    assert (out / "work" / first.key / "model.safetensors").read_bytes() == first_weights
    final = read_json(out / STATE_FILE)
    assert final["seconds"] >= spent, "time already spent counts against the budget"
    assert {first.key, second.key} <= set(final["steps"])

    # The same folder with other settings, or another baseline, is refused and left as it was.
    before = (out / STATE_FILE).read_bytes()
    with pytest.raises(UserInputError, match="other settings"):
        optimize(tiny_checkpoint, out, dataclasses.replace(config, max_drop=5.0))
    other = tmp_path / "other-baseline"
    shutil.copytree(tiny_checkpoint, other)
    with pytest.raises(UserInputError, match="another baseline"):
        optimize(other, out, config)
    assert (out / STATE_FILE).read_bytes() == before
    # More time for a resumed search is allowed: everything is recorded, so it ends with the same choice.
    again = optimize(tiny_checkpoint, out, dataclasses.replace(config, budget_minutes=config.budget_minutes + 5))
    assert again["chosen"]["key"] == result["chosen"]["key"]


# ---------------------------------------------------------------- the CLI


def test_cli_impossible_target_exits_1_naming_latency(tiny_checkpoint, tmp_path, edgeres, monkeypatch):
    out = tmp_path / "search"
    prunes = _count(monkeypatch, "prune")
    code, text = edgeres("optimize", tiny_checkpoint, "--out", out, "--target-ms", "0.0001",
                         "--backend", "onnxruntime", "--macs", "0.8", "--round-to", "8", "--importance", "l2",
                         "--distill", "off", "--rungs", "1", "--first-epochs", "1", "--finalists", "1",
                         "--threads", "1")
    assert code == 1, text
    assert "Traceback" not in text
    assert "latency" in text and "0.0001" in text, text
    result = read_json(out / "optimize.json")
    assert result["chosen"] is None and result["failure"].startswith("latency")
    assert result["trained"] == [] and prunes == [], "nothing is trained when no structure can meet the target"
    assert result["probe"], "the report keeps what was probed"
    assert "latency" in (out / "report.md").read_text()
    assert not (out / "recipe.yaml").exists() and not (out / "export").exists()


def test_cli_missing_run_folder_exits_2_in_one_line(tmp_path, edgeres):
    out = tmp_path / "search"
    code, text = edgeres("optimize", tmp_path / "no-such-run", "--out", out)
    assert code == 2, text
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) == 1, text
    assert "no-such-run" in text
    assert not out.exists(), "a refused search leaves no folder behind"


@pytest.mark.parametrize("args, words", [
    (("--macs", "1.5"), "between 0 and 1"),
    (("--macs", "a,b"), "--macs"),
    (("--round-to", "8.5"), "--round-to"),
    (("--distill", "maybe"), "--distill"),
    (("--backend", "tensorrt"), "--device"),
    (("--backend", "foo"), "backend"),
])
def test_cli_bad_options_exit_2_in_one_line(tiny_checkpoint, tmp_path, edgeres, args, words):
    out = tmp_path / "search"
    code, text = edgeres("optimize", tiny_checkpoint, "--out", out, *args)
    assert code == 2, text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    assert words in text, text
    assert not out.exists()


# ---------------------------------------------------------------- what a quantization choice changes


def test_openvino_calib_size_above_300_reaches_nncf(tiny_checkpoint, tmp_path):
    from edgeres.export import ExportConfig, export_checkpoint

    config = ExportConfig(formats=("openvino",), precisions=("int8",), dynamic_batch=False, validate_size=8,
                          calib_size=400)
    doc = export_checkpoint(tiny_checkpoint, tmp_path / "export", config)
    entries = doc["artifacts"] + doc["failed"]
    assert entries[0]["quantization"]["calibration_samples"] == 400


def test_rank_treats_latencies_within_noise_as_one_speed():
    """The same network quantized two ways times a few percent apart from run to run: within SAME_SPEED the
    more accurate file leads; a clearly faster one still wins."""
    from edgeres.optimize.space import SAME_SPEED

    close = [{"val": 0.98, "latency_ms": 1.00}, {"val": 0.99, "latency_ms": 1.00 * (1 + SAME_SPEED / 2)}]
    assert [r["val"] for r in rank(close, 0.99, 1.0, None)] == [0.99, 0.98]
    apart = [{"val": 0.98, "latency_ms": 1.00}, {"val": 0.99, "latency_ms": 1.00 * (1 + 2 * SAME_SPEED)}]
    assert [r["val"] for r in rank(apart, 0.99, 1.0, None)] == [0.98, 0.99]
