"""Image-to-image data: paired input/target folders, or pairs made from any built-in set or image folder by a
degradation (noise, a hole, lower resolution), served as (input, [target, input]) in image range."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeres.data.builtin import BUILTIN_SOURCES
from edgeres.data.pairs.augment import PairAugment
from edgeres.data.pairs.bundle import FilePairs, PairBundle, PairDataset, SyntheticPairs
from edgeres.data.pairs.degrade import PAIR_KINDS, Degradation
from edgeres.data.pairs.files import (PAIRED_LAYOUT, ImageCache, image_files, match_pairs, natural_chans,
                                      paired_roots, split_owner)
from edgeres.data.split import SPLITS, stratified_split
from edgeres.errors import UserInputError

PAIRED = "paired"  # the kind of a bundle read from input/ and target/ folders


def load_pair_data(config: Any, kind: str | None = None, sigma: float = 0.1) -> PairBundle:
    """Open and split the pairs `config` (an edgeres.data.DataConfig) names.

    kind: None takes paired folders when the source is laid out so, else "denoise"; a PAIR_KINDS name
        degrades the source's images (a paired folder is refused: it has its own inputs).
    sigma: the noise's std for "denoise", in image range.
    """
    root = Path(config.source).expanduser()
    roots = paired_roots(root) if config.source not in BUILTIN_SOURCES and root.is_dir() else None
    if roots is not None:
        if kind not in (None, PAIRED):
            raise UserInputError(f"{root} holds paired input/ and target/ folders; pairs={kind!r} would degrade "
                                 "images that already have inputs. Leave pairs unset for paired folders")
        return _paired(config, roots)
    if kind == PAIRED:
        raise UserInputError(f"{config.source} is not laid out as paired folders ({PAIRED_LAYOUT})")
    return _synthetic(config, Degradation(kind or "denoise", sigma))


def _synthetic(config: Any, degradation: Degradation) -> PairBundle:
    if config.source in BUILTIN_SOURCES:
        clean = BUILTIN_SOURCES[config.source](config)
        if config.classes is not None:  # e.g. only some digits: fewer images, as for a classifier
            from edgeres.data.subset import ClassSubset

            clean = ClassSubset(clean, config.classes)
        indices = stratified_split(clean.labels, clean.class_names, config.split or clean.default_split, config.seed,
                                   hint=f" for {config.source}")
        in_chans, hflip = clean.in_chans, clean.default_hflip
    else:
        root = Path(config.source).expanduser()
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise UserInputError(f"data {root} {what}; image-to-image data is a built-in set "
                                 f"({', '.join(BUILTIN_SOURCES)}), a folder of images, or {PAIRED_LAYOUT}")
        given = {s: root / s for s in SPLITS if (root / s).is_dir()}
        paths, owners = split_owner({s: list(image_files(p).values()) for s, p in (given or {"": root}).items()})
        if not paths:
            raise UserInputError(f"{root} holds no images")
        in_chans = config.in_chans or natural_chans(paths)
        clean = ImageCache(paths, in_chans, config.img_size)
        indices, hflip = _split(len(paths), owners, config, str(root)), True
    return _bundle(config, degradation.kind, in_chans, SyntheticPairs(clean, degradation, config.seed), indices,
                   hflip)


def _paired(config: Any, roots: dict[str, Path]) -> PairBundle:
    pairs, owners = split_owner({s: match_pairs(folder) for s, folder in roots.items()})
    inputs, targets = [p for p, _ in pairs], [t for _, t in pairs]
    in_chans = config.in_chans or max(natural_chans(inputs), natural_chans(targets))
    files = FilePairs(ImageCache(inputs, in_chans, config.img_size), ImageCache(targets, in_chans, config.img_size))
    return _bundle(config, PAIRED, in_chans, files, _split(len(pairs), owners, config, config.source), True)


def _split(count: int, given: dict[str, np.ndarray] | None, config: Any, where: str) -> dict[str, np.ndarray]:
    from edgeres.data.detect.bundle import split_indices  # the same carving of missing splits as detection's

    return split_indices(count, given, config, where)


def _bundle(config: Any, kind: str, in_chans: int, pairs: Any, indices: dict[str, np.ndarray],
            hflip: bool) -> PairBundle:
    # Image range in and out: the model adds its residual to the input itself, so it is never normalised.
    return PairBundle(config=config, class_names=[kind], in_chans=in_chans, img_size=config.img_size,
                      mean=(0.0,) * in_chans, std=(1.0,) * in_chans, skipped=[], pairs=pairs, indices=indices,
                      hflip=hflip if config.hflip is None else config.hflip)


__all__ = ["PAIRED", "PAIR_KINDS", "Degradation", "FilePairs", "PairAugment", "PairBundle", "PairDataset",
           "SyntheticPairs", "load_pair_data"]
