"""Built-in sources that need no files: scikit-learn's digits and synthetic lesion-like shapes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from edgeres.data.transforms import to_channels

if TYPE_CHECKING:
    from edgeres.data import DataConfig


class DigitsSource:
    """scikit-learn's 1,797 real 8x8 handwritten digits, resized once to img_size and cached."""

    natural_chans = 1
    default_split = (0.6, 0.2, 0.2)
    default_hflip = False  # a mirrored digit is another digit (or none)

    def __init__(self, config: DataConfig) -> None:
        from sklearn.datasets import load_digits  # ships with scikit-learn: no download

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
        size = config.img_size
        resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                antialias=size < 8)
        self.cache = resized.clamp(0.0, 1.0).contiguous()
        self.labels = digits.target.astype(np.int64)
        self.class_names = [str(d) for d in range(10)]
        self.in_chans = config.in_chans or self.natural_chans
        self.skipped: list[str] = []
        self.given_splits = None

    def image(self, index: int) -> torch.Tensor:
        """Item `index` as float32 in_chans x img_size x img_size in [0, 1]."""
        return to_channels(self.cache[index], self.in_chans)


SHAPE_KINDS = ("round", "lobed", "ring", "elongated", "multi_spot")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    # Pixel centres in [-1, 1]: shapes are drawn in these units, so any img_size shows the same scene.
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(c, c)


def _ramp(distance: np.ndarray, edge: float) -> np.ndarray:
    """Soft coverage from a signed distance (positive inside)."""
    return np.clip(0.5 + distance / edge, 0.0, 1.0)


def _blob(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, kind: str,
          centre: np.ndarray, radius: float, edge: float) -> np.ndarray:
    """Coverage of one lesion of `kind` centred at `centre`, rotated at random."""
    theta = rng.uniform(0.0, np.pi)
    dx, dy = x - centre[0], y - centre[1]
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    if kind == "elongated":
        major, minor = radius * rng.uniform(1.1, 1.5), 1.0 / rng.uniform(2.2, 3.5)
        a, b = major, major * minor
    else:
        a, b = radius, radius * rng.uniform(0.8, 1.0)
    rho, phi = np.hypot(u / a, v / b), np.arctan2(v / b, u / a)
    scale = (a + b) / 2
    wobble = 0.05 * np.sin(rng.integers(2, 4) * phi + rng.uniform(0, 2 * np.pi))
    if kind == "lobed":
        wobble = (rng.uniform(0.18, 0.35) * np.sin(rng.integers(3, 7) * phi + rng.uniform(0, 6.3))
                  + rng.uniform(0.0, 0.12) * np.sin(rng.integers(7, 11) * phi + rng.uniform(0, 6.3)))
    if kind == "ring":
        width = rng.uniform(0.2, 0.4)
        return _ramp(np.minimum(1.0 + wobble - rho, rho - (1.0 + wobble - width)) * scale, edge)
    return _ramp((1.0 + wobble - rho) * scale, edge)


def _spots(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, centre: np.ndarray,
           radius: float, edge: float) -> np.ndarray:
    """Coverage of a cluster of 3-6 small round spots."""
    cover = np.zeros_like(x)
    for _ in range(rng.integers(3, 7)):
        offset = rng.uniform(-radius, radius, 2)
        spot = _blob(x, y, rng, "round", centre + offset, radius * rng.uniform(0.18, 0.35), edge)
        cover = np.maximum(cover, spot)
    return cover


def _texture(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Smooth random undulation: a few oriented sinusoids, like skin or tissue texture."""
    field = np.zeros_like(x)
    for _ in range(3):
        fx, fy = rng.uniform(-4.0, 4.0, 2) * np.pi
        field += rng.uniform(0.3, 1.0) * np.sin(fx * x + fy * y + rng.uniform(0, 2 * np.pi))
    return amplitude * field / 3.0


def render_shape(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One size x size x 3 float image in [0, 1] of a lesion of `kind` on a textured background."""
    x, y = _grid(size)
    edge = max(rng.uniform(0.02, 0.08), 2.5 / size)  # never sharper than about one pixel
    skin = np.array([rng.uniform(0.62, 0.92), rng.uniform(0.45, 0.72), rng.uniform(0.35, 0.62)])
    image = skin * (1.0 + _texture(x, y, rng, rng.uniform(0.04, 0.12)))[..., None]
    image *= (1.0 + 0.1 * (rng.uniform(-1, 1) * x + rng.uniform(-1, 1) * y))[..., None]

    radius = rng.uniform(0.3, 0.55)
    extent = radius * (1.6 if kind in ("elongated", "multi_spot") else 1.15)
    centre = rng.uniform(-1, 1, 2) * max(0.05, 0.95 - extent)
    if kind == "multi_spot":
        cover = _spots(x, y, rng, centre, radius, edge)
    else:
        cover = _blob(x, y, rng, kind, centre, radius, edge)
    # Low-contrast lesions exist: darkness varies from faint to deep, tint from brown to red.
    colour = skin * rng.uniform(0.3, 0.75) * rng.uniform(0.8, 1.15, 3)
    shading = 1.0 + _texture(x, y, rng, 0.15)
    image = image * (1 - cover[..., None]) + (colour * shading[..., None]) * cover[..., None]

    # Distractors shared by all classes keep the task from being solved by "any dark pixel".
    for _ in range(rng.integers(0, 4)):
        freckle = _blob(x, y, rng, "round", rng.uniform(-0.95, 0.95, 2), rng.uniform(0.02, 0.05),
                        max(0.01, 2.5 / size))
        image = image * (1 - 0.6 * freckle[..., None]) + 0.6 * freckle[..., None] * skin * 0.5
    if rng.random() < 0.3:
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-0.8, 0.8)
        line = np.abs(x * np.cos(angle) + y * np.sin(angle) - offset)
        hair = _ramp(rng.uniform(0.006, 0.015) - line, max(0.01, 2.5 / size))
        image = image * (1 - 0.8 * hair[..., None]) + 0.8 * hair[..., None] * skin * 0.25
    image += rng.normal(0.0, 0.02, image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


class ShapesSource:
    """Deterministic synthetic lesion-like shapes: each item drawn from an RNG seeded by its index."""

    natural_chans = 3
    default_split = (0.6, 0.2, 0.2)
    default_hflip = True

    def __init__(self, config: DataConfig) -> None:
        self.seed = config.seed
        self.size = config.img_size
        self.class_names = list(SHAPE_KINDS)
        count = config.shapes_per_class * len(SHAPE_KINDS)
        self.labels = np.arange(count, dtype=np.int64) % len(SHAPE_KINDS)
        self.in_chans = config.in_chans or self.natural_chans
        self.skipped: list[str] = []
        self.given_splits = None
        # Drawn lazily and kept: a default set (600 items at 64 px, RGB) is under 30 MB.
        self._cache: dict[int, torch.Tensor] = {}

    def image(self, index: int) -> torch.Tensor:
        """Item `index` as float32 in_chans x img_size x img_size in [0, 1]."""
        if index not in self._cache:
            rng = np.random.default_rng([self.seed, index])
            kind = SHAPE_KINDS[int(self.labels[index])]
            pixels = torch.from_numpy(render_shape(kind, self.size, rng)).permute(2, 0, 1)
            self._cache[index] = to_channels(pixels.contiguous(), self.in_chans).contiguous()
        return self._cache[index]


BUILTIN_SOURCES = {"digits": DigitsSource, "shapes": ShapesSource}
