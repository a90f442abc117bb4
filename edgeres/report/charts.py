"""Benchmark charts: the task's headline metric against latency and size, latency distributions, confusion matrices."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

from edgeres.meta import DEFAULT_TASK
from edgeres.plots import fit_bounded_axis, plain_log_axis, plot_confusion, save_figure  # Agg before pyplot
from edgeres.tasks import Task, get_task

import matplotlib  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


# boxplot's `vert` is deprecated from 3.11; its replacement `orientation` only exists from 3.10.
_HORIZONTAL = ({"orientation": "horizontal"} if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10)
               else {"vert": False})
_LOG_SPREAD = 20.0  # past this max/min ratio a linear axis squashes the fast artifacts into one corner


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of (cost, value) points no other point beats: lower-or-equal cost and higher-or-equal value,
    one strictly. Equal points are all kept; points with NaN are never on the front. Ordered by cost."""
    pts = [(float(c), float(v)) for c, v in points]
    finite = [i for i, (c, v) in enumerate(pts) if not (math.isnan(c) or math.isnan(v))]
    front = []
    for i in finite:
        ci, vi = pts[i]
        dominated = any(pts[j][0] <= ci and pts[j][1] >= vi and pts[j] != pts[i] for j in finite)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (pts[i][0], -pts[i][1], i))


def engine_latency(artifact: dict[str, Any]) -> dict[str, Any] | None:
    """The engine-latency summary of one results.json artifact, or None when it was not measured."""
    return ((artifact.get("latency") or {}).get("engine")) or None


def headline(artifact: dict[str, Any], task: Task) -> float | None:
    """The task's headline metric (a fraction: accuracy, mAP) of one results.json artifact, or None."""
    return task.headline(artifact.get("metrics"))


def p50_per_image(artifact: dict[str, Any]) -> float | None:
    """Engine p50 divided by the batch size, so artifacts timed at different batch sizes compare fairly."""
    p50 = (engine_latency(artifact) or {}).get("p50_ms")
    return p50 / (artifact.get("batch_size") or 1) if p50 else None


def slug(name: str) -> str:
    """A file-name-safe form of an artifact name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "artifact"


def plot_tradeoff(names: Sequence[str], cost: Sequence[float], acc: Sequence[float], groups: Sequence[str],
                  path: str | Path, xlabel: str, title: str, ylabel: str = "accuracy (%)", scale: float = 100.0,
                  top: float | None = 100.0) -> Path:
    """A metric (drawn as value x `scale`: a fraction in %) against a cost (latency or size), one colour per group,
    the Pareto front drawn as steps; the metric's axis stops at `top` (None: a metric without a ceiling, e.g. dB)."""
    cost_a, acc_a = np.asarray(cost, float), scale * np.asarray(acc, float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # The axis stops at 100%, so a point there sits on the frame: drawn unclipped to stay whole.
    for k, group in enumerate(sorted(set(groups))):
        mask = np.array([g == group for g in groups])
        ax.scatter(cost_a[mask], acc_a[mask], s=40, color=f"C{k}", label=group, zorder=3, clip_on=False)
    front = pareto_front(list(zip(cost_a, acc_a)))
    if front:
        ax.step(cost_a[front], acc_a[front], where="post", color="0.3", lw=1, ls="--", zorder=2)
        ax.scatter(cost_a[front], acc_a[front], s=140, facecolors="none", edgecolors="0.2", lw=1.2,
                   label="Pareto front", zorder=4, clip_on=False)
    if cost_a.min() > 0 and cost_a.max() / cost_a.min() > _LOG_SPREAD:
        ax.set_xscale("log")
        plain_log_axis(ax.xaxis)
    if top is not None:
        fit_bounded_axis(ax, acc_a, top=top)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # Outside the axes, so the legend never hides a point or its name.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    _label_points(ax, names, cost_a, acc_a)
    return save_figure(fig, path)


def plot_latency_distributions(names: Sequence[str], samples_ms: Sequence[Sequence[float]],
                               path: str | Path) -> Path:
    """One horizontal box plot of per-call latency samples per artifact."""
    data = [np.asarray(s, float) for s in samples_ms]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.45 * len(data) + 1.2)))
    ax.boxplot(data, **_HORIZONTAL, showfliers=True, flierprops={"markersize": 2})
    ax.set_yticks(range(1, len(data) + 1), list(names), fontsize=8)
    lo = min(float(d.min()) for d in data)
    hi = max(float(d.max()) for d in data)
    if lo > 0 and hi / lo > _LOG_SPREAD:
        ax.set_xscale("log")
        plain_log_axis(ax.xaxis)
    ax.invert_yaxis()  # same order as the summary table, top to bottom
    ax.set_xlabel("engine latency per call (ms)")
    ax.set_title("Latency distribution")
    ax.grid(alpha=0.3, axis="x")
    return save_figure(fig, path)


def write_charts(artifacts: list[dict[str, Any]], plots_dir: str | Path,
                 task: Task | None = None) -> list[tuple[str, Path]]:
    """Draw every chart the data allows into `plots_dir`; returns (caption, path) pairs in report order.

    task: whose headline metric the trade-off charts plot (default: the artifacts' task).
    """
    plots_dir = Path(plots_dir)
    if task is None:
        task = get_task(str(artifacts[0].get("task") or DEFAULT_TASK) if artifacts else DEFAULT_TASK)
    label = task.report_columns[0].replace(f" {task.headline_unit}", "")
    axis = dict(ylabel=f"{label} ({task.headline_unit})", scale=task.headline_scale,
                top=100.0 if task.headline_unit == "%" else None)
    title = label[:1].upper() + label[1:]
    names = [a["name"] for a in artifacts]
    out: list[tuple[str, Path]] = []
    timed = [(i, p50) for i, a in enumerate(artifacts)
             if (p50 := p50_per_image(a)) is not None and headline(a, task) is not None]
    if timed:
        idx = [i for i, _ in timed]
        out.append((f"{title} vs p50 latency per image", plot_tradeoff(
            [names[i] for i in idx], [p for _, p in timed], [headline(artifacts[i], task) for i in idx],
            [_group(artifacts[i]) for i in idx], plots_dir / "accuracy_latency.png",
            "p50 engine latency per image (ms)", f"{title} vs latency", **axis)))
    sized = [i for i, a in enumerate(artifacts) if a.get("size_bytes") is not None and headline(a, task) is not None]
    if sized:
        out.append((f"{title} vs size", plot_tradeoff(
            [names[i] for i in sized], [artifacts[i]["size_bytes"] / 1e6 for i in sized],
            [headline(artifacts[i], task) for i in sized], [_group(artifacts[i]) for i in sized],
            plots_dir / "accuracy_size.png", "size (MB)", f"{title} vs size", **axis)))
    sampled = [i for i, a in enumerate(artifacts) if (engine_latency(a) or {}).get("samples_ms")]
    if sampled:
        out.append(("Latency distributions", plot_latency_distributions(
            [_with_batch(names[i], artifacts[i]) for i in sampled],
            [engine_latency(artifacts[i])["samples_ms"] for i in sampled],
            plots_dir / "latency.png")))
    for i, a in enumerate(artifacts):
        confusion = (a.get("metrics") or {}).get("confusion")
        if confusion:
            classes = a.get("class_names") or [str(c) for c in range(len(confusion))]
            path = plots_dir / f"confusion_{i:02d}_{slug(names[i])}.png"
            out.append((f"Confusion matrix: {names[i]}",
                        plot_confusion(confusion, list(classes), path, title=f"Confusion: {names[i]}")))
    return out


def _label_points(ax, names: Sequence[str], x: np.ndarray, y: np.ndarray) -> None:
    """Name each point beside it, inside the axes, where the label overprints no label placed before it.

    Placed by the labels' drawn boxes, not by data distances: on a log axis, or with long names, points far
    apart in data units still put their labels on top of each other.
    """
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed: list[Any] = []
    for name, xi, yi in zip(names, x, y):
        spots = [(dx, dy) for line in range(len(names) + 1) for dy in (4 + 9 * line, -5 - 9 * line) for dx in (5, -5)]
        for dx, dy in spots:
            label = ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(dx, dy), fontsize=7,
                                ha="left" if dx > 0 else "right")
            box = label.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in placed):
                break
            label.remove()
        else:  # nowhere free: beside the point as before, overprinting if it must
            label = ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize=7)
            box = label.get_window_extent(renderer)
        placed.append(box)


def _with_batch(name: str, artifact: dict[str, Any]) -> str:
    # Samples are per call: a batched artifact's box sits further right for a reason the reader must see.
    batch = artifact.get("batch_size") or 1
    return name if batch == 1 else f"{name} (batch {batch})"


def _group(artifact: dict[str, Any]) -> str:
    return f"{artifact.get('backend') or '?'} {artifact.get('precision') or ''}".strip()


