"""Model comparison (`edgeres compare`): variants trained alike, measured alike, one table and plots.

`config.py` (what is trained and how it is timed), `metrics.py` (PR AUC and calibration error beside the task's
metrics), `run.py` (train or reuse each variant, evaluate, time the variants interleaved), `output.py`
(compare.json, compare.md, compare.html and plots), `commands.py` (the CLI command).
"""
from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use: the CLI imports this package to register the command, and run.py imports torch.
_EXPORTS = {"CompareConfig": "config", "ImageScoring": "config", "LatencyConfig": "config", "compare_models": "run"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
