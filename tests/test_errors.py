"""Bad input exits 2 with one line naming the cause, never a traceback; a real bug exits 3, not 1 (a failed gate).

Most cases run the `edgeres` entry point in-process (`edgeres.cli.main`, what the console script calls):
the same code path as a shell, without paying a torch import per case.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from edgeres.checkpoint import ModelMeta, save_checkpoint
from edgeres.export.validate import TOLERANCES, compare_outputs, judge
from edgeres.models import create



def _refused(result: tuple[int, str], *words: str) -> str:
    """Assert exit 2, no traceback, and every word in the message; return the output."""
    code, out = result
    assert code == 2, out
    assert "Traceback" not in out, out
    for word in words:
        assert word in out, (word, out)
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An untrained 1-channel test_resnet checkpoint recording digits at 16 px: cheap and loadable."""
    torch.manual_seed(0)
    model = create("test_resnet", num_classes=10, in_chans=1).eval()
    meta = ModelMeta(arch="test_resnet", num_classes=10, in_chans=1, img_size=16, mean=(0.3,), std=(0.3,),
                     class_names=[str(i) for i in range(10)],
                     data={"source": "digits", "img_size": 16, "in_chans": None, "split": None, "seed": 0,
                           "augment": False, "hflip": None, "normalize": "auto", "skip_bad": False,
                           "shapes_per_class": 120})
    return save_checkpoint(model, meta, tmp_path_factory.mktemp("errors") / "ckpt")


@pytest.fixture
def copy(ckpt, tmp_path):
    """A fresh copy of the checkpoint, to damage."""
    return shutil.copytree(ckpt, tmp_path / "copy")


def test_unexpected_error_exits_3_not_the_gate_code(edgeres, ckpt, monkeypatch):
    import edgeres.check as check

    def crash(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(check, "check_artifacts", crash)
    code, out = edgeres("check", "--baseline", ckpt, "--candidate", ckpt)
    assert code == 3, out  # 1 would read as "the candidate regressed"
    assert "internal error" in out and "boom" in out


def test_a_run_whose_exports_all_fail_exits_1_not_3(edgeres, tmp_path, monkeypatch):
    # Every export failing validation is a failed check (exit 1), not a crash (3) nor bad input (2).
    import edgeres.export as export
    import edgeres.pipeline as pipeline

    monkeypatch.setitem(pipeline._RUNNERS, "train", lambda run, resume: None)  # no training needed
    monkeypatch.setattr(export, "export_checkpoint", lambda *a, **k: {"artifacts": [], "failed": [{}]})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndata: {source: digits}\ntrain: {model: test_resnet}\nexport: {}\n")
    code, out = edgeres("run", recipe, "--out", tmp_path / "run")
    assert code == 1, out
    assert "every export failed validation" in out and "Traceback" not in out


def test_exit_codes_in_a_real_process(copy):
    (copy / "model.safetensors").write_bytes(b"")
    res = subprocess.run([sys.executable, "-m", "edgeres.cli", "eval", str(copy)], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "model.safetensors" in res.stderr and "corrupt" in res.stderr


@pytest.mark.parametrize("damage", ["empty", "truncated"])
@pytest.mark.parametrize("command", ["eval", "export", "prune", "check"])
def test_damaged_weights_are_refused_by_every_command(edgeres, copy, tmp_path, command, damage):
    weights = copy / "model.safetensors"
    weights.write_bytes(b"" if damage == "empty" else weights.read_bytes()[:-100])
    args = {"eval": ["eval", copy], "export": ["export", copy, "--to", "onnx", "--out", tmp_path / "x"],
            "prune": ["prune", copy, "--ratio", "0.5", "--out", tmp_path / "p"],
            "check": ["check", "--baseline", copy, "--candidate", copy]}[command]
    _refused(edgeres(*args), str(weights), "truncated or corrupt")


def test_damaged_weights_file_given_to_train(copy):
    from edgeres.errors import UserInputError
    from edgeres.models.weights import read_state_dict

    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserInputError, match="truncated or corrupt"):
        read_state_dict(weights)


@pytest.mark.parametrize("change, field", [
    ("not json", "model.json"),
    ({"num_classes": -3}, "num_classes"),
    ({"num_classes": "ten"}, "num_classes"),
    ({"num_classes": True}, "num_classes"),
    ({"mean": [0.1, 0.2, 0.3, 0.4]}, "mean"),
    ({"mean": "abc"}, "mean"),
    ({"std": [0.0]}, "std"),
    ({"class_names": ["a", "b"]}, "class_names"),
    ({"img_size": -5}, "img_size"),
    ({"img_size": 100000}, "img_size"),
    ({"in_chans": 5}, "in_chans"),
    ({"pruned_shapes": {"fc.weight": [10, -1]}}, "pruned_shapes"),
    ({"unknown_field": 1}, "unknown_field"),
    ([1, 2], "JSON object"),
])
def test_invalid_model_json_names_the_file_and_field(edgeres, copy, change, field):
    meta_file = copy / "model.json"
    if change == "not json":
        meta_file.write_text("{garbage")
    elif isinstance(change, dict):
        meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), **change}))
    else:
        meta_file.write_text(json.dumps(change))
    _refused(edgeres("eval", copy), str(meta_file), field)


@pytest.mark.parametrize("change", [{"arch_kwargs": {"channels": [10**6] * 4}},  # 36 TB if built for real
                                    {"pruned_shapes": {"fc.weight": [10**5, 10**5]}},
                                    {"pruned_shapes": {"fc.weight": [10, 5]}}])
def test_model_json_that_does_not_fit_the_weights(edgeres, copy, change):
    meta_file = copy / "model.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), **change}))
    out = _refused(edgeres("eval", copy), "model.json", "model.safetensors")
    assert len(out.strip().splitlines()) == 1, out


def test_model_meta_imports_no_torch():
    code = "import sys, edgeres.meta; assert 'torch' not in sys.modules, 'edgeres.meta imported torch'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_the_cli_loads_without_torch():
    """`edgeres --help` and a mistyped option answer at once: no command module imports torch when registered."""
    code = "import sys, edgeres.cli; assert 'torch' not in sys.modules, 'loading the CLI imported torch'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_model_meta_defaults_fit_one_channel():
    meta = ModelMeta(arch="test_resnet", num_classes=3, in_chans=1)
    assert len(meta.mean) == len(meta.std) == 1
    assert ModelMeta.from_dict(meta.to_dict()) == meta


_SHADOW = "root:$6$S3CRETHASH:20228:0:99999:7:::\ndaemon:*:20228:0:99999:7:::\n"


def test_a_recipe_error_never_echoes_the_file(edgeres, tmp_path):
    shadow = tmp_path / "shadow"
    shadow.write_text(_SHADOW)
    out = _refused(edgeres("run", shadow), "line 1")
    assert "S3CRETHASH" not in out and "daemon" not in out
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ndata: {source: digits\ntrain: S3CRETHASH: [\n")
    out = _refused(edgeres("run", broken), "line")
    assert "S3CRETHASH" not in out


def test_recipe_field_errors_say_where(edgeres, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndata: {source: digits}\ntrain:\n  model: test_resnet\n  epochs: S3CRET\n")
    out = _refused(edgeres("run", recipe), "train.epochs", "line 5")
    assert "S3CRET" not in out


@pytest.mark.parametrize("command", ["run", "report"])
def test_binary_document_is_refused(edgeres, tmp_path, command):
    blob = tmp_path / "blob.yaml"
    blob.write_bytes(bytes(range(256)) * 4)
    _refused(edgeres(command, blob), str(blob), "UTF-8")


def test_folder_given_as_document(edgeres, tmp_path):
    _refused(edgeres("report", tmp_path), "is a folder")


@pytest.fixture
def nan_ckpt(copy):
    weights = copy / "model.safetensors"
    state = load_file(str(weights))
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
              str(weights))
    return copy


def test_eval_of_a_nan_model(edgeres, nan_ckpt):
    _refused(edgeres("eval", nan_ckpt), "NaN")


@pytest.mark.parametrize("which", ["candidate", "both"])
def test_export_validation_fails_nan_outputs(which):
    reference = np.random.default_rng(0).normal(size=(8, 10)).astype(np.float32)
    candidate = np.full_like(reference, np.nan)
    if which == "both":  # an all-NaN model: the exported file agrees with PyTorch on NaN
        reference = candidate.copy()
    for tolerance in TOLERANCES.values():
        reasons = judge(compare_outputs(reference, candidate), tolerance)
        assert any("NaN" in r for r in reasons), reasons


def test_export_validation_fails_inf_outputs():
    reference = np.ones((4, 3), np.float32)
    candidate = reference.copy()
    candidate[0, 0] = np.inf
    assert judge(compare_outputs(reference, candidate), TOLERANCES["int8"])


@pytest.mark.parametrize("opset", ["1", "0", "-3", "1000"])
def test_export_opset_out_of_range(edgeres, ckpt, tmp_path, opset):
    _refused(edgeres("export", ckpt, "--to", "onnx", "--opset", opset, "--out", tmp_path / "x"), "opset")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("option, value", [("--img-size", "0"), ("--img-size", "-5"), ("--img-size", "100000"),
                                           ("--num-classes", "0")])
def test_models_refuses_absurd_sizes(edgeres, option, value):
    _refused(edgeres("models", "test_resnet", option, value), option)


def test_check_junit_into_a_folder_or_under_a_file(edgeres, ckpt, tmp_path):
    _refused(edgeres("check", "--baseline", ckpt, "--candidate", ckpt, "--junit", tmp_path), str(tmp_path),
             "folder")
    under_file = ckpt / "model.json" / "junit.xml"
    _refused(edgeres("check", "--baseline", ckpt, "--candidate", ckpt, "--junit", under_file), "junit.xml")


def test_out_that_is_a_file_is_refused_before_the_work(edgeres, ckpt, tmp_path, monkeypatch):
    """prune and bench refuse an --out that is a file before pruning or measuring (the file stays as it was)."""
    import edgeres.bench.run as bench_run
    from edgeres.compress import job

    def never(*args, **kwargs):
        raise AssertionError("the work ran before --out was checked")

    monkeypatch.setattr(bench_run, "bench_artifacts", never)
    monkeypatch.setattr(job, "prune", never)
    note = tmp_path / "notes.txt"
    note.write_text("keep")
    _refused(edgeres("bench", ckpt, "--out", note, "--runs", "1"), "notes.txt is a file; expected a folder")
    _refused(edgeres("prune", ckpt, "--macs", "0.5", "--out", note), "notes.txt is a file; expected a folder")
    assert note.read_text() == "keep"


def test_a_detector_on_a_classification_set_is_told_so(edgeres, tmp_path):
    _refused(edgeres("train", "-m", "test_yolo", "-d", "digits", "--epochs", "1", "-o", tmp_path / "r"),
             "digits is a built-in classification set", "shapes-det")


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_threads_zero(edgeres, ckpt, tmp_path, command):
    args = ["eval", ckpt] if command == "eval" else ["bench", ckpt, "--out", tmp_path / "b", "--runs", "1"]
    _refused(edgeres(*args, "--threads", "0"), "threads")


def test_eval_careless_paths(edgeres, ckpt, tmp_path):
    note = tmp_path / "notes.txt"
    note.write_text("hello")
    _refused(edgeres("eval", note), "notes.txt")
    _refused(edgeres("eval", ckpt, "--out", note), "notes.txt")
    _refused(edgeres("eval", ckpt, "--data", ""), "data")
    _refused(edgeres("eval", ckpt, "--data", ckpt), str(ckpt))
    _refused(edgeres("eval", ckpt / "model.safetensors", "--batch-size", "0"), "batch")


def test_eval_of_a_file_beside_a_checkpoint(edgeres, copy):
    plot = copy / "confusion.png"
    plot.write_bytes(b"not a model")
    _refused(edgeres("eval", plot), "cannot tell what runs")  # not the checkpoint it sits in
    code, out = edgeres("eval", copy / "model.json")
    assert code == 0, out
    assert (copy / "metrics.json").is_file() and not (copy / "model.json.eval").exists()


def test_oserror_on_an_output_path_exits_2(edgeres, ckpt, tmp_path):
    # --json is written by the library's write_json: an OS refusal there is bad input, not a crash.
    _refused(edgeres("check", "--baseline", ckpt, "--candidate", ckpt, "--json", tmp_path), str(tmp_path))
    assert os.path.isdir(tmp_path)


@pytest.mark.parametrize("name", ["[/bold]", "[red]x"])
def test_error_message_is_not_read_as_markup(edgeres, tmp_path, name):
    # A path that looks like a rich markup tag once crashed the error printer itself.
    out = _refused(edgeres("eval", tmp_path / name), name)
    assert "MarkupError" not in out
