"""A Grad-CAM panel: a checkpoint's maps on the first test images, in one figure for a report."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.errors import UserInputError
from edgeres.explain.explainer import Explainer
from edgeres.explain.overlay import input_image, overlay


def gradcam_panel(checkpoint: str | Path, out: str | Path, n: int = 8, data: str | None = None,
                  columns: int = 4) -> dict[str, Any]:
    """Grad-CAM of `checkpoint`'s predicted class on the first `n` test images, as one PNG at `out`.

    Each tile's title gives the true and the predicted class; returns what was drawn (for a report)."""
    from edgeres.evaluate import load_task_data
    from edgeres.plots import plt, save_figure

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserInputError(f"n (panel images) must be a positive integer, got {n!r}")
    explainer = Explainer(checkpoint, "gradcam")
    meta, names = explainer.meta, explainer.class_names
    images, labels = _spread(load_task_data(meta, data), n)
    rows = math.ceil(len(images) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    tiles = []
    for ax, x, label in zip(axes.flat, images, labels):
        x = np.ascontiguousarray(x, np.float32)
        target = explainer.choose(x)
        result = explainer.explain(x, target)
        ax.imshow(overlay(input_image(x, meta.mean, meta.std), result.saliency))
        truth = _label_name(label, names)
        predicted = names[target.class_id] if 0 <= target.class_id < len(names) else str(target.class_id)
        ax.set_title(f"predicted {predicted}" if truth is None else f"true {truth}\npredicted {predicted}", fontsize=9,
                     color="black" if truth == predicted or truth is None else "crimson")
        tiles.append({"true": truth, "predicted": predicted, "score": result.score})
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"Grad-CAM ({explainer.layer}) of the predicted class", fontsize=11)
    fig.tight_layout()
    save_figure(fig, out)
    return {"path": str(out), "layer": explainer.layer, "images": tiles}


def _spread(bundle: Any, n: int) -> tuple[list[np.ndarray], list[Any]]:
    """Up to `n` test images, taking each class in turn when the labels are classes (else the first ones)."""
    dataset = bundle.dataset("test", augment=False)
    if len(dataset) == 0:
        raise UserInputError("the data's test split holds no images for a Grad-CAM panel")
    labels = np.asarray(bundle.labels("test")) if hasattr(bundle, "labels") else None
    order = list(range(len(dataset)))
    if labels is not None and labels.ndim == 1:
        queues = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
        order = [int(q[i]) for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    items = [dataset[i] for i in order[:n]]
    return [np.asarray(x) for x, _ in items], [y for _, y in items]


def _label_name(label: Any, names: list[str]) -> str | None:
    """A classifier's label as its class name; a detector's labels are boxes, which a title cannot hold."""
    value = np.asarray(label)
    return names[int(value)] if value.ndim == 0 and 0 <= int(value) < len(names) else None
