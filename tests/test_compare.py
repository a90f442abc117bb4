"""`edgeres compare`: metrics with known answers, one table in three files, resume, bad input, the recipe stage."""
import html
import json
import re
import shutil
import time

import numpy as np
import pytest
import torch
import yaml

from edgeres.artifacts import read_json
from edgeres.compare import CompareConfig, LatencyConfig, compare_models
from edgeres.compare.metrics import expected_calibration_error, pr_auc
from edgeres.compare.output import COLUMNS, RECALL
from edgeres.data import DataConfig
from edgeres.errors import UserInputError
from edgeres.recipe import load_recipe

VARIANTS = ("test_resnet", "test_se_resnet", "test_simam_resnet")
# One thread: two threads on two shared, busy cores train ten times slower (each op waits for the slower thread).
TINY = dict(epochs=1, lr=3e-3, batch_size=128, threads=1, latency=LatencyConfig(rounds=2, runs=5, warmup=1))
CLI_TINY = ("--data", "digits", "--img-size", "16", "--epochs", "1", "--lr", "0.003", "--batch-size", "128",
            "--threads", "1", "--rounds", "2", "--runs", "5")



@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    """Training and the Runner set torch's thread count for the process: give later test modules theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- metrics with known answers

def test_ece_of_a_hand_worked_example():
    # Two samples at confidence 0.9 (one right: accuracy 0.5) and two at 0.6 (both right: accuracy 1.0):
    # ECE = 2/4 * |0.5 - 0.9| + 2/4 * |1.0 - 0.6| = 0.4.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(labels, probs) == pytest.approx(0.4)
    # A perfectly calibrated, perfectly confident model has none.
    assert expected_calibration_error(np.array([0, 1, 2]), np.eye(3)) == pytest.approx(0.0)


def test_ece_matches_torchmetrics_on_random_predictions():
    from torchmetrics.classification import MulticlassCalibrationError

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 5)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 5, 500)
    reference = MulticlassCalibrationError(num_classes=5, n_bins=15, norm="l1")(
        torch.tensor(probs, dtype=torch.float64), torch.tensor(labels))
    assert expected_calibration_error(labels, probs) == pytest.approx(float(reference), abs=1e-6)


def test_pr_auc_known_answers():
    # scikit-learn's documented example: average precision 0.8333.
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    assert pr_auc(np.array([0, 0, 1, 1]), np.stack([1 - scores, scores], 1)) == pytest.approx(0.83333, abs=1e-4)
    # Three classes, one-vs-rest: class 0's positives rank first and second (AP 1); class 1's one positive
    # ranks third of four (AP 1/3); class 2's ranks second (AP 1/2). Macro average: 11/18.
    probs = np.array([[0.8, 0.15, 0.05], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 0, 1])
    probs3 = np.vstack([probs, [[0.2, 0.05, 0.75]]])
    labels3 = np.append(labels, 2)
    assert pr_auc(labels3, probs3) == pytest.approx((1 + 1 / 3 + 1 / 2) / 3, abs=1e-6)
    assert pr_auc(np.array([0, 1, 2]), np.eye(3)) == pytest.approx(1.0)
    assert pr_auc(np.array([0, 0, 1]), probs) is None  # class 2 absent: undefined


# ---------------------------------------------------------------- one comparison, shared by the tests below

@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "cmp"
    doc = compare_models(CompareConfig(models=VARIANTS, data=DataConfig("digits", img_size=16), out=str(out),
                                       **TINY))
    return out, doc


def _md_table(text: str, first_header: str) -> list[list[str]]:
    """The Markdown table whose first header is `first_header`: its header row and body rows, as cells."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("| "):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split(" | ")])
    return [rows[0]] + rows[2:]  # without the alignment row


def _html_table(text: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table_id}">(.*?)</table>', text, re.S).group(1)
    return [[html.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def _matches(cell: str, value: float, scale: float, spec: str) -> bool:
    decimals = int(re.search(r"\.(\d+)f", spec).group(1))
    return abs(float(cell.replace(",", "")) - value * scale) <= 0.5 * 10 ** -decimals + 1e-9


def test_every_variant_has_every_column(compared):
    out, doc = compared
    assert [v["model"] for v in doc["variants"]] == list(VARIANTS)
    md = (out / "compare.md").read_text()
    header = _md_table(md, "model")[0]
    assert header == ["model"] + [h for h, *_ in COLUMNS]
    classes = doc["data"]["class_names"]
    assert len(classes) == 10 and doc["data"]["test_images"] > 300
    for v in doc["variants"]:
        for _, key, *_ in COLUMNS:
            assert isinstance(v[key], (int, float)) and np.isfinite(v[key]), (v["model"], key)
        assert 0 <= v["accuracy"] <= 1 and 0 <= v["ece"] <= 1 and 0 < v["pr_auc"] <= 1 and 0 < v["roc_auc"] <= 1
        assert v["params"] > 1000 and v["macs"] > v["params"] and v["p50_ms"] > 0
        assert v["epochs"] == 1 and v["train_s"] >= v["epoch_s"] > 0 and v["training"] == "trained"
        assert sorted(v["per_class_recall"]) == sorted(classes)
        assert v["latency"]["runs"] == 2 * 5  # two interleaved rounds of five calls
    se, plain = doc["variants"][1], doc["variants"][0]
    assert se["params"] > plain["params"]  # SE adds its gates; the counts are the models', not copies
    assert doc["latency"]["threads"] == 1 and doc["latency"]["batch_size"] == 1
    for png in ("accuracy_latency.png", "per_class_recall.png"):
        assert (out / "plots" / png).stat().st_size > 1000


def test_table_json_and_html_hold_the_same_numbers(compared):
    out, _ = compared
    doc = read_json(out / "compare.json")
    md_rows = _md_table((out / "compare.md").read_text(), "model")
    page = (out / "compare.html").read_text()
    assert "<img" in page and "data:image/png;base64," in page and 'src="plots/' not in page  # self-contained
    html_rows = _html_table(page, "compare")
    assert md_rows == html_rows
    for row, v in zip(md_rows[1:], doc["variants"], strict=True):
        assert row[0] == v["model"]
        for c, (_, key, scale, spec) in zip(row[1:], COLUMNS, strict=True):
            assert _matches(c, v[key], scale, spec), (v["model"], key, c, v[key])
    recall_md = _md_table((out / "compare.md").read_text(), "class")
    assert recall_md == _html_table(page, "recall")
    assert recall_md[0] == ["class"] + list(VARIANTS)
    for row in recall_md[1:]:
        for c, v in zip(row[1:], doc["variants"], strict=True):
            assert _matches(c, v["per_class_recall"][row[0]], *RECALL)


def test_rerun_reuses_the_trained_variants(compared, tmp_path, edgeres, monkeypatch):
    from edgeres.train import loop as train_loop

    out = tmp_path / "cmp"
    shutil.copytree(compared[0], out)
    weights = {m: (out / "models" / m / "model.safetensors").stat().st_mtime_ns for m in VARIANTS}

    def no_training(*args, **kwargs):
        raise AssertionError("a trained variant was trained again")

    monkeypatch.setattr(train_loop, "train", no_training)
    code, text = edgeres("compare", "--models", ",".join(VARIANTS), "--out", out, *CLI_TINY)
    assert code == 0, text
    assert "test_simam_resnet" in text and "p50 ms" in text  # the table is printed
    doc = read_json(out / "compare.json")
    assert [v["training"] for v in doc["variants"]] == ["reused"] * 3
    assert {m: (out / "models" / m / "model.safetensors").stat().st_mtime_ns for m in VARIANTS} == weights
    # Figures of training come from the record of the run that trained them.
    assert [v["train_s"] for v in doc["variants"]] == [v["train_s"] for v in compared[1]["variants"]]

    # A folder written before betas and loss were recorded was trained at their defaults: reused as it is, and
    # refused (naming the setting) for other values.
    for record in [out / "settings.json", *(out / "models" / m / "train.json" for m in VARIANTS)]:
        old = read_json(record)
        assert {"betas", "loss"} <= set(old)
        record.write_text(json.dumps({k: v for k, v in old.items() if k not in ("betas", "loss")}))
    code, text = edgeres("compare", "--models", ",".join(VARIANTS), "--out", out, *CLI_TINY)
    assert code == 0, text
    assert [v["training"] for v in read_json(out / "compare.json")["variants"]] == ["reused"] * 3
    code, text = edgeres("compare", "--models", ",".join(VARIANTS), "--out", out, *CLI_TINY, "--betas", "0.5,0.999")
    assert code == 2 and "other settings (betas differ)" in text

    two_epochs = [("2" if prev == "--epochs" else arg) for prev, arg in zip(("",) + CLI_TINY, CLI_TINY)]
    code, text = edgeres("compare", "--models", ",".join(VARIANTS), "--out", out, *two_epochs)
    assert code == 2 and "other settings" in text and "epochs" in text


def test_bad_model_names_exit_2_listing_the_known_ones(edgeres, tmp_path):
    code, text = edgeres("compare", "--models", "test_resnet,resnet_nope", "--out", tmp_path / "x", *CLI_TINY)
    assert code == 2 and "resnet_nope" in text and "known models" in text and "se_resnet18" in text
    assert "Traceback" not in text and not (tmp_path / "x").exists()


def test_detectors_are_refused(edgeres, tmp_path):
    code, text = edgeres("compare", "--models", "test_resnet,test_yolo", "--out", tmp_path / "x", *CLI_TINY)
    assert code == 2 and "compare supports classification models" in text and "test_yolo" in text


def test_bad_settings_are_refused_before_training(tmp_path):
    data = DataConfig("digits", img_size=16)
    with pytest.raises(UserInputError, match="weights: test_se_resnet is not among the compared models"):
        CompareConfig(models=("test_resnet",), data=data, out=str(tmp_path), weights={"test_se_resnet": "w.pt"})
    with pytest.raises(UserInputError, match="more than once"):
        CompareConfig(models=("test_resnet", "test_resnet"), data=data, out=str(tmp_path))
    with pytest.raises(UserInputError, match="optimizer"):
        CompareConfig(models=("test_resnet",), data=data, out=str(tmp_path), optimizer="lion")
    (tmp_path / "mine.txt").write_text("someone's file")
    with pytest.raises(UserInputError, match="did not create"):
        compare_models(CompareConfig(models=("test_resnet",), data=data, out=str(tmp_path), **TINY))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_weights_take_name_equals_file(edgeres, tmp_path):
    code, text = edgeres("compare", "--models", "test_resnet", "--out", tmp_path / "x", "--weights", "w.pt",
                         *CLI_TINY)
    assert code == 2 and "NAME=FILE" in text


# ---------------------------------------------------------------- the recipe stage

def _recipe(tmp_path, recipe):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_recipe_needs_train_or_compare_and_later_stages_need_train(tmp_path):
    data = {"source": "digits", "img_size": 16}
    with pytest.raises(UserInputError, match="needs a train stage, a compare stage, or both"):
        load_recipe(_recipe(tmp_path, {"name": "r", "data": data}))
    with pytest.raises(UserInputError, match="export work on the trained model"):
        load_recipe(_recipe(tmp_path, {"name": "r", "data": data, "compare": {"models": ["test_resnet"]},
                                       "export": {}}))
    with pytest.raises(UserInputError, match="data is missing"):
        load_recipe(_recipe(tmp_path, {"name": "r", "compare": {"models": ["test_resnet"]}}))
    with pytest.raises(UserInputError, match=r"compare\.optimizer"):
        load_recipe(_recipe(tmp_path, {"name": "r", "data": data,
                                       "compare": {"models": ["test_resnet"], "optimizer": "lion"}}))
    own = load_recipe(_recipe(tmp_path, {"name": "r", "compare": {"models": ["test_resnet"], "data": data}}))
    assert own.train is None and own.compare.data.source == "digits"


def test_a_compare_only_recipe_runs_through_edgeres_run(edgeres, tmp_path):
    recipe = {"name": "cmp", "data": {"source": "digits", "img_size": 16},
              "compare": {"models": ["test_resnet", "test_se_resnet"], "epochs": 1, "lr": 0.003, "batch_size": 128,
                          "threads": 1, "rounds": 2, "runs": 5}}
    path = _recipe(tmp_path, recipe)
    code, text = edgeres("run", path, "--out", tmp_path / "run")
    assert code == 0, text
    run = tmp_path / "run"
    doc = read_json(run / "compare" / "compare.json")
    assert [v["model"] for v in doc["variants"]] == ["test_resnet", "test_se_resnet"]
    assert (run / "compare" / "models" / "test_se_resnet" / "model.safetensors").is_file()
    manifest = read_json(run / "manifest.json")
    assert list(manifest["stages"]) == ["compare"] and manifest["stages"]["compare"]["status"] == "done"
    assert "compare.html" in manifest["stages"]["compare"]["outputs"]
    code, text = edgeres("run", path, "--out", run)
    assert code == 0 and "compare: unchanged, skipped" in text
    assert json.loads((run / "compare" / "compare.json").read_text()) == doc

    # Interrupted after training: the stage continues in its folder and trains nothing again.
    weights = run / "compare" / "models" / "test_resnet" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    manifest["stages"]["compare"]["status"] = "started"
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "compare" / "compare.md").unlink()
    code, text = edgeres("run", path, "--out", run)
    assert code == 0 and "compare: resuming" in text, text
    assert (run / "compare" / "compare.md").is_file() and weights.stat().st_mtime_ns == mtime
    assert [v["training"] for v in read_json(run / "compare" / "compare.json")["variants"]] == ["reused"] * 2


def test_a_resumed_variants_training_time_counts_the_epochs_before_the_interruption(tmp_path):
    from edgeres.compare.run import TRAINED_FILE, train_variant
    from edgeres.data import load_data

    config = CompareConfig(models=("test_resnet",), data=DataConfig(source="digits", img_size=16),
                           out=str(tmp_path / "cmp"), epochs=2, batch_size=128, threads=1)
    bundle = load_data(config.data)
    train_variant(config, "test_resnet", bundle)
    (config.variant_dir("test_resnet") / TRAINED_FILE).unlink()  # as if killed after its last epoch was saved
    start = time.perf_counter()
    record = train_variant(config, "test_resnet", bundle)
    resumed_wall = time.perf_counter() - start  # evaluation only: both epochs were done
    epochs = [row["seconds"] for row in read_json(config.variant_dir("test_resnet") / "history.json")]
    assert record["training"] == "resumed" and len(epochs) == 2
    assert record["train_s"] > resumed_wall and record["train_s"] >= sum(epochs)


def test_a_recipe_naming_two_fid_networks_is_refused_when_loaded(tmp_path):
    compare = {"models": ["test_unet"], "inception_weights": "inception.pth", "fid_features": "classifier"}
    with pytest.raises(UserInputError, match="inception_weights or fid_features, not both"):
        load_recipe(_recipe(tmp_path, {"name": "r", "data": {"source": "digits", "pairs": "denoise"},
                                       "compare": compare}))
