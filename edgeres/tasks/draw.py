"""Drawing predictions onto a user's image with PIL (no plotting library): a label strip and boxes."""
from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

#: Distinct, colour-blind-friendly colours (Okabe-Ito), cycled by class id.
PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
           (204, 121, 167), (0, 0, 0))


def colour(class_id: int) -> tuple[int, int, int]:
    return PALETTE[int(class_id) % len(PALETTE)]


def _font(image: Image.Image) -> ImageFont.ImageFont:
    size = max(10, round(min(image.size) / 28))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill: tuple[int, int, int],
           font: ImageFont.ImageFont) -> None:
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=fill)
    luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    draw.text(xy, text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255), font=font)


def draw_caption(image: Image.Image, lines: Sequence[tuple[str, int]]) -> Image.Image:
    """A copy of `image` with one label per (text, class id) line in its top-left corner."""
    out = image.convert("RGB")
    draw, font = ImageDraw.Draw(out), _font(out)
    y = 2.0
    for text, class_id in lines:
        _label(draw, (4.0, y), text, colour(class_id), font)
        y = draw.textbbox((4.0, y), text, font=font)[3] + 4
    return out


def draw_boxes(image: Image.Image, boxes: Sequence[tuple[Sequence[float], str, int]]) -> Image.Image:
    """A copy of `image` with each (xyxy box, label, class id) outlined and labelled above its corner."""
    out = image.convert("RGB")
    draw, font = ImageDraw.Draw(out), _font(out)
    width = max(1, round(min(out.size) / 200))
    for (x1, y1, x2, y2), text, class_id in boxes:
        draw.rectangle((x1, y1, x2, y2), outline=colour(class_id), width=width)
        top = draw.textbbox((0, 0), text, font=font)[3]
        _label(draw, (x1 + 2, max(0.0, y1 - top - 2)), text, colour(class_id), font)
    return out
