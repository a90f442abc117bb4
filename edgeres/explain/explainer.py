"""`edgeres explain`: saliency maps of any artifact on a user's images, written as overlays, raw maps and JSON.

An `Explainer` holds one artifact and one method. Grad-CAM needs gradients, so it runs on a checkpoint only;
occlusion needs nothing but outputs, so it runs through the artifact's own Runner: a checkpoint, its ONNX file
and its INT8 IR are explained by the same procedure and their maps can be compared (`drift.py`).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from edgeres import runtime
from edgeres.artifacts import atomic_path, write_json
from edgeres.checkpoint import load_checkpoint
from edgeres.errors import UserInputError
from edgeres.explain.overlay import input_image, overlay
from edgeres.explain.saliency import gradcam_layer, gradcam_map, occlusion_map, occlusion_window
from edgeres.explain.targets import Target, choose_target, score_kind, target_score
from edgeres.meta import ModelMeta
from edgeres.models.base import named_outputs
from edgeres.predict import find_images
from edgeres.runtime.base import Outputs, run_any_batch
from edgeres.tasks import get_task

METHODS = ("auto", "gradcam", "occlusion")


@dataclasses.dataclass(frozen=True)
class ExplainConfig:
    """How to explain.

    method: gradcam (checkpoints), occlusion (any artifact) or auto (gradcam for a checkpoint, else occlusion).
    target: a class name or index to explain; None: the predicted class (a detector: the top detection).
    window, stride: occlusion's square patch and step in input pixels; None: relative to the input size.
    layer: Grad-CAM's layer, one of the model's feature stages; None: chosen by `saliency.gradcam_layer`.
    batch_size: occluded copies per inference call.
    """

    method: str = "auto"
    target: str | int | None = None
    window: int | None = None
    stride: int | None = None
    layer: str | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserInputError(f"--method must be one of {list(METHODS)}, got {self.method!r}")
        for name in ("window", "stride", "batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserInputError(f"{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass
class Explanation:
    """One image's map, the number it explains and that number's value on the unchanged image."""

    target: Target
    score: float
    score_kind: str
    saliency: np.ndarray  # (H, W) float32 in input pixels


class Explainer:
    """One artifact, one method; `explain` maps prepared images."""

    def __init__(self, artifact: str | Path, method: str = "auto", window: int | None = None,
                 stride: int | None = None, layer: str | None = None, batch_size: int = 64):
        if method not in METHODS:
            raise UserInputError(f"method must be one of {list(METHODS)}, got {method!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        backend = runtime.detect_backend(artifact)
        self.method = ("gradcam" if backend == "torch" else "occlusion") if method == "auto" else method
        self.artifact, self.batch_size, self.layer = str(artifact), batch_size, None
        if self.method == "gradcam":
            if backend != "torch":
                raise UserInputError(
                    f"Grad-CAM needs gradients, and {artifact} runs in {backend}, which gives outputs only; use "
                    "--method occlusion (gradient-free, works on any artifact), or Grad-CAM on the checkpoint "
                    "this file was exported from")
            self.model, self.meta = load_checkpoint(artifact)
            self.backend = "torch"
            self._run = functools.partial(_run_module, self.model.inference_module())
        else:
            runner = runtime.load(artifact)
            self.meta, self.backend = runner.meta, f"{runner.info.backend} {runner.info.precision}"
            self._run = functools.partial(run_any_batch, runner)
        _, h, w = self.meta.input_shape
        self.window, self.stride = occlusion_window(min(h, w), window, stride)
        self._requested_layer = layer

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.class_names or [str(i) for i in range(self.meta.num_classes)])

    def settings(self) -> dict[str, Any]:
        """What produced the maps, for the JSON record."""
        if self.method == "gradcam":
            return {"method": "gradcam", "layer": self.layer}
        return {"method": "occlusion", "window": self.window, "stride": self.stride, "baseline": "0 (the data mean)"}

    def choose(self, x: np.ndarray, class_id: int | None = None) -> Target:
        """The target for prepared image `x` (C, H, W): the top class or detection, or the top one of `class_id`."""
        return choose_target(_as_torch(self._run(x[None])), class_id)

    def explain(self, x: np.ndarray, target: Target) -> Explanation:
        """The map of prepared image `x` (C, H, W) for `target`."""
        outputs = _as_torch(self._run(x[None]))
        score = float(target_score(outputs, target)[0])
        if self.method == "gradcam":
            if self.layer is None:
                self.layer = gradcam_layer(self.model, torch.from_numpy(x[None]), self._requested_layer)
            saliency = gradcam_map(self.model, x, target, self.layer)
        else:
            saliency = occlusion_map(self._run, x, target, self.window, self.stride, self.batch_size)
        return Explanation(target, score, score_kind(outputs), saliency)


def _run_module(module: torch.nn.Module, batch: np.ndarray) -> Outputs:
    with torch.inference_mode():
        return {k: v.numpy() for k, v in named_outputs(module, torch.from_numpy(batch)).items()}


def _as_torch(outputs: Outputs) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in outputs.items()}


def class_index(target: str | int | None, class_names: list[str]) -> int | None:
    """A class given by name or index, as an index; None stays None."""
    if target is None:
        return None
    if isinstance(target, str) and target in class_names:
        return class_names.index(target)
    text = str(target).strip()
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(class_names):
        return int(text)
    shown = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")
    raise UserInputError(f"--target {target!r} is not a class of this model; give a name ({shown}) or an index "
                         f"from 0 to {len(class_names) - 1}")


def read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)  # as the user sees it (phones record rotation in EXIF)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserInputError(f"cannot read image {path}: {e}") from None


def image_files(inputs: Iterable[str | Path]) -> list[tuple[str, Path]]:
    """(name, file) for image files and folders of images; names are relative to the folder given."""
    found: dict[str, Path] = {}
    for item in inputs:
        root, files = find_images(item)
        for f in files:
            name = f.relative_to(root).as_posix()
            if name in found and found[name].resolve() != f.resolve():
                raise UserInputError(f"{found[name]} and {f} would write overlays of one name ({name}); explain "
                                     "them into separate --out folders")
            found[name] = f
    if not found:
        raise UserInputError("no images given; pass image files or folders of images")
    return list(found.items())


def prepare_images(files: Sequence[tuple[str, Path]], meta: ModelMeta) -> list[tuple[str, np.ndarray]]:
    """(name, model input (C, H, W)) for each file, prepared by the model's task as `edgeres predict` does."""
    task = get_task(meta.task)
    return [(name, task.prepare(read_image(path), meta)[0]) for name, path in files]


def explain_images(artifact: str | Path, images: Sequence[str | Path], out: str | Path,
                   config: ExplainConfig = ExplainConfig(),
                   progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Explain every image (files or folders) with `artifact`; write overlays, maps and a JSON record into `out`.

    Per image: `<name>.<method>.png` (the map on the input as the model saw it) and `<name>.<method>.npy` (the
    raw map, input pixels); `explanations.<method>.json` lists them with each target and score.
    """
    files = image_files(images)
    out = _check_out(Path(out), [f for _, f in files])
    explainer = Explainer(artifact, config.method, config.window, config.stride, config.layer, config.batch_size)
    meta, class_names = explainer.meta, explainer.class_names
    class_id = class_index(config.target, class_names)
    records = []
    for name, path in files:
        x = get_task(meta.task).prepare(read_image(path), meta)[0]
        result = explainer.explain(x, explainer.choose(x, class_id))
        records.append(_write_one(out, name, explainer.method, x, meta, result, class_names))
        if progress is not None:
            progress(1)
    doc = {"artifact": str(artifact), "task": meta.task, "backend": explainer.backend, **explainer.settings(),
           "score_kind": records[0]["score_kind"] if records else None, "images": records}
    write_json(out / f"explanations.{explainer.method}.json", doc)
    return doc


def _check_out(out: Path, files: list[Path]) -> Path:
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; expected a folder (new or existing) for the overlays")
    if any(out.resolve() == f.resolve().parent or out.resolve() in f.resolve().parents for f in files):
        raise UserInputError(f"--out {out} holds the input images; write the explanations to a folder of their own")
    return out


def _write_one(out: Path, name: str, method: str, x: np.ndarray, meta: ModelMeta, result: Explanation,
               class_names: list[str]) -> dict[str, Any]:
    picture, raw = out / f"{name}.{method}.png", out / f"{name}.{method}.npy"
    picture.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(picture) as tmp:
        overlay(input_image(x, meta.mean, meta.std), result.saliency).save(tmp, format="PNG")
    with atomic_path(raw) as tmp, open(tmp, "wb") as f:
        np.save(f, result.saliency)
    target = result.target
    return {"file": name, "method": method, "class": class_names[target.class_id], **target.to_dict(),
            "score": result.score, "score_kind": result.score_kind,
            "overlay": picture.relative_to(out).as_posix(), "map": raw.relative_to(out).as_posix()}
