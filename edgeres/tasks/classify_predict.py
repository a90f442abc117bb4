"""What `edgeres predict` does for a classifier: the image as the training data was read, top-k classes, a label."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from PIL import Image

from edgeres.tasks.classify_compare import logits
from edgeres.tasks.classify_metrics import softmax
from edgeres.tasks.draw import draw_caption

TOP_K = 5


def prepare(image: Image.Image, meta: Any) -> tuple[np.ndarray, None]:
    """`image` resized to the model's input as the folder source reads training images, then normalised."""
    from edgeres.data.folder import image_to_tensor  # torch: predict runs where the data pipeline does

    x = image_to_tensor(image, meta.in_chans, meta.img_size).numpy()
    mean = np.asarray(meta.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(meta.std, dtype=np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32), None


def describe(outputs: Mapping[str, np.ndarray], contexts: list[Any], class_names: list[str]) -> list[dict[str, Any]]:
    """The top classes of each image, most probable first."""
    probs = softmax(np.asarray(logits(outputs), dtype=np.float64))
    out = []  # Python lists, not numpy scalars, once per row: this runs per camera frame
    for row, order in zip(probs.tolist(), np.argsort(-probs, axis=1, kind="stable")[:, :TOP_K].tolist()):
        top = [{"class": class_names[i], "class_id": i, "probability": row[i]} for i in order]
        out.append({"class": top[0]["class"], "class_id": order[0], "probability": row[order[0]], "top": top})
    return out


def draw(image: Image.Image, prediction: dict[str, Any]) -> Image.Image:
    """The image with its top class (and the next two) written in its corner."""
    return draw_caption(image, [(f"{t['class']} {t['probability']:.0%}", t["class_id"]) for t in prediction["top"][:3]])
