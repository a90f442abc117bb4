import base64
import copy
import json
import math
from html.parser import HTMLParser

import numpy as np
import pytest

from edgeres.errors import UserInputError
from edgeres.report.charts import pareto_front
from edgeres.report.render import MISSING, render_report, summary_rows
from edgeres.report.schema import read_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}


def _latency(p50: float, spread: float = 1.2, batch: int = 1) -> dict:
    samples = list(np.random.default_rng(int(p50 * 10)).uniform(p50, p50 * spread, 50))
    return {"p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.2, "mean_ms": p50, "std_ms": 0.1,
            "throughput_ips": 1000.0 * batch / p50, "runs": 50, "samples_ms": samples}


def _metrics(acc: float) -> dict:
    return {"accuracy": acc, "macro_f1": acc, "auc": 0.99, "confusion": [[9, 1], [0, 10]],
            "per_class": {"cat": {"recall": 0.9}, "dog": {"recall": 1.0}}}


def _artifact(name, backend, precision, p50=None, acc=None, batch=1, **kw) -> dict:
    return {"name": name, "path": f"runs/b/{name}", "backend": backend, "precision": precision, "threads": 2,
            "batch_size": batch, "input_shape": [batch, 3, 32, 32], "size_bytes": 44_700_000, "params": 11_200_000,
            "macs": 1_820_000_000,
            "memory": {"runtime_baseline_mb": 52.0, "runtime_peak_mb": 98.5, "harness_peak_mb": 750.0},
            "load": {"contended": False, "other_cores": 0.01, "loadavg_before": [0.1, 0.1, 0.1]},
            "latency": {"engine": _latency(p50, batch=batch), "end_to_end": None} if p50 else None,
            "metrics": _metrics(acc) if acc is not None else None,
            "class_names": ["cat", "dog"] if acc is not None else None, **kw}


RESULTS = {
    "environment": {"cpu": "Test CPU <x86>", "cores": 2, "python": "3.11.9", "versions": {"torch": "2.5.0"},
                    "created": "2025-01-01T00:00:00"},
    "artifacts": [
        _artifact("resnet18.fp32", "torch", "fp32", p50=10.0, acc=0.95),
        _artifact("model.onnx", "onnxruntime", "fp32", p50=5.0, acc=0.95, size_bytes=44_600_000),
        _artifact("model.int8.xml", "openvino", "int8", p50=20.0, acc=0.94, batch=8, size_bytes=11_300_000,
                  load={"contended": True, "other_cores": 1.02, "loadavg_before": [2.5, 1.0, 0.5]}),
        _artifact("model.engine", "tensorrt", "fp16", params=None, macs=None, size_bytes=None,
                  memory={"harness_peak_mb": 700.0}, load=None),
    ],
    "baseline": "resnet18.fp32",
    "gate": None,
}


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def _failing_gate():
    """A real GateResult, so the report is tested against what the gate actually emits."""
    from edgeres.tasks.classify import Predictions
    from edgeres.evaluate.gate import GateConfig, check

    labels = np.arange(200) % 2
    right = np.ones(200, bool)
    worse = right.copy()
    worse[:10] = False
    probs = lambda ok: np.eye(2)[np.where(ok, labels, 1 - labels)]  # noqa: E731
    return check(Predictions(labels, probs(right)), Predictions(labels, probs(worse)), ["cat", "dog"],
                 GateConfig(n_boot=1000))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, render_report(copy.deepcopy(RESULTS), out)


@pytest.mark.parametrize("points,front", [
    ([(1, 0.9), (2, 0.95), (3, 0.93), (0.5, 0.5)], [3, 0, 1]),
    ([(1, 0.9), (1, 0.9), (2, 0.8)], [0, 1]),  # equal points both stay; neither beats the other
    ([(1, 0.9), (1, 0.8), (2, 0.9)], [0]),  # same cost lower value, same value higher cost: dominated
    ([(3, 0.7)], [0]),
    ([], []),
    ([(1, math.nan), (2, 0.5)], [1]),
])
def test_pareto_front(points, front):
    assert pareto_front(points) == front


def test_render_writes_all_files_atomically(rendered):
    out, written = rendered
    pngs = {k for k in written if k.startswith("plots/")}
    assert {"report.md", "report.html", "plots/accuracy_latency.png", "plots/accuracy_size.png",
            "plots/latency.png"} <= set(written)
    assert len([k for k in pngs if "confusion" in k]) == 3  # the tensorrt artifact has no metrics
    for path in written.values():
        assert path.exists() and path.stat().st_size > 0
    assert all(written[k].read_bytes().startswith(PNG_MAGIC) for k in pngs)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_summary_rows_speedup_and_missing():
    columns, rows = summary_rows(RESULTS)
    col = {c: i for i, c in enumerate(columns)}
    assert [r[0] for r in rows] == [a["name"] for a in RESULTS["artifacts"]]
    # int8 ran batch 8 at 20 ms per call: 2.5 ms per image against the baseline's 10.
    assert [r[col["speed-up"]] for r in rows] == ["1.00×", "2.00×", "4.00×", MISSING]
    assert [r[col["Δ acc (points)"]] for r in rows] == ["+0.00", "+0.00", "-1.00", MISSING]
    engine = rows[3]
    for name in ("params", "MMACs", "size MB", "p50 ms", "p99 ms", "img/s", "accuracy %"):
        assert engine[col[name]] == MISSING
    assert rows[0][col["MMACs"]] == "1,820.0" and rows[0][col["params"]] == "11.20M"
    assert [r[col["runtime MB"]] for r in rows] == ["98.5 (+46.5)"] * 3 + [MISSING]
    assert [r[col["harness MB"]] for r in rows] == ["750.0"] * 3 + ["700.0"]
    assert [r[col["CPU contention"]] for r in rows] == ["no", "no", "YES (1.02 cores)", MISSING]
    no_baseline = summary_rows({**RESULTS, "baseline": None})[1]
    assert {r[col["speed-up"]] for r in no_baseline} == {MISSING}


def test_markdown_table_has_one_row_per_artifact(rendered):
    out, written = rendered
    md = written["report.md"].read_text(encoding="utf-8")
    lines = md.split("## Summary", 1)[1].strip().splitlines()
    table = [ln for ln in lines[: lines.index("")] if ln.startswith("|")] if "" in lines else lines
    assert len(table) == 2 + len(RESULTS["artifacts"])
    assert "| resnet18.fp32 |" in table[2] and "1.00×" in table[2] and "4.00×" in table[4]
    assert MISSING in table[5]
    for key in (k for k in written if k.startswith("plots/")):
        assert f"]({key})" in md  # linked by relative path
    assert "Test CPU \\<x86>" in md and "torch" in md
    assert "Measured while other processes competed for the cores: model.int8.xml." in md
    assert "runtime MB" in md and "a process that imports only the runtime" in md


def test_html_is_self_contained_and_parses(rendered):
    out, written = rendered
    text = written["report.html"].read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    tags = parser.tags
    assert not [t for t, _ in tags if t in ("script", "link", "iframe")]
    for _, attrs in tags:
        for key in ("src", "href"):
            assert not (attrs.get(key) or "").startswith(("http://", "https://", "//"))
    imgs = [a for t, a in tags if t == "img"]
    assert len(imgs) == len([k for k in written if k.startswith("plots/")])
    for a in imgs:
        assert a["alt"] and a["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(a["src"].split(",", 1)[1]).startswith(PNG_MAGIC)
    assert ("table", {"id": "summary"}) in tags
    assert "Test CPU &lt;x86&gt;" in text and MISSING in text


def test_html_escapes_names_and_renders_gate(tmp_path):
    results = copy.deepcopy(RESULTS)
    results["artifacts"] = results["artifacts"][:2]
    results["artifacts"][1]["name"] = '<img src="http://x/y.png">&co'
    results["gate"] = _failing_gate().to_dict()
    written = render_report(results, tmp_path)
    text = written["report.html"].read_text(encoding="utf-8")
    assert '<img src="http' not in text and "&lt;img src=&quot;http://x/y.png&quot;&gt;&amp;co" in text
    assert "Verdict: FAIL" in text and '<table id="gate">' in text and "&gt; allowed 0.5" in text
    assert "accuracy dropped 5.0 points" in text
    md = written["report.md"].read_text(encoding="utf-8")
    assert "Verdict: FAIL" in md and "| accuracy drop |" in md and "\\<img" in md


def test_bad_results_are_refused(tmp_path):
    with pytest.raises(UserInputError, match="artifacts"):
        render_report({"artifacts": []}, tmp_path)
    with pytest.raises(UserInputError, match="baseline 'nope'"):
        summary_rows({**RESULTS, "baseline": "nope"})


# --- a results.json the report cannot read is refused whole, before anything is written ---

def _with(path: str, value) -> dict:
    """RESULTS with the field at dotted `path` (list indices as numbers) set to `value`."""
    results = copy.deepcopy(RESULTS)
    *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = results
    for key in parents:
        node = node[key]
    node[last] = value
    return results


BAD_FIELDS = [
    ("environment", "foo", "environment must be an object, got 'foo'"),
    ("artifacts.0.latency.engine.p50_ms", "fast", "artifacts[0].latency.engine.p50_ms must be a number, got 'fast'"),
    ("artifacts.1.size_bytes", "big", "artifacts[1].size_bytes must be a number, got 'big'"),
    ("artifacts.0.latency", [1, 2], "artifacts[0].latency must be an object, got a list of 2"),
    ("artifacts.0.memory", "x", "artifacts[0].memory must be an object, got 'x'"),
    ("artifacts.0.memory.runtime_peak_mb", "98", "artifacts[0].memory.runtime_peak_mb must be a number"),
    ("artifacts.2.load", "x", "artifacts[2].load must be an object, got 'x'"),
    ("artifacts.2.load.contended", "yes", "artifacts[2].load.contended must be true or false"),
    ("gate", "x", "gate must be an object, got 'x'"),
    ("gate", {"checks": [{"name": "size"}]}, "gate.checks[0].limit must be present, got nothing"),
    ("artifacts.0.metrics.accuracy", "high", "artifacts[0].metrics.accuracy must be a number, got 'high'"),
    ("artifacts.0.batch_size", "8", "artifacts[0].batch_size must be a positive integer, got '8'"),
    ("artifacts.0.latency.engine.samples_ms", [1.0, "x"], "artifacts[0].latency.engine.samples_ms[1] must be a number"),
    ("artifacts.0.backend", 5, "artifacts[0].backend must be a string, got 5"),
    ("config", "x", "config must be an object, got 'x'"),
    ("artifacts.0.input_shape", "x", "artifacts[0].input_shape must be a list, got 'x'"),
    ("artifacts.3", "x", "artifacts[3] must be an object, got 'x'"),
]


@pytest.mark.parametrize("path,value,message", BAD_FIELDS, ids=[f"{p}={v!r}" for p, v, _ in BAD_FIELDS])
def test_a_wrong_type_is_refused_naming_the_field(path, value, message, tmp_path):
    results = _with(path, value)
    with pytest.raises(UserInputError) as refused:
        render_report(results, tmp_path / "report")
    assert message in str(refused.value) and "expected a results.json" in str(refused.value)
    with pytest.raises(UserInputError, match=message.split(" must ")[0].replace("[", r"\[").replace("]", r"\]")):
        summary_rows(results)  # the CLI prints the summary before rendering
    assert not (tmp_path / "report").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("path,value,message", BAD_FIELDS[:3], ids=[p for p, _, _ in BAD_FIELDS[:3]])
def test_cli_refuses_a_wrong_type_with_exit_2(path, value, message, edgeres, tmp_path):
    source = tmp_path / "results.json"
    source.write_text(json.dumps(_with(path, value)))
    code, printed = edgeres("report", source, "--out", tmp_path / "report")
    assert code == 2 and "Traceback" not in printed
    assert message in " ".join(printed.split())  # the console may wrap the line


def test_read_results_names_the_file(tmp_path):
    source = tmp_path / "edited.json"
    source.write_text(json.dumps(_with("artifacts.0.latency.engine.p50_ms", "fast")))
    with pytest.raises(UserInputError, match=r"edited\.json: artifacts\[0\]\.latency\.engine\.p50_ms must be a number"):
        read_results(source)


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_a_failed_run_leaves_an_existing_report_unchanged(tmp_path):
    out = tmp_path / "report"
    render_report(copy.deepcopy(RESULTS), out)
    (out / "notes.txt").write_text("mine")
    before, siblings = _snapshot(out), sorted(tmp_path.iterdir())
    results = copy.deepcopy(RESULTS)
    results["artifacts"].append(_artifact("extra.onnx", "onnxruntime", "fp32", p50=3.0, acc=0.9))
    results["baseline"] = "nope"  # found only after the charts could have been drawn
    with pytest.raises(UserInputError, match="baseline 'nope'"):
        render_report(results, out)
    with pytest.raises(UserInputError, match="p50_ms"):
        render_report(_with("artifacts.3.latency", {"engine": {"p50_ms": "fast"}}), out)
    assert _snapshot(out) == before and sorted(tmp_path.iterdir()) == siblings


def test_a_folder_in_the_way_is_refused_before_any_file_moves(tmp_path):
    out = tmp_path / "report"
    render_report(copy.deepcopy(RESULTS), out)
    (out / "report.html").unlink()
    (out / "report.html").mkdir()
    before = _snapshot(out)
    with pytest.raises(UserInputError, match="report.html is a folder"):
        render_report(_with("environment.cpu", "Another CPU"), out)
    assert _snapshot(out) == before and [p.name for p in tmp_path.iterdir()] == ["report"]


def test_a_rerun_replaces_the_report_and_keeps_other_files(tmp_path):
    out = tmp_path / "report"
    render_report(copy.deepcopy(RESULTS), out)
    (out / "notes.txt").write_text("mine")
    (out / "plots" / "mine.png").write_bytes(b"x")
    old_md = (out / "report.md").read_text()
    results = copy.deepcopy(RESULTS)
    results["environment"]["cpu"] = "Another CPU"
    written = render_report(results, out)
    assert "Another CPU" in (out / "report.md").read_text() != old_md
    assert (out / "notes.txt").read_text() == "mine" and (out / "plots" / "mine.png").read_bytes() == b"x"
    assert all(path.parent.is_relative_to(out) and path.is_file() for path in written.values())
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no scratch folder left beside it


def test_an_older_results_json_still_renders(tmp_path):
    """Written before tasks, units, runtime memory, load, ISA and per-call samples: those fields are absent."""
    old = {"environment": {"cpu": "Old CPU", "cores": 4, "python": "3.10.0", "versions": {"torch": "2.1.0"}},
           "artifacts": [{"name": "a.onnx", "path": "a.onnx", "backend": "onnxruntime", "precision": "fp32",
                          "threads": 4, "batch_size": 1, "size_bytes": 1_000_000, "peak_rss_mb": 321.0,
                          "latency": {"engine": {"p50_ms": 2.0, "p99_ms": 3.0, "throughput_ips": 500.0}},
                          "metrics": {"accuracy": 0.9}},
                         {"path": "runs/b/model.xml", "latency": None, "metrics": None}],
           "baseline": "a.onnx",
           "gate": {"passed": True, "metric_checks": [{"name": "accuracy", "baseline": 0.9, "candidate": 0.895,
                                                       "delta_points": -0.5}]}}
    written = render_report(old, tmp_path)
    md = written["report.md"].read_text(encoding="utf-8")
    assert "| a.onnx | onnxruntime |" in md and "| model.xml |" in md and "321.0" in md
    assert "Verdict: PASS" in md and "90.00% (baseline)" in md
