"""PNG plots. matplotlib runs headless (Agg); figures close after saving so long runs don't leak."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from edgeres.artifacts import atomic_path  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    """Save a figure as PNG atomically and close it; overlapping tick labels are rotated or thinned first."""
    untangle_tick_labels(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def fit_bounded_axis(ax, values: Sequence[float], top: float) -> None:
    """Fit a percentage (top=100) or fraction (top=1) y axis to `values` with a margin, never past `top` or below 0.

    Autoscaling pads past the data, so a model at 100% would draw an axis up to 100.5% or more, a value no
    accuracy takes. Points on the edge stay whole if their artists are drawn with clip_on=False.
    """
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, top)
    pad = max(0.08 * (hi - lo), 0.005 * top)  # equal points still get a band half a percent of the scale wide
    ax.set_ylim(max(0.0, lo - pad), min(top, hi + pad))


def plain_log_axis(axis) -> None:
    """Label a log axis in plain numbers (0.5, 1, 2, 5, 10), not powers of ten: a range under two decades
    otherwise shows one label (10^1) or none. Crowded 2s and 5s are dropped again by untangle_tick_labels."""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if _mantissa(v) in (2, 5) else ""))


def _mantissa(v: float) -> int:
    return round(v / 10 ** np.floor(np.log10(v))) if v > 0 else 0


def untangle_tick_labels(fig) -> None:
    """Make every axis' tick labels readable: drop overlapping minor labels, rotate x labels, then thin them."""
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()  # tick labels get their text and place only when drawn
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if not _overlap(_drawn_labels(axis, "major") + _drawn_labels(axis, "minor"), renderer):
                continue
            if _drawn_labels(axis, "minor"):
                axis.set_minor_formatter(NullFormatter())
            # Slanted first (still reads left to right), upright if slanted ones still collide, then thinned.
            for slant in ({"rotation": 45, "ha": "right", "rotation_mode": "anchor"},
                          {"rotation": 90, "ha": "center", "rotation_mode": "default"}):
                if axis is ax.xaxis and _overlap(_drawn_labels(axis, "major"), renderer):
                    plt.setp(axis.get_ticklabels(), **slant)
            _thin(axis, fig, renderer)


def _thin(axis, fig, renderer) -> None:
    """Keep every k-th major tick label, the smallest k whose labels do not overlap."""
    fig.draw_without_rendering()
    ticks = _drawn_ticks(axis, "major")
    if not ticks:
        return
    first = ticks[0].label1
    style = {"rotation": first.get_rotation(), "ha": first.get_ha(), "rotation_mode": first.get_rotation_mode()}
    locs, texts = [t.get_loc() for t in ticks], [t.label1.get_text() for t in ticks]
    for step in range(2, len(locs) + 1):
        if not _overlap(_drawn_labels(axis, "major"), renderer):
            return
        axis.set_ticks(locs[::step], texts[::step], **style)
        fig.draw_without_rendering()


def _drawn_ticks(axis, which: str) -> list:
    """The ticks `axis` draws: inside the view, not the locator's spares beyond it."""
    lo, hi = sorted(axis.get_view_interval())
    slack = 1e-9 * max(abs(lo), abs(hi), 1.0)
    axis.get_ticklabels(which=which)  # places the ticks and sets their text
    ticks = axis.get_major_ticks() if which == "major" else axis.get_minor_ticks()
    return [t for t in ticks if lo - slack <= t.get_loc() <= hi + slack]


def _drawn_labels(axis, which: str) -> list:
    """The visible, non-empty labels of the ticks `axis` draws."""
    return [label for t in _drawn_ticks(axis, which) for label in (t.label1, t.label2)
            if label.get_visible() and label.get_text()]


def _overlap(labels, renderer) -> bool:
    boxes = [t.get_window_extent(renderer).padded(1.0) for t in labels]  # a pixel apart at least
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: list[str], path: str | Path,
                   title: str = "Confusion matrix") -> Path:
    """Confusion matrix with counts in each cell; rows are true classes."""
    cm = np.asarray(confusion)
    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > threshold else "black", fontsize=8)
    return save_figure(fig, path)


def plot_training_curves(history: list[dict[str, Any]], path: str | Path, metric: str = "accuracy") -> Path:
    """Loss and `metric` (history's `train_<metric>`, `val_<metric>`) per epoch for train and validation."""
    epochs = [h["epoch"] for h in history]
    # A task whose metric is not scored per batch (mAP) has loss curves only.
    scored = any(f"{split}_{metric}" in h for h in history for split in ("train", "val"))
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(10 if scored else 5.5, 4), squeeze=False)
    panels = list(zip(axes[0], ("loss", metric)))
    for split in ("train", "val"):
        for ax, name in panels:
            if history and f"{split}_{name}" in history[0]:
                ax.plot(epochs, [h[f"{split}_{name}"] for h in history], marker="o", label=split, clip_on=False)
    for ax, name in panels:
        if name == metric:  # a fraction: its axis ends at 1, never past
            fit_bounded_axis(ax, [h[k] for h in history for k in (f"train_{name}", f"val_{name}") if k in h], top=1.0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def plot_pr_curve(curve: dict[str, Any], path: str | Path, title: str = "Precision-recall") -> Path:
    """Interpolated precision against recall per class and their mean (a detection split's `pr_curve`)."""
    recall = np.asarray(curve["recall"])
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, precision in curve["per_class"].items():
        if precision is not None:
            ax.plot(recall, precision, linewidth=1, alpha=0.7, label=name, clip_on=False)
    ax.plot(recall, curve["all"], color="black", linewidth=2.5, label="all classes", clip_on=False)
    # Both axes are fractions and end at 1; the curves run along the frame there, drawn unclipped.
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="recall", ylabel="precision", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, path)


def plot_detections(images: Sequence[np.ndarray], gts: Sequence[np.ndarray], dets: Sequence[np.ndarray],
                    class_names: list[str], path: str | Path, cols: int = 4) -> Path:
    """A grid of images (HxWx3 uint8) with true boxes (white, dashed) and detections (class colour, score).

    gts: per image (n, 5) `[class, x1, y1, x2, y2]`; dets: per image (k, 6) `[x1, y1, x2, y2, score, class]`,
    both in the images' pixels.
    """
    from matplotlib.patches import Rectangle

    rows = max(1, -(-len(images) // cols))
    cols = max(1, min(cols, len(images)))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, gt, det in zip(axes.ravel(), images, gts, dets):
        ax.imshow(image)
        for c, x1, y1, x2, y2 in np.asarray(gt).reshape(-1, 5):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white", linestyle="--",
                                   linewidth=1.2))
        for x1, y1, x2, y2, score, c in np.asarray(det).reshape(-1, 6):
            colour = colours(int(c) % 10)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5))
            ax.text(x1, y1, f"{class_names[int(c)]} {score:.2f}", color="white", fontsize=6, va="bottom",
                    bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "linewidth": 0})
    fig.suptitle("true boxes dashed white; detections coloured by class", fontsize=9)
    return save_figure(fig, path)
