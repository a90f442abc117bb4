"""What `edgeres predict` does for a detector: letterbox the image, keep confident boxes, map them back, draw them."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image

from edgeres.letterbox import letterbox, unletterbox_boxes
from edgeres.tasks.draw import draw_boxes

#: Detections below this score are not reported (mAP is measured from 0.001, as COCO does).
PREDICT_CONF = 0.25


def prepare(image: Image.Image, meta: Any) -> tuple[np.ndarray, tuple[float, tuple[float, float], tuple[int, int]]]:
    """`image` letterboxed to the model's input and normalised; the scale, padding and size to map boxes back."""
    rgb = np.asarray(image.convert("RGB"))
    boxed, scale, pad = letterbox(rgb, meta.img_size)
    x = boxed.astype(np.float32).transpose(2, 0, 1) / 255.0
    mean = np.asarray(meta.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(meta.std, dtype=np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32), (scale, pad, image.size)


def describe(outputs: Mapping[str, np.ndarray], contexts: list[Any], class_names: list[str],
             postprocess: Callable[..., list[np.ndarray]]) -> list[dict[str, Any]]:
    """Each image's detections at or above PREDICT_CONF, boxes in the image's own pixels, best first."""
    out = []
    for dets, (scale, pad, (width, height)) in zip(postprocess(outputs, conf=PREDICT_CONF), contexts):
        boxes = unletterbox_boxes(dets[:, :4], scale, pad) if len(dets) else np.zeros((0, 4), np.float32)
        boxes = np.clip(boxes, 0, [width, height, width, height])
        out.append({"detections": [
            {"class": class_names[int(c)], "class_id": int(c), "score": float(s),
             "box_xyxy": [round(float(v), 2) for v in box]}
            for box, s, c in sorted(zip(boxes, dets[:, 4], dets[:, 5]), key=lambda t: -t[1])]})
    return out


def draw(image: Image.Image, prediction: dict[str, Any]) -> Image.Image:
    """The image with each detection's box, class and score."""
    return draw_boxes(image, [(d["box_xyxy"], f"{d['class']} {d['score']:.2f}", d["class_id"])
                              for d in prediction["detections"]])
