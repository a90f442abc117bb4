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
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        if history and f"{split}_loss" in history[0]:
            ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        if history and f"{split}_{metric}" in history[0]:
            ax_acc.plot(epochs, [h[f"{split}_{metric}"] for h in history], marker="o", label=split)
    for ax, name in ((ax_loss, "loss"), (ax_acc, metric)):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)
