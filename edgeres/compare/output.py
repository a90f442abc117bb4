"""compare.json, and compare.md / compare.html from one list of blocks (the report's own renderer), with plots.

Every cell of the table is `format(value * scale, spec)` of a number in compare.json, so the three files show
the same numbers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgeres.artifacts import write_json, write_text
from edgeres.compare.metrics import IMAGE_COLUMNS
from edgeres.plots import save_figure  # chooses the headless backend before pyplot loads

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from edgeres.report.blocks import Block, Heading, Image, Para, Table
from edgeres.report.render import MISSING, to_html, to_markdown

TITLE = "edgeres model comparison"
PLOTS_DIR = "plots"

#: (header, key in a compare.json variant, scale, format spec); the table's columns in order.
COLUMNS: list[tuple[str, str, float, str]] = [
    ("accuracy %", "accuracy", 100.0, ".2f"),
    ("macro F1", "macro_f1", 1.0, ".4f"),
    ("ROC AUC", "roc_auc", 1.0, ".4f"),
    ("PR AUC", "pr_auc", 1.0, ".4f"),
    ("ECE", "ece", 1.0, ".4f"),
    ("params", "params", 1.0, ",.0f"),
    ("MMACs", "macs", 1e-6, ".3f"),
    ("train s", "train_s", 1.0, ".1f"),
    ("s/epoch", "epoch_s", 1.0, ".2f"),
    ("p50 ms", "p50_ms", 1.0, ".3f"),
]
RECALL = (100.0, ".1f")  # per-class recall cells, in percent
#: The columns every task's table ends with: size, cost, training time and latency.
COST_COLUMNS = COLUMNS[5:]

def task_cell(value: Any) -> str:
    """A task's own column: two decimals from 1 up (PSNR 34.40), four significant digits below (SSIM 0.9512,
    MSE 0.0003521)."""
    return MISSING if value is None else format(value, ".2f" if abs(value) >= 1 else ".4g")


def cell(value: Any, scale: float, spec: str) -> str:
    return MISSING if value is None else format(value * scale, spec)


def table_rows(document: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The comparison table: one row per variant; a classifier's COLUMNS, or another task's own metric columns
    (its `table_columns`, kept in each variant's "metrics") followed by the COST_COLUMNS."""
    if not _classifiers(document):
        names = list(document["variants"][0]["metrics"])
        headers = ["model", *names] + [h for h, *_ in COST_COLUMNS]
        rows = [[v["model"]] + [task_cell(v["metrics"].get(n)) for n in names]
                + [cell(v.get(key), scale, spec) for _, key, scale, spec in COST_COLUMNS] for v in document["variants"]]
        return headers, rows
    headers = ["model"] + [h for h, *_ in COLUMNS]
    rows = [[v["model"]] + [cell(v.get(key), scale, spec) for _, key, scale, spec in COLUMNS]
            for v in document["variants"]]
    return headers, rows


def _classifiers(document: dict[str, Any]) -> bool:
    """Whether `document` compares classifiers (compare.json files from before other tasks name no task)."""
    return "headline" not in document


def recall_rows(document: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per-class recall (%): one row per class, one column per variant."""
    variants = document["variants"]
    rows = [[name] + [cell(v["per_class_recall"].get(name), *RECALL) for v in variants]
            for name in document["data"]["class_names"]]
    return ["class"] + [v["model"] for v in variants], rows


def write_outputs(document: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write compare.json, the plots, compare.md and a self-contained compare.html into `out`."""
    out = Path(out)
    written = {"compare.json": write_json(out / "compare.json", document)}
    images = [Image(caption, path, path.relative_to(out).as_posix())
              for caption, path in write_plots(document, out / PLOTS_DIR)]
    blocks = _blocks(document, images)
    written.update({img.rel: img.path for img in images})
    written["compare.md"] = write_text(out / "compare.md", to_markdown(blocks))
    written["compare.html"] = write_text(out / "compare.html", to_html(blocks, TITLE))
    return written


def _blocks(document: dict[str, Any], images: list[Image]) -> list[Block]:
    s, data, lat = document["settings"], document["data"], document["latency"]
    contended = (lat.get("load") or {}).get("contended")
    metrics = (f"ROC AUC and PR AUC are one-vs-rest, macro-averaged; ECE is the expected calibration error of the "
               f"top-1 confidence over {document['ece_bins']} equal bins" if _classifiers(document)
               else f"the {document['task']} task's own metrics")
    intro = (f"{len(document['variants'])} variants trained on {data['source']} at {data['img_size']} px with the "
             f"same split, seed {s['seed']} and settings ({s['epochs']} epochs, batch {s['batch_size']}, "
             f"lr {s['lr']:g}, {s['optimizer']}, {s['scheduler']}). Metrics on the test split "
             f"({data['test_images']} images); {metrics}. "
             f"Latency: p50 of the PyTorch model at batch 1 on {lat['threads']} thread(s), "
             f"{lat['rounds']} interleaved rounds of {lat['runs_per_round']} calls per model.")
    blocks: list[Block] = [Heading(1, TITLE), Para(intro), Table("compare", *table_rows(document), 1)]
    if document.get("image_scores"):
        blocks.append(Para(image_scores_note(document["image_scores"])))
    if contended:
        blocks.append(Para("Other processes competed for the cores while the models were timed; the latencies "
                           "compare fairly (the rounds were interleaved) but are slower than on a quiet machine.",
                           "warn"))
    if _classifiers(document):
        blocks += [Heading(2, "Per-class recall (%)"), Table("recall", *recall_rows(document), 1)]
    if images:
        blocks += [Heading(2, "Plots"), *images]
    return blocks


def image_scores_note(scores: dict[str, Any]) -> str:
    """What the LPIPS, FID and KID columns were scored on, and the test inputs' own scores, for scale."""
    inputs = scores["inputs"]
    parts = []
    if scores["lpips_network"]:
        upsampled = inputs.get("lpips_upsampled_to")
        parts.append(f"{scores['lpips_network']}: mean over the test images"
                     + (f" (upsampled to {upsampled} px, which its backbone needs)" if upsampled else ""))
    if scores["feature_network"]:
        parts.append(f"FID and KID: {scores['feature_network']}")
    own = ", ".join(f"{h} {task_cell(inputs[k])}" for h, k in IMAGE_COLUMNS if k in inputs)
    return (f"{'; '.join(parts)}. Each scores a variant's outputs against the targets; lower is nearer. The test "
            f"inputs themselves score {own}.")


def write_plots(document: dict[str, Any], plots_dir: Path) -> list[tuple[str, Path]]:
    """Accuracy against p50 latency, and per-class recall bars (another task: its headline against latency);
    (caption, path) pairs."""
    variants = document["variants"]
    names = [v["model"] for v in variants]
    if not _classifiers(document):
        head = document["headline"]
        return [(f"Test {head['header']} against p50 latency (batch 1)",
                 plot_headline_latency(names, [v["p50_ms"] for v in variants], [v["headline"] * head["scale"] for v in variants],
                                       head["header"], plots_dir / "headline_latency.png"))]
    return [
        ("Test accuracy against p50 latency (batch 1)",
         plot_accuracy_latency(names, [v["p50_ms"] for v in variants], [v["accuracy"] for v in variants],
                               plots_dir / "accuracy_latency.png")),
        ("Per-class recall on the test split",
         plot_recall_bars(names, document["data"]["class_names"],
                          [[v["per_class_recall"][c] for c in document["data"]["class_names"]] for v in variants],
                          plots_dir / "per_class_recall.png")),
    ]


def plot_accuracy_latency(names: Sequence[str], p50_ms: Sequence[float], accuracy: Sequence[float],
                          path: Path) -> Path:
    """One labelled point per model; the accuracy axis (in %) stops at 100."""
    x, y = np.asarray(p50_ms, float), 100.0 * np.asarray(accuracy, float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (name, xi, yi) in enumerate(zip(names, x, y)):
        ax.scatter([xi], [yi], s=50, color=f"C{k}", label=name, zorder=3, clip_on=False)
        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(6, -10 if yi > 97 else 4), fontsize=8)
    margin = max(2.0, 0.15 * float(y.max() - y.min()))
    ax.set_ylim(max(0.0, float(y.min()) - margin), min(100.0, float(y.max()) + margin))
    ax.set_xlim(0, float(x.max()) * 1.2)
    ax.set_xlabel("p50 latency per image (ms, batch 1, PyTorch)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a point or bar
    return save_figure(fig, path)


def plot_headline_latency(names: Sequence[str], p50_ms: Sequence[float], values: Sequence[float], label: str,
                          path: Path) -> Path:
    """One labelled point per model: a task's headline metric (in its own unit, unbounded) against latency."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (name, xi, yi) in enumerate(zip(names, p50_ms, values)):
        ax.scatter([xi], [yi], s=50, color=f"C{k}", label=name, zorder=3)
        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlim(0, float(max(p50_ms)) * 1.2)
    ax.set_xlabel("p50 latency per image (ms, batch 1, PyTorch)")
    ax.set_ylabel(f"test {label}")
    ax.set_title(f"{label} against latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def plot_recall_bars(names: Sequence[str], class_names: Sequence[str], recalls: Sequence[Sequence[float]],
                     path: Path) -> Path:
    """Grouped bars: per class, one bar per model, recall in % from 0 to 100."""
    r = 100.0 * np.asarray(recalls, float)
    width = 0.8 / len(names)
    positions = np.arange(len(class_names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(class_names) * len(names) + 2), 4.5))
    for k, name in enumerate(names):
        ax.bar(positions + (k - (len(names) - 1) / 2) * width, r[k], width, label=name, color=f"C{k}")
    ax.set_xticks(positions, list(class_names), rotation=45 if len(class_names) > 12 else 0, ha="center")
    ax.set_ylim(0, 100)
    ax.set_xlabel("class")
    ax.set_ylabel("recall (%)")
    ax.set_title("Per-class recall (test split)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a point or bar
    return save_figure(fig, path)
