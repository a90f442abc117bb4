"""Render a bench `results.json` as report.md and a self-contained report.html, with PNG charts.

Both files come from one list of blocks (headings, paragraphs, tables, images), so they cannot drift
apart. The HTML embeds its images as data URIs and its CSS inline: it opens offline, from an e-mail
attachment or a CI artifact store, with no other file beside it.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

from edgeres.artifacts import scratch_dir, write_text
from edgeres.bench.load import CONTENTION_SHARE
from edgeres.errors import UserInputError
from edgeres.meta import DEFAULT_TASK
from edgeres.report.blocks import Block, Bullets, Heading, Image, Para, Table
from edgeres.report.charts import engine_latency, p50_per_image, pareto_front, write_charts
from edgeres.report.schema import check_results
from edgeres.report.sections import evaluation_blocks, explanation_blocks
from edgeres.tasks import Task, get_task

MISSING = "–"
TITLE = "edgeres benchmark report"
_RUN_COLUMNS = ["artifact", "backend", "precision", "threads×batch", "size MB", "params", "MMACs", "p50 ms",
                "p99 ms", "img/s"]
_MEMORY_COLUMNS = ["runtime MB", "harness MB", "CPU contention"]
_FIRST_NUMERIC = 4  # summary columns from here on are right-aligned
MEMORY_NOTE = ("Memory: runtime MB is the peak resident memory of a process that imports only the runtime "
               "(ONNX Runtime, OpenVINO; torch for a checkpoint), loads the artifact and runs the benchmark batch, "
               "with its increment over the runtime's own import in brackets; harness MB is the peak of the "
               "measuring process (torch, test data and timing included), not the artifact's. CPU contention: "
               f"whether other processes took more than {CONTENTION_SHARE:.0%} of the measured cores beyond the free "
               "ones, and how many cores they took on average.")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;
color:#1b1f24;line-height:1.45}
table{border-collapse:collapse;margin:0.8rem 0 1.4rem;font-size:0.9rem}
th,td{border:1px solid #d0d7de;padding:0.3rem 0.6rem;text-align:left}
th{background:#f3f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1rem 0 2rem}img{max-width:100%;height:auto}figcaption{color:#57606a;font-size:0.9rem}
p.pass{color:#1a7f37;font-weight:600}p.fail{color:#cf222e;font-weight:600}p.warn{color:#9a6700;font-weight:600}
"""


def summary_columns(task: Task) -> list[str]:
    """The summary table's headers; the task names its metric and that metric's change."""
    metric, delta = task.report_columns
    return [*_RUN_COLUMNS, metric, "speed-up", delta, *_MEMORY_COLUMNS]


def results_task(artifacts: list[dict[str, Any]]) -> Task:
    """The one task of the measured artifacts (results.json written before tasks existed hold classifiers)."""
    names = sorted({str(a.get("task") or DEFAULT_TASK) for a in artifacts})
    if len(names) > 1:
        raise UserInputError(f"the results mix tasks ({', '.join(names)}); their metrics do not share a column, "
                             "so benchmark and report each task on its own")
    return get_task(names[0])


def summary_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of the summary table, one row per artifact, every cell a string ("–" if unknown)."""
    return _summary(results, _artifacts(results))


def _summary(results: dict[str, Any], artifacts: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    task = results_task(artifacts)
    base = _baseline(results, artifacts)
    base_img_ms = p50_per_image(base) if base else None
    base_acc = task.headline(base.get("metrics")) if base else None
    rows = []
    for a in artifacts:
        lat = engine_latency(a) or {}
        acc = task.headline(a.get("metrics"))
        img_ms = p50_per_image(a)
        speedup = base_img_ms / img_ms if base_img_ms and img_ms else None
        delta = task.headline_scale * (acc - base_acc) if acc is not None and base_acc is not None else None
        rows.append([
            a["name"], a.get("backend") or MISSING, a.get("precision") or MISSING,
            _threads_batch(a),
            _fmt(_scaled(a.get("size_bytes"), 1e6), ".2f"), _fmt(_scaled(a.get("params"), 1e6), ".2f", "M"),
            _fmt(_scaled(a.get("macs"), 1e6), ",.1f"), _fmt(lat.get("p50_ms"), ".2f"), _fmt(lat.get("p99_ms"), ".2f"),
            _fmt(lat.get("throughput_ips"), ",.1f"), _fmt(_scaled(acc, 1 / task.headline_scale), ".2f"),
            _fmt(speedup, ".2f", "×"),
            _fmt(delta, "+.2f"), *_memory_cells(a), _contention_cell(a),
        ])
    return summary_columns(task), rows


def _memory_cells(artifact: dict[str, Any]) -> list[str]:
    """Runtime peak (its increment over the runtime's own import in brackets) and the harness's peak."""
    memory = artifact.get("memory") or {}
    peak, base = memory.get("runtime_peak_mb"), memory.get("runtime_baseline_mb")
    runtime = _fmt(peak, ".1f") + (f" ({_fmt(peak - base, '+.1f')})" if peak is not None and base is not None else "")
    # results.json files written before the runtime figure existed called the harness figure peak_rss_mb
    return [runtime, _fmt(memory.get("harness_peak_mb", artifact.get("peak_rss_mb")), ".1f")]


def _contention_cell(artifact: dict[str, Any]) -> str:
    load = artifact.get("load") or {}
    if load.get("contended") is None:
        return MISSING
    return f"YES ({_fmt(load.get('other_cores'), '.2f')} cores)" if load["contended"] else "no"


def contended(artifacts: list[dict[str, Any]]) -> list[str]:
    """Names of the artifacts measured while other processes competed for the cores."""
    return [a["name"] for a in artifacts if (a.get("load") or {}).get("contended")]


def render_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.md, report.html and plots/*.png into `out_dir`; returns {relative name: path}.

    The whole report is built in a scratch folder beside `out_dir` and moved in only when complete, so a run that
    fails leaves an earlier report as it was. Other files in `out_dir` are left alone.
    """
    out_dir = Path(out_dir)
    artifacts = _artifacts(results)
    summary = _summary(results, artifacts)  # refuses a missing baseline or mixed tasks before anything is written
    # Beside the folder a symlinked `out_dir` points to: moving out of the scratch folder must be a rename.
    with scratch_dir(out_dir.resolve().parent, f"{out_dir.resolve().name}.report") as scratch:
        charts = write_charts(artifacts, scratch / "plots", results_task(artifacts))
        images = [Image(caption, path, path.relative_to(scratch).as_posix()) for caption, path in charts]
        blocks = _blocks(results, artifacts, summary, images, scratch)
        write_text(scratch / "report.md", to_markdown(blocks))
        write_text(scratch / "report.html", to_html(blocks, TITLE))
        return _publish(scratch, out_dir)


def _publish(scratch: Path, out_dir: Path) -> dict[str, Path]:
    """Move every file of `scratch` to the same place in `out_dir`, the pages last (each move is a rename, so a
    reader sees a whole file, old or new); returns {relative name: path}."""
    pages = ("report.md", "report.html")
    rels = sorted((p.relative_to(scratch).as_posix() for p in scratch.rglob("*") if p.is_file()),
                  key=lambda rel: (rel in pages, rel))
    blocked = [rel for rel in rels if (out_dir / rel).is_dir()]
    if blocked:  # found before the first move, so the old report stays whole
        raise UserInputError(f"{out_dir / blocked[0]} is a folder where the report writes a file; move it away "
                             "or choose another --out")
    written = {}
    for rel in rels:
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(scratch / rel, target)
        written[rel] = target
    return written


def to_markdown(blocks: list[Block]) -> str:
    """Markdown for a list of blocks; images are linked by relative path."""
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append("#" * b.level + " " + _md(b.text))
        elif isinstance(b, Para):
            parts.append(_md(b.text))
        elif isinstance(b, Bullets):
            parts.append("\n".join(f"- {_md(item)}" for item in b.items))
        elif isinstance(b, Table):
            align = ["---:" if b.first_numeric is not None and j >= b.first_numeric else "---"
                     for j in range(len(b.columns))]
            lines = [_md_row(b.columns), "| " + " | ".join(align) + " |"] + [_md_row(r) for r in b.rows]
            parts.append("\n".join(lines))
        elif isinstance(b, Image):
            parts.append(f"![{_md(b.alt)}]({b.rel})")
    return "\n\n".join(parts) + "\n"


def to_html(blocks: list[Block], title: str) -> str:
    """A self-contained HTML page for a list of blocks: inline CSS, images as base64 data URIs."""
    esc = html.escape
    body = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{esc(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            cls = f' class="{esc(b.css_class)}"' if b.css_class else ""
            body.append(f"<p{cls}>{esc(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in b.items) + "</ul>")
        elif isinstance(b, Table):
            body.append(_html_table(b))
        elif isinstance(b, Image):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{esc(b.alt)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{esc(b.alt)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _blocks(results: dict[str, Any], artifacts: list[dict[str, Any]], summary: tuple[list[str], list[list[str]]],
            images: list[Image], out_dir: Path) -> list[Block]:
    columns, rows = summary
    env = results.get("environment") or {}
    base = results.get("baseline")
    intro = (f"{len(artifacts)} artifacts measured on {env.get('cpu') or 'an unrecorded CPU'}"
             f" ({env.get('cores') or MISSING} cores). Latency is the engine call alone, per call at the batch"
             " size shown; speed-up is the baseline's p50 per image divided by the artifact's"
             + (f"; the baseline is {base}." if base else "; no baseline was given."))
    blocks: list[Block] = [Heading(1, TITLE), Para(intro), Para(MEMORY_NOTE), Heading(2, "Summary"),
                           Table("summary", columns, rows, _FIRST_NUMERIC)]
    busy = contended(artifacts)
    if busy:
        blocks.append(Para("Measured while other processes competed for the cores: " + ", ".join(busy) + ". Their "
                           "latencies say more about the load than about the artifact; re-measure on a quiet "
                           "machine before comparing them.", "warn"))
    task = results_task(artifacts)
    front = _latency_front(artifacts, task)
    if front:
        blocks.append(Para(f"Pareto front (higher {task.metric} at lower p50 latency per image): "
                           + ", ".join(front) + "."))
    if results.get("gate"):
        blocks += _gate_blocks(results["gate"])
    if images:
        blocks += [Heading(2, "Charts"), *images]
    if results.get("evaluation"):
        blocks += evaluation_blocks(results["evaluation"], out_dir, artifacts)
    if results.get("explanations"):
        blocks += explanation_blocks(results["explanations"], out_dir)
    blocks += [Heading(2, "Environment"), Table("environment", ["item", "value"], _environment_rows(env))]
    return blocks


def _gate_blocks(gate: dict[str, Any]) -> list[Block]:
    from edgeres.evaluate.gate import check_rows

    passed = bool(gate.get("passed"))
    blocks: list[Block] = [Heading(2, "Gate"), Para(f"Verdict: {'PASS' if passed else 'FAIL'}",
                                                     "pass" if passed else "fail")]
    if gate.get("baseline_accuracy") is not None and gate.get("candidate_accuracy") is not None:
        lo, hi = gate.get("delta_ci_points") or (None, None)
        blocks.append(Para(
            f"Accuracy {100 * gate['baseline_accuracy']:.2f}% (baseline) → {100 * gate['candidate_accuracy']:.2f}% "
            f"(candidate) on {_fmt(gate.get('n'), 'd')} images: {_fmt(gate.get('delta_points'), '+.2f')} points, "
            f"{_fmt(gate.get('confidence'), '.0%')} CI {_fmt(lo, '+.2f')} to {_fmt(hi, '+.2f')}; McNemar "
            f"p={_fmt(gate.get('mcnemar_p'), '.3g')} ({_fmt(gate.get('mcnemar_b'), 'd')} images newly wrong, "
            f"{_fmt(gate.get('mcnemar_c'), 'd')} newly right)."))
    else:
        for m in gate.get("metric_checks") or []:
            lo, hi = m.get("delta_ci_points") or (None, None)
            unit = m.get("unit") or "points"  # results.json written before units held fractions and points
            value = ((lambda v: f"{_fmt(_scaled(v, 0.01), '.2f')}%") if unit == "points"
                     else (lambda v: f"{_fmt(v, '.2f')} {unit}"))
            blocks.append(Para(
                f"{m['name']} {value(m.get('baseline'))} (baseline) → {value(m.get('candidate'))} (candidate) on "
                f"{_fmt(gate.get('n'), 'd')} images: {_fmt(m.get('delta_points'), '+.2f')} {unit}, "
                f"{_fmt(gate.get('confidence'), '.0%')} paired-bootstrap CI {_fmt(lo, '+.2f')} to {_fmt(hi, '+.2f')}."))
    notes = [f"Failed: {r}" for r in gate.get("reasons") or []]
    notes += [f"Warning: {w}" for w in gate.get("warnings") or []]
    if notes:
        blocks.append(Bullets(notes))
    if gate.get("checks"):
        blocks.append(Table("gate", *check_rows(gate)))
    return blocks


def _environment_rows(env: dict[str, Any]) -> list[list[str]]:
    rows = [[key, _fmt(env.get(key), "")] for key in ("cpu", "cores", "python", "created")]
    rows.insert(1, ["ISA", ", ".join(env.get("isa") or []) or "-"])  # which int8/bf16 kernels the figures had
    rows += [[name, _fmt(version, "")] for name, version in sorted((env.get("versions") or {}).items())]
    return rows


def _latency_front(artifacts: list[dict[str, Any]], task: Task) -> list[str]:
    pts = [(a["name"], p50_per_image(a), task.headline(a.get("metrics"))) for a in artifacts]
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    return [pts[i][0] for i in pareto_front([(lat, acc) for _, lat, acc in pts])]


def _artifacts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Artifacts from a checked results.json, each guaranteed a name (copies; the input is not changed)."""
    check_results(results)
    return [{**a, "name": str(a.get("name") or Path(str(a.get("path") or "")).name or f"artifact {i}")}
            for i, a in enumerate(results["artifacts"])]


def _baseline(results: dict[str, Any], artifacts: list[dict[str, Any]]) -> dict[str, Any] | None:
    name = results.get("baseline")
    if not name:
        return None
    for a in artifacts:
        if a["name"] == name:
            return a
    raise UserInputError(f"baseline {name!r} is not among the artifacts: {[a['name'] for a in artifacts]}")


def _threads_batch(artifact: dict[str, Any]) -> str:
    threads, batch = artifact.get("threads"), artifact.get("batch_size")
    return MISSING if threads is None and batch is None else f"{_fmt(threads, 'd')}×{_fmt(batch, 'd')}"


def _scaled(value: float | None, unit: float) -> float | None:
    return None if value is None else value / unit


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return MISSING
    try:
        return format(value, spec) + suffix
    except (TypeError, ValueError):  # a hand-edited results.json with "2.0" threads should still render
        return str(value) + suffix


def _md(text: str) -> str:
    # Escape what would turn a name into markup; underscores are left alone (GFM ignores them mid-word).
    for ch in "\\`*[]<|":
        text = text.replace(ch, "\\" + ch)
    return text


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(_md(c) for c in cells) + " |"


def _html_table(t: Table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in t.columns)
    body = []
    for row in t.rows:
        cells = "".join(
            f'<td class="num">{esc(c)}</td>' if t.first_numeric is not None and j >= t.first_numeric
            else f"<td>{esc(c)}</td>" for j, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return (f'<table id="{esc(t.id)}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(body) + "\n</tbody>\n</table>")
