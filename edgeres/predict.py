"""`edgeres predict`: run any artifact (checkpoint, ONNX, IR, engine) of any task on image files, writing an
annotated copy of each image (or the task's own output picture: an image-to-image model's restored image) and
one predictions.json.

The model's task prepares each image as its training data was prepared, turns the runner's named outputs into
predictions in the image's own coordinates, and draws them; this module only finds files, batches and writes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgeres import runtime
from edgeres.artifacts import atomic_path, write_json
from edgeres.errors import UserInputError
from edgeres.evaluate.predict import check_finite
from edgeres.runtime.base import run_any_batch
from edgeres.tasks import get_task

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
PREDICTIONS_FILE = "predictions.json"


def find_images(inputs: str | Path) -> tuple[Path, list[Path]]:
    """(the folder names are relative to, the image files): one file, or a folder's images at any depth, sorted."""
    path = Path(inputs)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserInputError(f"{path} is not an image file; expected one of {', '.join(IMAGE_SUFFIXES)}")
        return path.parent, [path]
    if not path.is_dir():
        raise UserInputError(f"{path} does not exist; give an image file or a folder of images")
    found = []
    for folder, dirs, files in os.walk(path):  # symlinked folders are not followed: no loops
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder) / f for f in sorted(files)
                  if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
    if not found:
        raise UserInputError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return path, found


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)  # phones record rotation in EXIF; show what the user sees
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserInputError(f"cannot read image {path}: {e}") from None


def predict_images(artifact: str | Path, inputs: str | Path, out: str | Path, backend: str | None = None,
                   precision: str | None = None, threads: int | None = None, batch_size: int = 16,
                   skip_bad: bool = False, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Predict every image under `inputs` with `artifact`; write annotated images and predictions.json to `out`.

    skip_bad: record unreadable images in the JSON and go on, instead of stopping at the first.
    """
    if batch_size < 1:
        raise UserInputError(f"batch_size must be positive, got {batch_size}")
    root, files = find_images(inputs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; expected a folder for the annotated images")
    if any(out.resolve() == f.resolve().parent or out.resolve() in f.resolve().parents for f in files):
        raise UserInputError(f"--out {out} holds the input images; write the annotated copies to a folder of their own")
    runner = runtime.load(artifact, backend=backend, precision=precision, threads=threads)
    task, meta = get_task(runner.meta.task), runner.meta
    class_names = list(meta.class_names or [str(i) for i in range(meta.num_classes)])
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for start in range(0, len(files), batch_size):
        batch = []
        for path in files[start:start + batch_size]:
            try:
                batch.append((path, _open(path)))
            except UserInputError as e:
                if not skip_bad:
                    raise
                skipped.append({"file": path.relative_to(root).as_posix(), "reason": str(e)})
        if batch:
            records += _predict_batch(runner, task, meta, class_names, batch, root, out)
        if progress is not None:
            progress(len(files[start:start + batch_size]))
    doc = {"artifact": str(artifact), "task": meta.task, "runner": runner.info.to_dict(), "class_names": class_names,
           "images": len(records), "skipped": skipped, "predictions": records}
    write_json(out / PREDICTIONS_FILE, doc)
    return doc


def _predict_batch(runner, task, meta, class_names: list[str], batch: list[tuple[Path, Image.Image]], root: Path,
                   out: Path) -> list[dict[str, Any]]:
    prepared = [task.prepare(image, meta) for _, image in batch]
    x = np.stack([p[0] for p in prepared])
    outputs = run_any_batch(runner, x)
    check_finite(outputs, runner.info.path)
    predictions = task.describe(outputs, [p[1] for p in prepared], class_names)
    records = []
    for (path, image), prediction in zip(batch, predictions):
        relative = path.relative_to(root)
        target = out / relative.with_suffix(".png" if path.suffix.lower() in (".tif", ".tiff") else path.suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        picture, record = task.predicted_image(image, prediction)
        with atomic_path(target) as tmp:
            picture.save(tmp, format=Image.registered_extensions().get(target.suffix.lower(), "PNG"))
        records.append({"file": relative.as_posix(), "annotated": target.relative_to(out).as_posix(),
                        "width": image.width, "height": image.height, **record})
    return records
