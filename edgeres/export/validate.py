"""Export validation's comparator for classifiers, where the converters' own checks and older code import it.

Stages judge an export through its task (`edgeres.tasks.get_task(meta.task).compare / judge`).
"""
from __future__ import annotations

from edgeres.tasks.classify_compare import TOLERANCES, Tolerance, compare_outputs, judge

__all__ = ["TOLERANCES", "Tolerance", "compare_outputs", "judge"]
