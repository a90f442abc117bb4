"""`shapes-det`: a built-in, deterministic detection set of geometric objects on textured backgrounds.

Each image holds 2-6 objects of four classes at sizes from a few pixels to over a third of the image,
some partly covering others. Edges are hard (no anti-aliasing) so every box is exact: the tight box
around the object's full shape, whether or not a later object covers part of it.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from edgeres.data.detect.source import DetectionSource, Geometry

if TYPE_CHECKING:
    from edgeres.data import DataConfig

NAME = "shapes-det"
MIN_VISIBLE = 0.6  # an object stays at least this visible, so every label can be seen
MIN_SIDE = 5  # pixels: the smallest object, still a few pixels wide at 64 px
_CACHE: dict[tuple[int, int, int], tuple[np.ndarray, list[np.ndarray]]] = {}


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A textured size x size x 3 float image: base colour, oriented waves, a gradient, distractor streaks."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    base = rng.uniform(0.2, 0.8, 3).astype(np.float32)
    field = np.zeros((size, size), np.float32)
    for _ in range(3):
        # sin(fx x + fy y + p) = sin(fx x + p) cos(fy y) + cos(fx x + p) sin(fy y): two outer products, not a grid.
        (fx, fy), phase, weight = rng.uniform(-12, 12, 2), rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 1.0)
        field += weight * (np.outer(np.cos(fy * c), np.sin(fx * c + phase))
                           + np.outer(np.sin(fy * c), np.cos(fx * c + phase)))
    field += rng.uniform(-1, 1) * (c[None, :] - 0.5) * 1.6
    image = base * (1 + 0.2 * field)[..., None]
    for _ in range(rng.integers(0, 4)):  # edges that belong to no object
        angle, offset = rng.uniform(0, np.pi), rng.uniform(0.1, 0.9)
        streak = np.abs((c[None, :] - 0.5) * np.cos(angle) + (c[:, None] - 0.5) * np.sin(angle) + 0.5 - offset)
        streak = streak < 1.2 / size
        image[streak] = image[streak] * 0.5 + rng.uniform(0, 1, 3).astype(np.float32) * 0.5
    return image


def _circle(u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    return np.hypot(u, v) <= radius


def _ring(u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    dist = np.hypot(u, v)
    return (dist <= radius) & (dist >= 0.55 * radius)


def _square(u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    half = radius / math.sqrt(2)
    return (np.abs(u) <= half) & (np.abs(v) <= half)


def _triangle(u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Equilateral, with circumradius `radius`: inside all three edges."""
    inside = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    for k in range(3):
        theta = 2 * math.pi * k / 3
        inside &= u * math.cos(theta) + v * math.sin(theta) <= radius / 2
    return inside


SHAPES = {"circle": _circle, "square": _square, "triangle": _triangle, "ring": _ring}
CLASSES = tuple(SHAPES)


def _mask(kind: str, centre: np.ndarray, radius: float, angle: float, size: int) -> tuple[tuple[int, int], np.ndarray]:
    """One object's coverage, tested at pixel centres: (top-left (x, y) of its window, boolean window)."""
    x0, y0 = (max(0, int(c - radius) - 1) for c in centre)
    x1, y1 = (min(size, int(c + radius) + 2) for c in centre)
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - centre[0])[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - centre[1])[:, None]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    return (x0, y0), SHAPES[kind](u, v, radius)


class _Scene:
    """Which object owns each pixel, and how much of each object is still visible."""

    def __init__(self, size: int) -> None:
        self.owner = np.full((size, size), -1, dtype=np.int32)
        self.full: list[int] = []
        self.boxes: list[list[float]] = []

    def covered(self, corner: tuple[int, int], inside: np.ndarray) -> np.ndarray:
        """Pixels of each earlier object a new object at `corner` would hide."""
        (x0, y0), (h, w) = corner, inside.shape
        under = self.owner[y0:y0 + h, x0:x0 + w][inside]
        return np.bincount(under[under >= 0], minlength=len(self.full))

    def fits(self, corner: tuple[int, int], inside: np.ndarray) -> bool:
        visible = np.bincount(self.owner[self.owner >= 0], minlength=len(self.full)) if self.full else np.zeros(0)
        return bool(np.all(visible - self.covered(corner, inside) >= MIN_VISIBLE * np.asarray(self.full)))

    def add(self, cls: int, corner: tuple[int, int], inside: np.ndarray) -> tuple[slice, slice]:
        (x0, y0), (h, w) = corner, inside.shape
        window = self.owner[y0:y0 + h, x0:x0 + w]
        window[inside] = len(self.full)
        self.full.append(int(inside.sum()))
        ys, xs = np.nonzero(inside)
        self.boxes.append([cls, x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1])
        return slice(y0, y0 + h), slice(x0, x0 + w)


def _colour(under: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An object colour that stands out from the mean background colour `under` it."""
    for _ in range(10):
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        if np.abs(colour - under).mean() > 0.25:
            return colour
    return (1 - under).astype(np.float32)


def render_scene(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: (size x size x 3 uint8, boxes (n, 5) float32 [class, x1, y1, x2, y2] in pixels, and the
    size x size map of which box each pixel shows, -1 for background)."""
    image = _background(size, rng)
    scene = _Scene(size)
    for _ in range(rng.integers(2, 7)):
        for _attempt in range(20):
            cls = int(rng.integers(len(CLASSES)))
            # Log-uniform sizes: small objects are as common as large ones.
            radius = math.exp(rng.uniform(math.log(max(MIN_SIDE, 0.06 * size)), math.log(0.4 * size))) / 2
            corner, inside = _mask(CLASSES[cls], rng.uniform(radius, size - radius, 2), radius,
                                   rng.uniform(0, 2 * math.pi), size)
            if inside.sum() >= 4 and scene.fits(corner, inside):
                patch = image[scene.add(cls, corner, inside)]
                colour = _colour(patch[inside].mean(0), rng)
                # A left-to-right shading, so an object is not one flat colour.
                shade = 1 + 0.15 * rng.uniform(-1, 1) * np.linspace(-0.5, 0.5, inside.shape[1], dtype=np.float32)
                patch[inside] = colour * np.broadcast_to(shade, inside.shape)[inside][:, None]
                break
    image += rng.standard_normal(image.shape, dtype=np.float32) * 0.03
    pixels = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return pixels, np.asarray(scene.boxes, np.float32).reshape(-1, 5), scene.owner


def generate(seed: int, size: int, count: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """`count` scenes (N x size x size x 3 uint8, pixel boxes per image), drawn once per process.

    Scene i comes from an RNG seeded by (seed, i), so a larger count extends a smaller one.
    """
    key = (seed, size, count)
    if key not in _CACHE:
        scenes = [render_scene(size, np.random.default_rng([seed, i]))[:2] for i in range(count)]
        _CACHE[key] = np.stack([s[0] for s in scenes]), [s[1] for s in scenes]
    return _CACHE[key]


class SceneArrays:
    """Generated images already at the input size: letterboxing them changes nothing."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels
        size = pixels.shape[1]
        self.geometry: list[Geometry] = [((size, size), (0, 0))] * len(pixels)

    def __len__(self) -> int:
        return len(self.pixels)

    def name(self, index: int) -> str:
        return f"{NAME}[{index}]"

    def load(self, index: int) -> np.ndarray:
        return self.pixels[index]


def read_shapes_det(config: DataConfig) -> DetectionSource:
    """The built-in set at config.img_size: config.detect_images scenes from config.seed."""
    pixels, boxes = generate(config.seed, config.img_size, config.detect_images)
    relative = []
    for b in boxes:
        b = b.copy()
        b[:, 1:] /= config.img_size
        relative.append(b)
    return DetectionSource(list(CLASSES), SceneArrays(pixels), relative, None, [])
