"""Ultralytics YOLO layout: images/ + labels/ with `class cx cy w h` lines, and data.yaml.

Only the layout's conventions are followed here (label path beside the image path, normalised centre
boxes, names as a list or {id: name}); no Ultralytics code is used.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from edgeres.data.builtin import BUILTIN_SOURCES
from edgeres.data.detect.source import DetectionSource, source_from_files
from edgeres.data.split import SPLITS
from edgeres.errors import UserInputError

if TYPE_CHECKING:
    from edgeres.data import DataConfig

log = logging.getLogger("edgeres")

YAML_NAMES = ("data.yaml", "data.yml")
SLACK = 1e-6  # float formatting of normalised coordinates can land a hair outside [0, 1]
_LINE_FORMAT = ("'class cx cy w h' (class an integer id, the others normalised to [0, 1] by the image's "
                "width and height)")


# --- labels ---------------------------------------------------------------------------------------

class BadLine(ValueError):
    """One label line that cannot be used; the message says why."""


def _numbers(fields: list[str]) -> list[float]:
    values = []
    for field in fields:
        try:
            values.append(float(field))
        except ValueError:
            raise BadLine(f"non-numeric field {field!r}") from None
    return values


def parse_line(fields: list[str], num_classes: int | None) -> list[float]:
    """[class, x1, y1, x2, y2] (relative) from a YOLO label line: a box, or a polygon whose extent is the box."""
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        raise BadLine(f"{len(fields)} fields; expected 5: {_LINE_FORMAT} (or a polygon 'class x1 y1 x2 y2 x3 y3 ...')")
    values = _numbers(fields)
    cls = values[0]
    if not math.isfinite(cls) or cls != int(cls) or cls < 0:
        raise BadLine(f"class id {fields[0]!r} is not a non-negative integer")
    if num_classes is not None and cls >= num_classes:
        raise BadLine(f"class id {int(cls)} out of range: there are {num_classes} names (ids 0 to {num_classes - 1})")
    for value, field in zip(values[1:], fields[1:]):
        if not -SLACK <= value <= 1 + SLACK:
            raise BadLine(f"coordinate {field} outside [0, 1]; labels are normalised by the image's width and height")
    if len(values) == 5:
        cx, cy, w, h = values[1:]
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    else:
        xs, ys = values[1::2], values[2::2]
        x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise BadLine("box of zero width or height")
    return [cls, *np.clip([x1, y1, x2, y2], 0.0, 1.0)]


def read_labels(path: Path, num_classes: int | None, skip_bad: bool, skipped: list[str]) -> np.ndarray:
    """(n, 5) float32 boxes of one label file; a missing file is a background image (no boxes)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return np.zeros((0, 5), np.float32)
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"cannot read label file {path}: {e}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            rows.append(parse_line(fields, num_classes))
        except BadLine as e:
            if not skip_bad:
                raise UserInputError(f"{path}:{number}: {e}; fix the line, or pass --skip-bad (skip_bad=True) "
                                     "to skip bad label lines") from None
            skipped.append(f"{path}:{number}: {e}")
    return np.asarray(rows, np.float32).reshape(-1, 5)


def label_path(image: str) -> Path:
    """Where the layout keeps an image's labels: the last images/ folder swapped for labels/, suffix .txt."""
    parts = list(Path(image).parts)
    if "images" in parts[:-1]:
        at = len(parts) - 2 - parts[-2::-1].index("images")
        parts[at] = "labels"
    return Path(*parts).with_suffix(".txt")


# --- finding images ---------------------------------------------------------------------------------

def _is_image(path: str) -> bool:
    # "._x.png" files are macOS metadata that carry an image extension but hold no image.
    return has_file_allowed_extension(path, IMG_EXTENSIONS) and not os.path.basename(path).startswith(".")


def images_under(directory: Path) -> list[str]:
    """Image files under `directory` (recursively), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in filenames if _is_image(os.path.join(dirpath, f))]
    return sorted(found)


def _split_images(root: Path, entry: Any, where: str) -> list[str]:
    """Images named by one split entry of data.yaml: a folder, a .txt list of images, or a list of those."""
    entries = entry if isinstance(entry, list) else [entry]
    found: list[str] = []
    for item in entries:
        if not isinstance(item, str):
            raise UserInputError(f"{where} must be a folder or .txt path (or a list of them), got {item!r}")
        path = Path(item).expanduser()
        path = path if path.is_absolute() else root / path
        if path.is_dir():
            found += images_under(path)
        elif path.is_file() and path.suffix == ".txt":
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            found += [str(p if Path(p).is_absolute() else (path.parent / p)) for p in lines]
        else:
            raise UserInputError(f"{where} names {path}, which does not exist or is neither a folder nor a .txt "
                                 "list of images")
    if not found:
        raise UserInputError(f"{where} holds no images (looked for {', '.join(IMG_EXTENSIONS)})")
    return found


def _names(doc: dict, where: Path) -> list[str]:
    names = doc.get("names")
    if names is None:
        raise UserInputError(f"{where} lacks 'names'; expected the class names as a list ([cat, dog]) or a "
                             "mapping of ids to names ({0: cat, 1: dog})")
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise UserInputError(f"{where}: the ids in 'names' must be 0 to {len(names) - 1}, got {sorted(names)}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise UserInputError(f"{where}: 'names' must be a non-empty list or {{id: name}} mapping, got {names!r}")
    if "nc" in doc and doc["nc"] != len(names):
        raise UserInputError(f"{where} says nc: {doc['nc']} but lists {len(names)} names")
    return [str(n) for n in names]


def read_yaml(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Class names and each given split's image files from a data.yaml (paths relative to its `path`)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserInputError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict):
        raise UserInputError(f"{path} must be a mapping with path, train, val, test and names; got "
                             f"{type(doc).__name__}")
    names = _names(doc, path)
    # The yaml's folder anchors a relative `path`; edgeres only reads there, so a path outside it is allowed.
    root = Path(str(doc.get("path") or ".")).expanduser()
    root = root if root.is_absolute() else path.parent / root
    if not doc.get("train"):
        raise UserInputError(f"{path} lacks 'train'; expected a folder of training images relative to {root}")
    splits = {s: _split_images(root, doc[s], f"{path}: {s}") for s in SPLITS if doc.get(s)}
    return names, splits


def _folder_splits(root: Path) -> dict[str, list[str]]:
    images = root / "images"
    if not images.is_dir():
        raise UserInputError(f"{root} has no images/ folder; expected a data.yaml, or images/ and labels/ folders "
                             "(optionally with train/, val/, test/ inside each)")
    given = [s for s in SPLITS if (images / s).is_dir()]
    if given and "train" not in given:
        raise UserInputError(f"{images} has {given} but no train/ folder")
    splits = {s: images_under(images / s) for s in given} if given else {"train": images_under(images)}
    for s, found in splits.items():
        if not found:
            raise UserInputError(f"{images / s if given else images} holds no images "
                                 f"(looked for {', '.join(IMG_EXTENSIONS)})")
    return splits


def _folder_names(root: Path) -> list[str] | None:
    for candidate in (root / "classes.txt", root / "labels" / "classes.txt"):
        if candidate.is_file():
            return [ln.strip() for ln in candidate.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return None


def _warn_shared(splits: dict[str, list[str]], source: Path) -> None:
    # Published sets do this on purpose (coco128 validates on its training images), so it is allowed.
    seen: dict[str, str] = {}
    for split, files in splits.items():
        shared = [f for f in files if seen.setdefault(os.path.realpath(f), split) != split]
        if shared:
            log.warning("%s: %d %s image(s) are also in %s: metrics on %s will be optimistic", source, len(shared),
                        split, seen[os.path.realpath(shared[0])], split)


def find_yaml(source: Path) -> Path | None:
    """The data.yaml `source` names: the file itself, or one in the folder."""
    if source.is_file() and source.suffix in (".yaml", ".yml"):
        return source
    return next((source / n for n in YAML_NAMES if (source / n).is_file()), None) if source.is_dir() else None


def read_yolo(config: DataConfig) -> DetectionSource:
    """A YOLO-layout source: a data.yaml (or a folder holding one), or a folder with images/ and labels/."""
    source = Path(config.source).expanduser()
    if not source.exists():
        if config.source in BUILTIN_SOURCES:
            raise UserInputError(f"data source {config.source} is a built-in classification set; a detection model "
                                 "trains on shapes-det, a data.yaml, a folder with images/ and labels/, or a COCO "
                                 "instances_*.json")
        raise UserInputError(f"data source {source} does not exist; expected shapes-det, a data.yaml, a folder "
                             "with images/ and labels/, or a COCO instances_*.json")
    data_yaml = find_yaml(source)
    if data_yaml is not None:
        names, splits = read_yaml(data_yaml)
    else:
        names, splits = _folder_names(source), _folder_splits(source)
    _warn_shared(splits, source)
    skipped: list[str] = []
    paths, owners, boxes = [], [], []
    for split, files in splits.items():
        for image in files:
            paths.append(image)
            owners.append(split)
            boxes.append(read_labels(label_path(image), len(names) if names else None, config.skip_bad, skipped))
    if names is None:
        top = max((int(b[:, 0].max()) for b in boxes if len(b)), default=-1)
        names = [str(i) for i in range(top + 1)]
        log.warning("%s has no data.yaml or classes.txt: naming the classes by id %s", source, names)
    if not any(len(b) for b in boxes):
        raise UserInputError(f"no boxes in any label file for the {len(paths)} image(s) of {source}; each image's "
                             "labels go in labels/<same path>.txt, one line per object: " + _LINE_FORMAT)
    return source_from_files(names, paths, boxes, owners, config, skipped)
