"""Data loss and security: what a careless or hostile user, or a kill at the wrong moment, must not break."""
import contextlib
import os
import shutil
import stat
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from edgeres.artifacts import read_json, sha256_file
from edgeres.errors import UserInputError
from edgeres.export import ExportConfig, export_checkpoint

CLI = [sys.executable, "-m", "edgeres.cli"]
DEAD_PID = 999_999_999  # above any pid_max: no process has it, as after a kill


@contextlib.contextmanager
def _umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def _nudged_copy(checkpoint, dst):
    """A copy of `checkpoint` with different weights: another model with the same classes."""
    shutil.copytree(checkpoint, dst)
    weights = load_file(dst / "model.safetensors")
    weights = {k: v * 1.01 if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, dst / "model.safetensors")
    return dst


def _recorded_files_match(out):
    doc = read_json(out / "export.json")
    recorded = {name: sha for a in doc["artifacts"] for name, sha in a["files"].items()}
    return recorded and all(sha256_file(out / name) == sha for name, sha in recorded.items())


# --- export: all-or-nothing publishing, recorded sha256 checked by readers ---------------------------------

@pytest.fixture(scope="module")
def ir_export(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "exports"
    export_checkpoint(tiny_checkpoint, out, ExportConfig(formats=("onnx", "openvino"), precisions=("fp32",)))
    return out


def test_export_records_the_sha256_of_every_file(ir_export):
    doc = read_json(ir_export / "export.json")
    ir = next(a for a in doc["artifacts"] if a["backend"] == "openvino")
    assert set(ir["files"]) == {"model.fp32.xml", "model.fp32.bin"}
    assert _recorded_files_match(ir_export)


def test_eval_refuses_a_tampered_bin(ir_export, tmp_path):
    out = tmp_path / "exports"
    shutil.copytree(ir_export, out)
    weights = out / "model.fp32.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    res = subprocess.run([*CLI, "eval", str(out / "model.fp32.xml"), "--out", str(tmp_path / "ev")],
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "model.fp32.bin" in res.stderr and "sha256" in res.stderr and "Traceback" not in res.stderr


def test_a_kill_mid_export_leaves_the_previous_set_whole(ir_export, tiny_checkpoint, tmp_path, monkeypatch):
    import edgeres.export as export

    out = tmp_path / "exports"
    shutil.copytree(ir_export, out)
    before = {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()}

    def killed(ctx, precision):
        (ctx.staging / f"model.{precision}.xml").write_text("half-written")
        raise KeyboardInterrupt

    monkeypatch.setitem(export._EXPORTERS, "openvino", ("openvino", killed))
    other = _nudged_copy(tiny_checkpoint, tmp_path / "other")
    with pytest.raises(KeyboardInterrupt):
        # ONNX of the new model is made first; the OpenVINO step is killed.
        export_checkpoint(other, out, ExportConfig(formats=("onnx", "openvino"), precisions=("fp32",)))
    assert {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()} == before
    assert _recorded_files_match(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", "other"]  # no staging left behind


def test_reexport_swaps_the_set_and_keeps_the_users_files(ir_export, tiny_checkpoint, tmp_path):
    out = tmp_path / "exports"
    shutil.copytree(ir_export, out)
    (out / "notes.txt").write_text("mine")
    (out / "model.fp32.onnx.eval").mkdir()
    (out / "model.fp32.onnx.eval" / "metrics.json").write_text("{}")
    leftover = tmp_path / f".exports.staging.{DEAD_PID}-0"
    leftover.mkdir()
    other = _nudged_copy(tiny_checkpoint, tmp_path / "other")
    doc = export_checkpoint(other, out, ExportConfig(formats=("onnx",), precisions=("fp32",)))
    assert doc["source"] == str(other) and _recorded_files_match(out)
    assert not (out / "model.fp32.xml").exists()  # the old set is gone as a whole
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.fp32.onnx.eval" / "metrics.json").is_file()
    assert not leftover.exists()


def test_a_set_moved_aside_by_a_kill_is_restored(tmp_path):
    from edgeres.export.publish import recover

    aside = tmp_path / f".exports.old.{DEAD_PID}-0"
    aside.mkdir()
    (aside / "export.json").write_text("{}")
    recover(tmp_path / "exports")
    assert (tmp_path / "exports" / "export.json").is_file() and not aside.exists()


def test_failed_message_names_no_folder_that_does_not_exist(tiny_checkpoint, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import edgeres.export as export
    from edgeres.cli import app

    def broken(ctx, precision):
        raise RuntimeError("the exporter gave up")  # as a converter does: no file is written

    monkeypatch.setitem(export._EXPORTERS, "onnx", ("onnxruntime", broken))
    out = tmp_path / "x"
    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "--to", "onnx", "--out", str(out)])
    assert res.exit_code == 1 and "1 export(s) failed" in res.output
    assert not (out / "failed").exists() and "failed/" not in res.output.replace("\n", "")
    assert str(out / "failed") not in res.output.replace("\n", "")


# --- leftovers and permissions ------------------------------------------------------------------------------

def test_outputs_have_umask_permissions_and_dead_writers_leftovers_go(tiny_checkpoint, tmp_path):
    from edgeres.bench.run import write_results
    from edgeres.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(tiny_checkpoint)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    dead = ckpt / f".model.json.{DEAD_PID}-0.tmp"
    alive = ckpt / ".model.json.1-0.tmp"  # pid 1 runs: its write may still be under way
    dead.write_text("left by a kill")
    alive.write_text("in flight")
    with _umask(0o027):
        save_checkpoint(model, meta, ckpt)
        export_checkpoint(ckpt, tmp_path / "exports", ExportConfig(formats=("onnx",), precisions=("fp32",)))
        bench = write_results({"artifacts": []}, tmp_path / "bench")
    written = [ckpt / "model.safetensors", ckpt / "model.json", tmp_path / "exports" / "model.fp32.onnx",
               tmp_path / "exports" / "export.json", bench]
    assert {p.name: _mode(p) for p in written} == {p.name: 0o640 for p in written}
    assert _mode(tmp_path / "exports") == 0o750
    assert not dead.exists() and alive.exists()


def test_openvino_save_leaves_no_scratch_and_cleans_a_killed_ones(tmp_path):
    # ov.save_model writes into a scratch folder beside the IR; a kill there once left a 0700 folder forever.
    import openvino as ov

    from edgeres.export.openvino.convert import save_ir

    dead = tmp_path / f".model.fp32.scratch.{DEAD_PID}-0"
    alive = tmp_path / ".model.fp32.scratch.1-0"  # pid 1 runs: its save may still be under way
    for d in (dead, alive):
        d.mkdir()
        (d / "model.fp32.bin").write_bytes(b"half")
    x = ov.opset13.parameter([1, 3], ov.Type.f32, name="x")
    save_ir(ov.Model([ov.opset13.relu(x)], [x]), tmp_path / "model.fp32.xml", compress_to_fp16=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, "model.fp32.bin", "model.fp32.xml"])


# --- training resume state -----------------------------------------------------------------------------------

@pytest.mark.parametrize("renames_before_kill", [0, 1, 2])
def test_a_kill_while_saving_resume_state_never_mixes_two_epochs(tmp_path, monkeypatch, renames_before_kill):
    import torch

    from edgeres.train.state import load_state, save_state

    save_state({"epoch": 0, "model": {"w": torch.zeros(3)}}, tmp_path)
    real_replace, done = os.replace, []

    def replace_then_die(src, dst):
        if len(done) == renames_before_kill:
            raise KeyboardInterrupt  # the process is killed before this rename
        done.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with contextlib.suppress(KeyboardInterrupt):
        save_state({"epoch": 1, "model": {"w": torch.ones(3)}}, tmp_path)
    monkeypatch.undo()
    state = load_state(tmp_path)
    # Whatever survived, the weights belong to the epoch the state claims.
    assert state["model"]["w"].tolist() == [float(state["epoch"])] * 3


# --- image folders with symlinks -----------------------------------------------------------------------------

def _images(root, classes=("cat", "dog"), per_class=4):
    import numpy as np
    from PIL import Image

    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((16, 16), 40 * k + 10 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


_SCAN = r"""
import json, resource, sys
from pathlib import Path
from edgeres.data.folder import _scan
from edgeres.errors import UserInputError
# The old scan grew without bound on a loop: cap this process at 1 GiB above what the imports took.
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, vm + 2**30))
for root in sys.argv[1:]:
    try:
        names, samples = _scan(Path(root))
        print(json.dumps({"classes": names, "files": len(samples)}))
    except UserInputError as e:
        print(json.dumps({"error": str(e)}))
"""


def test_symlink_loops_are_scanned_once_reported_or_refused(tmp_path):
    import json

    inner = _images(tmp_path / "inner")
    os.symlink(inner / "cat", inner / "cat" / "loop")
    through_root = _images(tmp_path / "through_root")
    os.symlink(through_root, through_root / "cat" / "loop")  # cat/loop/dog/* are dog's images under cat
    # A loop made the old scan run without end: the timeout turns that into a failure, not a hung test.
    res = subprocess.run([sys.executable, "-c", _SCAN, str(inner), str(through_root)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    looped, crossed = map(json.loads, res.stdout.splitlines())
    assert looped == {"classes": ["cat", "dog"], "files": 8}
    assert str(inner / "cat" / "loop") in res.stderr and "already scanned" in res.stderr
    assert str(through_root / "cat") in crossed["error"] and str(through_root / "dog") in crossed["error"]


def test_one_file_in_two_splits_is_refused(tmp_path):
    from edgeres.data import DataConfig, load_data

    root = tmp_path / "data"
    _images(root / "train", per_class=6)
    _images(root / "test", per_class=2)
    os.symlink(root / "train" / "cat" / "0.png", root / "test" / "cat" / "leak.png")
    with pytest.raises(UserInputError, match="two classes or splits") as e:
        load_data(DataConfig(str(root), img_size=16))
    assert str(root / "train" / "cat") in str(e.value) and str(root / "test" / "cat") in str(e.value)


# --- check: lineage -----------------------------------------------------------------------------------------

def _child(parent, dst, parent_sha):
    """A checkpoint with other weights that records `parent_sha` as its parent, as prune/fine-tune write."""
    import json

    _nudged_copy(parent, dst)
    meta = json.loads((dst / "model.json").read_text())
    (dst / "model.json").write_text(json.dumps({**meta, "parent_sha256": parent_sha}))
    return dst


@pytest.mark.slow
def test_check_refuses_a_candidate_not_made_from_the_baseline(tiny_checkpoint, tmp_path):
    stranger = _nudged_copy(tiny_checkpoint, tmp_path / "stranger")  # same classes and shapes, other weights
    args = [*CLI, "check", "--baseline", str(tiny_checkpoint), "--candidate", str(stranger), "--max-drop", "100"]
    res = subprocess.run(args, capture_output=True, text=True)
    assert res.returncode == 2 and "does not descend" in res.stderr and "--allow-unrelated" in res.stderr
    res = subprocess.run([*args, "--allow-unrelated", "--json", str(tmp_path / "gate.json")], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert any("does not descend" in w for w in read_json(tmp_path / "gate.json")["warnings"])


def test_check_follows_lineage_through_checkpoints_it_finds(tiny_checkpoint, tmp_path):
    from edgeres.checkpoint import checkpoint_sha256
    from edgeres.check import check_artifacts
    from edgeres.evaluate.gate import GateConfig

    pruned = _child(tiny_checkpoint, tmp_path / "pruned", checkpoint_sha256(tiny_checkpoint))
    tuned = _child(pruned, tmp_path / "tuned", checkpoint_sha256(pruned))
    export_checkpoint(tuned, tmp_path / "exports", ExportConfig(formats=("onnx",), precisions=("fp32",)))
    # The export records `tuned` and its parent `pruned`; `pruned` (beside it) names the baseline as parent.
    result = check_artifacts(tiny_checkpoint, tmp_path / "exports" / "model.fp32.onnx", GateConfig(max_drop=100))
    assert not any("descend" in w for w in result.warnings)
    shutil.rmtree(pruned)  # without the middle link the chain cannot be followed
    with pytest.raises(UserInputError, match="does not descend"):
        check_artifacts(tiny_checkpoint, tmp_path / "exports" / "model.fp32.onnx", GateConfig(max_drop=100))


# --- edgeres run: names are names, and a run deletes only what it wrote ------------------------------------

RECIPE = {"name": "safe", "data": {"source": "digits", "img_size": 16},
          "train": {"model": "test_resnet", "epochs": 1}, "report": {}}


@pytest.mark.parametrize("name", ["../../victim", "/tmp/victim", "a/b", "..", "."])
def test_recipe_name_must_be_a_plain_name(tmp_path, name):
    import yaml

    from edgeres.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "name": name}))
    with pytest.raises(UserInputError, match=r"\bname\b.*must be a plain name"):
        load_recipe(path)


def test_run_refuses_a_folder_it_did_not_create(tmp_path):
    import yaml

    victim = tmp_path / "victim"
    (victim / "train").mkdir(parents=True)
    (victim / "train" / "thesis.tex").write_text("years of work")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    res = subprocess.run([*CLI, "run", str(recipe), "--out", str(victim)], capture_output=True, text=True)
    assert res.returncode == 2 and "choose another --out" in res.stderr and "Traceback" not in res.stderr
    assert (victim / "train" / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in victim.iterdir()) == ["train"]


def test_run_refuses_a_stage_folder_its_manifest_does_not_record(tmp_path):
    from edgeres.pipeline import run_recipe
    from edgeres.recipe import Recipe

    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    (run / "manifest.json").write_text('{"stages": {}}')
    (run / "train" / "mine.txt").write_text("not edgeres's")
    with pytest.raises(UserInputError, match="does not record it"):
        run_recipe(Recipe.model_validate(RECIPE), out=run)
    assert (run / "train" / "mine.txt").is_file()


@pytest.mark.parametrize("record", ["manifest.json", "export.json"])
def test_a_damaged_record_is_refused_naming_it(tmp_path, record):
    # What a damaged record vouches for cannot be trusted: exit 2 saying which file and what to do.
    from edgeres import runtime
    from edgeres.pipeline import run_recipe
    from edgeres.recipe import Recipe

    (tmp_path / record).write_text('{"stages": ')
    if record == "manifest.json":
        with pytest.raises(UserInputError, match="manifest.json is not valid JSON.*remove the run directory"):
            run_recipe(Recipe.model_validate(RECIPE), out=tmp_path)
    else:
        (tmp_path / "model.fp32.onnx").write_bytes(b"onnx")
        with pytest.raises(UserInputError, match="export.json is not valid JSON.*export again"):
            runtime.load(tmp_path / "model.fp32.onnx")
