"""Letterboxing: fit an image into a square input without distorting it, and map boxes both ways.

Torch-free (numpy and PIL only): deploy bundles preprocess camera frames with it.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

PAD_VALUE = 114  # the grey YOLO-family detectors are trained to see as "nothing here"
_ORIENTATION = 0x0112  # EXIF tag
_SWAPS_AXES = (5, 6, 7, 8)  # orientations that turn the stored image by 90 degrees
_WIDE_GREYS = ("I;16", "I;16B", "I;16L", "I", "F")


def letterbox_geometry(width: int, height: int, size: int) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """(scale, resized (w, h), pad (x, y)) that fit a width x height image centred in size x size."""
    if width < 1 or height < 1 or size < 1:
        raise ValueError(f"letterbox needs positive sizes, got image {width}x{height} into {size}")
    scale = min(size / width, size / height)
    resized = (min(size, max(1, round(width * scale))), min(size, max(1, round(height * scale))))
    return scale, resized, ((size - resized[0]) // 2, (size - resized[1]) // 2)


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize an HxWx3 uint8 image to fit size x size, centred on grey (114) padding.

    Returns (size x size x 3 uint8, scale, (pad_x, pad_y)): input pixel x maps to x * scale + pad_x.
    """
    height, width = image.shape[:2]
    scale, resized, pad = letterbox_geometry(width, height, size)
    return place(Image.fromarray(image), resized, pad, size), scale, pad


def place(image: Image.Image, resized: tuple[int, int], pad: tuple[int, int], size: int) -> np.ndarray:
    """Resize a PIL image to `resized` and paste it at `pad` on a size x size grey canvas."""
    if image.size != resized:
        image = image.resize(resized, Image.BILINEAR)
    out = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    out[pad[1]:pad[1] + resized[1], pad[0]:pad[0] + resized[0]] = np.asarray(image)
    return out


def letterbox_boxes(boxes_xyxy: np.ndarray, scale: float, pad: tuple[int, int]) -> np.ndarray:
    """Boxes (..., 4) in original image pixels to letterboxed input pixels."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float32)
    offset = np.asarray([pad[0], pad[1], pad[0], pad[1]], dtype=np.float32)
    return boxes * np.float32(scale) + offset


def unletterbox_boxes(boxes_xyxy: np.ndarray, scale: float, pad: tuple[int, int]) -> np.ndarray:
    """Boxes (..., 4) in letterboxed input pixels back to original image pixels (the inverse of letterbox)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float32)
    offset = np.asarray([pad[0], pad[1], pad[0], pad[1]], dtype=np.float32)
    return (boxes - offset) / np.float32(scale)


def read_letterboxed(path: str, size: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Decode an image file upright (EXIF orientation applied) as RGB, letterboxed to size x size.

    Returns (size x size x 3 uint8, resized (w, h), pad (x, y)). The geometry comes from the full-size
    upright image, so relative labels map exactly even when JPEG draft mode decodes at reduced scale.
    """
    with Image.open(path) as im:
        width, height = im.size
        if im.getexif().get(_ORIENTATION, 1) in _SWAPS_AXES:
            width, height = height, width
        _, resized, pad = letterbox_geometry(width, height, size)
        im.draft("RGB", (size, size))
        upright = _to_rgb(ImageOps.exif_transpose(im))
    return place(upright, resized, pad, size), resized, pad


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with 8 bits a channel; 16-bit and float greys are scaled into range instead of clipped to white."""
    if image.mode in _WIDE_GREYS:
        a = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(a.max()), 1.0)
        image = Image.fromarray((a / top * 255).clip(0, 255).astype(np.uint8))
    return image.convert("RGB")
