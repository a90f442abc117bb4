"""Anchor boxes from a data set's box sizes: k-means in log space, so a 10 px and a 200 px box count alike."""
from __future__ import annotations

import numpy as np

from edgeres.errors import UserInputError

#: YOLOv3's nine COCO anchors (w, h at 416 px), scaled to 256 px and rounded: the default before data is seen.
DEFAULT_ANCHORS: list[list[float]] = [
    [6.0, 8.0], [10.0, 18.0], [20.0, 14.0],
    [18.0, 38.0], [38.0, 28.0], [36.0, 73.0],
    [71.0, 55.0], [96.0, 122.0], [230.0, 201.0],
]


def kmeans_anchors(wh: np.ndarray, k: int = 9, seed: int = 0) -> list[list[float]]:
    """`k` anchor (w, h) pairs clustering `wh` (n, 2) box sizes in pixels, sorted by area, small to large.

    Clusters are found on log(w), log(h): the distance then measures size and aspect ratios, which is
    what matching a box to an anchor by their width and height ratios cares about. With fewer distinct
    sizes than `k`, every distinct size is an anchor and the rest are copies scaled by sqrt(2), 1/sqrt(2),
    2, ..., so each anchor stays within the matcher's ratio of a real box. No boxes at all: the defaults.
    """
    wh = np.asarray(wh, dtype=np.float64)
    if wh.ndim != 2 or wh.shape[1] != 2:
        raise UserInputError(f"box sizes must be an (n, 2) array of widths and heights, got shape {wh.shape}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserInputError(f"k must be a positive integer, got {k!r}")
    wh = wh[np.isfinite(wh).all(1) & (wh > 0).all(1)]
    if len(wh) == 0:  # nothing to learn from: the defaults, or k sizes around a 32 px square
        if k == len(DEFAULT_ANCHORS):
            return [list(a) for a in DEFAULT_ANCHORS]
        return _spread(np.array([[32.0, 32.0]]), k)
    distinct = np.unique(wh, axis=0)
    if len(distinct) <= k:
        return _spread(distinct, k)
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(np.log(wh))
    return _sorted(np.exp(km.cluster_centers_))


def _spread(sizes: np.ndarray, k: int) -> list[list[float]]:
    """`sizes` plus copies of them scaled by sqrt(2), 1/sqrt(2), 2, 1/2, ... until there are `k`."""
    out, step = list(sizes), 1
    while len(out) < k:
        factor = 2 ** (0.5 * ((step + 1) // 2)) if step % 2 else 2 ** (-0.5 * (step // 2))
        out.extend(sizes * factor)
        step += 1
    return _sorted(np.array(out[:k]))


def _sorted(anchors: np.ndarray) -> list[list[float]]:
    anchors = np.round(anchors, 2)
    return [[float(w), float(h)] for w, h in anchors[np.argsort(anchors.prod(1), kind="stable")]]
