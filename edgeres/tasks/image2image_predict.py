"""What `edgeres predict` and the evaluation examples do for an image-to-image model: image in, image out."""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from edgeres.artifacts import atomic_path
from edgeres.tasks.image2image_metrics import image_output

EXAMPLE_SIDE = 96  # pixels per example tile, enlarged from small inputs so a digit is visible
GAP = 4


def prepare(image: Image.Image, meta: Any) -> tuple[np.ndarray, tuple[int, int]]:
    """`image` resized to the model's input in image range (these models take no normalisation); its own size."""
    from edgeres.data.folder import image_to_tensor  # torch: predict runs where the data pipeline does

    x = image_to_tensor(image, meta.in_chans, meta.img_size).numpy()
    mean = np.asarray(meta.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(meta.std, dtype=np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32), image.size


def to_pil(chw: np.ndarray) -> Image.Image:
    """A C x H x W image in [0, 1] as an 8-bit grey or RGB picture."""
    pixels = np.clip(np.asarray(chw, np.float32) * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(pixels[0], "L") if pixels.shape[0] == 1 else Image.fromarray(pixels.transpose(1, 2, 0))


def describe(outputs: Mapping[str, np.ndarray], contexts: list[Any], class_names: list[str]) -> list[dict]:
    """Per image: the output's pixel statistics and the restored picture at the model's resolution as a base64
    PNG (`draw` enlarges it to the image's own size; predict's JSON records must carry it to there)."""
    out = []
    for image, size in zip(image_output(outputs), contexts):
        buffer = io.BytesIO()
        to_pil(image).save(buffer, format="PNG")
        out.append({"restored": class_names[0] if class_names else "image", "width": int(size[0]),
                    "height": int(size[1]), "mean": float(image.mean()), "min": float(image.min()),
                    "max": float(image.max()), "png_base64": base64.b64encode(buffer.getvalue()).decode("ascii")})
    return out


def restored(prediction: dict[str, Any]) -> Image.Image:
    """The restored picture of a `describe` record, at the model's resolution."""
    with Image.open(io.BytesIO(base64.b64decode(prediction["png_base64"]))) as im:
        return im.copy()


def draw(image: Image.Image, prediction: dict[str, Any]) -> Image.Image:
    """The input and the restored image (enlarged to the input's size) side by side."""
    image = image.convert("L" if restored(prediction).mode == "L" else "RGB")
    result = restored(prediction).resize(image.size, Image.BICUBIC)
    canvas = Image.new(image.mode, (image.width * 2 + GAP, image.height), 255 if image.mode == "L" else (255,) * 3)
    canvas.paste(image, (0, 0))
    canvas.paste(result, (image.width + GAP, 0))
    return canvas


def output_image(image: Image.Image, prediction: dict[str, Any]) -> tuple[Image.Image, dict[str, Any]]:
    """The restored picture enlarged (or shrunk) back to `image`'s size, and `prediction` without its pixels."""
    result = restored(prediction)
    record = {k: v for k, v in prediction.items() if k != "png_base64"}
    return result.resize(image.size, Image.BICUBIC), {**record, "model_size": list(result.size)}


def example_grid(inputs: np.ndarray, outputs: np.ndarray, targets: np.ndarray, path: Path) -> Path:
    """A PNG with one row per image: input | output | target, each tile EXAMPLE_SIDE pixels."""
    rows = len(inputs)
    side = max(EXAMPLE_SIDE, inputs.shape[-1])
    mode = "L" if inputs.shape[1] == 1 else "RGB"
    canvas = Image.new(mode, (3 * side + 2 * GAP, rows * side + (rows - 1) * GAP), 255 if mode == "L" else (255,) * 3)
    for r, images in enumerate(zip(inputs, outputs, targets)):
        for c, chw in enumerate(images):
            tile = to_pil(chw).resize((side, side), Image.NEAREST)
            canvas.paste(tile, (c * (side + GAP), r * (side + GAP)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
