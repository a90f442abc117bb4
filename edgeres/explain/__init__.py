"""Explanations: where a model looks, and whether a compressed or exported copy still looks there.

- Grad-CAM (`saliency.gradcam_map`, captum's LayerGradCam): gradients of the target's score at a late
  convolutional stage, weighted per channel; needs a checkpoint.
- Occlusion (`saliency.occlusion_map`, captum's Occlusion): the target's score drop when a window of the image is
  set to the data mean; needs only outputs, so it runs through any Runner (checkpoint, ONNX, OpenVINO, INT8).
- Drift (`drift.explanation_drift`, `drift.saliency_agreement`): two artifacts' occlusion maps on the same images,
  compared by rank correlation and top-20% IoU.

`targets.py` says which number is explained; `explainer.py` writes `edgeres explain`'s files. The names below
load on first use, so importing this package (the CLI does) costs nothing until one is asked for.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Agreement": "drift", "DriftResult": "drift", "ImageDrift": "drift", "explanation_drift": "drift",
    "explanation_drifts": "drift",
    "saliency_agreement": "drift",
    "ExplainConfig": "explainer", "Explainer": "explainer", "Explanation": "explainer", "explain_images": "explainer",
    "Target": "targets", "gradcam_map": "saliency", "occlusion_map": "saliency", "gradcam_panel": "panel",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
