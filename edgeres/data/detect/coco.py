"""COCO JSON (`instances_*.json` + an image folder): boxes [x, y, w, h] in pixels, categories by id.

Category ids (often sparse, as COCO's 1..90) become class ids 0..C-1 in sorted-id order; names are kept.
Crowd regions (`iscrowd: 1`) mark many objects at once, not one instance, so they are not trained on.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeres.data.detect.source import DetectionSource, source_from_files
from edgeres.data.split import SPLITS
from edgeres.errors import UserInputError

if TYPE_CHECKING:
    from edgeres.data import DataConfig


class BadAnnotation(ValueError):
    """One annotation that cannot be used; the message says why."""


def find_coco(source: Path) -> dict[str | None, Path] | None:
    """The COCO files `source` names: a .json file (split None), or annotations/instances_<split>*.json."""
    if source.is_file() and source.suffix == ".json":
        return {None: source}
    folder = source / "annotations"
    if not folder.is_dir():
        return None
    found: dict[str | None, Path] = {}
    for path in sorted(folder.glob("instances_*.json")):
        split = next((s for s in SPLITS if path.stem.removeprefix("instances_").startswith(s)), None)
        if split is not None and split not in found:
            found[split] = path
    return found or None


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserInputError(f"cannot read COCO file {path}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) \
            or not isinstance(doc.get("categories"), list) or not isinstance(doc.get("annotations", []), list):
        raise UserInputError(f"{path} is not COCO instances JSON: expected a mapping with 'images', "
                             "'annotations' and 'categories' lists")
    if not doc["images"]:
        raise UserInputError(f"{path} lists no images")
    return doc


def _categories(doc: dict[str, Any], path: Path) -> tuple[dict[Any, int], list[str]]:
    try:
        by_id = {c["id"]: str(c["name"]) for c in doc["categories"]}
        ids = sorted(by_id)
    except (KeyError, TypeError):
        raise UserInputError(f"{path}: each category needs an 'id' (number) and a 'name'") from None
    if not ids:
        raise UserInputError(f"{path} lists no categories")
    return {cid: i for i, cid in enumerate(ids)}, [by_id[i] for i in ids]


def _image_folder(path: Path, first: str) -> Path:
    """Where the file names in `path` live: the usual places beside a COCO annotation file."""
    subset = path.stem.removeprefix("instances_")
    here, up = path.parent, path.parent.parent
    candidates = [here / subset, up / subset, up / "images" / subset, here / "images", up / "images", here, up]
    for folder in candidates:
        if (folder / first).is_file():
            return folder
    raise UserInputError(f"cannot find image {first!r} listed in {path}; looked in "
                         f"{', '.join(str(c) for c in dict.fromkeys(candidates))}")


def _box(ann: dict[str, Any], images: dict[Any, tuple[str, float, float]], classes: dict[Any, int]) -> list[float]:
    """[class, x1, y1, x2, y2] relative to the image's size, from one annotation."""
    if ann.get("image_id") not in images:
        raise BadAnnotation(f"unknown image_id {ann.get('image_id')!r}")
    if ann.get("category_id") not in classes:
        raise BadAnnotation(f"unknown category_id {ann.get('category_id')!r}")
    bbox = ann.get("bbox")
    try:
        x, y, w, h = (float(v) for v in bbox)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise BadAnnotation(f"bbox {bbox!r} is not four numbers [x, y, width, height]") from None
    if not (w > 0 and h > 0):
        raise BadAnnotation(f"bbox {bbox!r} has a non-positive width or height")
    _, width, height = images[ann["image_id"]]
    corners = np.clip([x / width, y / height, (x + w) / width, (y + h) / height], 0.0, 1.0)
    return [classes[ann["category_id"]], *corners]


def _images(doc: dict[str, Any], path: Path) -> dict[Any, tuple[str, float, float]]:
    images = {}
    for im in doc["images"]:
        try:
            name, width, height = str(im["file_name"]), float(im["width"]), float(im["height"])
        except (KeyError, TypeError, ValueError):
            raise UserInputError(f"{path}: image {im.get('id') if isinstance(im, dict) else im!r} needs "
                                 "'id', 'file_name', 'width' and 'height'") from None
        if not (width > 0 and height > 0):
            raise UserInputError(f"{path}: image id {im['id']} has a non-positive width or height")
        images[im["id"]] = (name, width, height)
    return images


def read_annotations(doc: dict[str, Any], path: Path, classes: dict[Any, int], skip_bad: bool,
                     skipped: list[str]) -> tuple[list[str], list[np.ndarray]]:
    """Image files and their relative boxes from one COCO file; images without annotations are background."""
    images = _images(doc, path)
    rows: dict[Any, list[list[float]]] = {i: [] for i in images}
    for ann in doc.get("annotations", []):
        aid = ann.get("id", "?") if isinstance(ann, dict) else "?"
        try:
            if not isinstance(ann, dict):
                raise BadAnnotation(f"{ann!r} is not a mapping")
            if ann.get("iscrowd"):
                continue
            box = _box(ann, images, classes)
            rows[ann["image_id"]].append(box)
        except BadAnnotation as e:
            if not skip_bad:
                raise UserInputError(f"{path}: annotation id {aid}: {e}; fix it, or pass --skip-bad "
                                     "(skip_bad=True) to skip bad annotations") from None
            skipped.append(f"{path}: annotation id {aid}: {e}")
    folder = _image_folder(path, next(iter(images.values()))[0])
    paths = [str(folder / name) for name, _, _ in images.values()]
    return paths, [np.asarray(rows[i], np.float32).reshape(-1, 5) for i in images]


def read_coco(config: DataConfig, files: dict[str | None, Path]) -> DetectionSource:
    """A COCO source: one annotation file (split by edgeres) or one per split, sharing categories."""
    first_split = "train" if "train" in files else None
    first = files.get(first_split)
    if first is None:
        raise UserInputError(f"found COCO files for {sorted(s for s in files if s)} but none for train "
                             "(annotations/instances_train*.json)")
    docs = {split: _load(path) for split, path in files.items()}
    classes, names = _categories(docs[first_split], first)
    skipped: list[str] = []
    paths, boxes, owners = [], [], []
    for split, path in files.items():
        if _categories(docs[split], path)[1] != names:
            raise UserInputError(f"{path} lists other categories than {first}; every split needs the same ones")
        found, found_boxes = read_annotations(docs[split], path, classes, config.skip_bad, skipped)
        paths += found
        boxes += found_boxes
        owners += [split or "train"] * len(found)
    return source_from_files(names, paths, boxes, owners if None not in files else None, config, skipped)
