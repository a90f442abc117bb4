"""A source restricted to some of its classes: the recipes' 4-class and binary setups on the built-in shapes,
and a user's folder holding more classes than the model should learn."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgeres.errors import UserInputError


class ClassSubset:
    """`source` with only the classes `names` (in that order, relabelled 0..k-1); every other item is left out."""

    def __init__(self, source: Any, names: Sequence[str]) -> None:
        names = list(names)
        unknown = [n for n in names if n not in source.class_names]
        if unknown:
            raise UserInputError(f"classes {unknown} are not in the data; its classes are {source.class_names}")
        if len(names) < 2 or len(set(names)) != len(names):
            raise UserInputError(f"classes must name at least two different classes, got {names}")
        relabel = np.full(len(source.class_names), -1, dtype=np.int64)
        relabel[[source.class_names.index(n) for n in names]] = np.arange(len(names))
        self._source = source
        self.keep = np.flatnonzero(relabel[source.labels] >= 0)  # the source's items this subset holds
        self.labels = relabel[source.labels[self.keep]]
        self.class_names = names
        self.given_splits = None
        if source.given_splits is not None:
            position = {int(item): i for i, item in enumerate(self.keep)}
            self.given_splits = {split: np.asarray([position[int(i)] for i in items if int(i) in position],
                                                   dtype=np.int64)
                                 for split, items in source.given_splits.items()}

    def image(self, index: int) -> Any:
        return self._source.image(int(self.keep[index]))

    def __getattr__(self, name: str) -> Any:  # in_chans, skipped, default_split, paths, ... as the source has them
        if name == "_source":
            raise AttributeError(name)
        value = getattr(self._source, name)
        return [value[i] for i in self.keep] if name == "paths" else value
