import subprocess
import sys

import pytest

from edgeres.artifacts import read_json
from edgeres.checkpoint import checkpoint_sha256, load_checkpoint
from edgeres.compress.job import FinetuneConfig, compress_checkpoint
from edgeres.compress.prune import PruneConfig
from edgeres.errors import UserInputError
from edgeres.evaluate import evaluate_artifact


@pytest.fixture(scope="module")
def pruned(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "p"
    summary = compress_checkpoint(tiny_checkpoint, out, PruneConfig(target="macs", amount=0.6, round_to=1),
                                  FinetuneConfig(epochs=1, teacher=str(tiny_checkpoint)))
    return out, summary


def _n_params(ckpt) -> int:
    return sum(p.numel() for p in load_checkpoint(ckpt)[0].parameters())


def test_pruned_checkpoint_records_before_after_and_lineage(pruned, tiny_checkpoint):
    out, summary = pruned
    meta = read_json(out / "model.json")
    assert meta["parent_sha256"] == checkpoint_sha256(tiny_checkpoint)
    assert meta["pruned_shapes"], "a pruned model records its channel widths"
    c = meta["compression"]
    # Each recorded figure against one measured here from the files themselves.
    for side, ckpt in (("before", tiny_checkpoint), ("after", out)):
        assert c[side]["params"] == _n_params(ckpt), side
        assert c[side]["file_bytes"] == (ckpt / "model.safetensors").stat().st_size, side
        assert c[side]["test"]["accuracy"] == read_json(ckpt / "metrics.json")["test"]["accuracy"], side
    assert summary["after"]["params"] == _n_params(out) < _n_params(tiny_checkpoint)
    assert c["after"]["macs"] / c["before"]["macs"] <= 0.6
    assert c["after"]["params"] < c["before"]["params"]
    assert c["after"]["file_bytes"] < c["before"]["file_bytes"]
    assert c["finetune"]["teacher"] == str(tiny_checkpoint)
    drop = (c["before"]["test"]["accuracy"] - c["after"]["test"]["accuracy"]) * 100
    assert c["accuracy_drop_points"] == pytest.approx(drop, abs=1e-3)


def test_pruned_checkpoint_reloads_and_reproduces_its_metrics(pruned, tmp_path):
    out, summary = pruned
    model, meta = load_checkpoint(out)
    assert meta.compression["prune"]["kind"] == "structured"
    metrics, _ = evaluate_artifact(out, out=tmp_path)
    assert metrics["test"]["accuracy"] == summary["after"]["test"]["accuracy"]


def test_unstructured_sparsity_says_it_is_not_faster(tiny_checkpoint, tmp_path):
    summary = compress_checkpoint(tiny_checkpoint, tmp_path / "s", None, FinetuneConfig(epochs=0), sparsity=0.5)
    assert summary["prune"]["kind"] == "unstructured"
    assert summary["prune"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert "speed" in summary["prune"]["note"]
    assert summary["after"]["macs"] == summary["before"]["macs"]


def test_compress_refuses_bad_requests(tiny_checkpoint, pruned):
    with pytest.raises(UserInputError, match="exactly one"):
        compress_checkpoint(tiny_checkpoint, pruned[0].parent / "x", None)
    with pytest.raises(UserInputError, match="already holds"):
        compress_checkpoint(tiny_checkpoint, pruned[0], PruneConfig())


@pytest.mark.slow
def test_cli_prune_exit_codes(tiny_checkpoint, tmp_path):
    cli = [sys.executable, "-m", "edgeres.cli", "prune", str(tiny_checkpoint)]
    both = subprocess.run([*cli, "--macs", "0.5", "--params", "0.5", "--out", str(tmp_path / "a")],
                          capture_output=True, text=True)
    assert both.returncode == 2 and "one pruning target" in both.stderr
    ok = subprocess.run([*cli, "--ratio", "0.25", "--round-to", "1", "--out", str(tmp_path / "b")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "MACs" in ok.stdout and "accuracy drop" in ok.stderr
