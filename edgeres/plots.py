"""PNG plots. matplotlib runs headless (Agg); figures close after saving so long runs don't leak."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from edgeres.artifacts import atomic_path  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    """Save a figure as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


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
                ax.plot(epochs, [h[f"{split}_{name}"] for h in history], marker="o", label=split)
    for ax, name in panels:
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
            ax.plot(recall, precision, linewidth=1, alpha=0.7, label=name)
    ax.plot(recall, curve["all"], color="black", linewidth=2.5, label="all classes")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
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
