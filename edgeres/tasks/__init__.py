"""Tasks by name: the stages find what to do with a model's outputs from `model.json`'s `task`."""
from __future__ import annotations

from edgeres.errors import UserInputError
from edgeres.tasks.base import ClassDelta, Criterion, GateEvidence, LossConfig, MetricDelta, Paired, Task
from edgeres.tasks.classify import Classification
from edgeres.tasks.detect import Detection
from edgeres.tasks.image2image import ImageToImage

_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add `task` under its name; a second task of the same name is refused."""
    if task.name in _TASKS:
        raise ValueError(f"a task named {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task called `name`; an unknown name is refused with the known ones."""
    if name not in _TASKS:
        raise UserInputError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    return _TASKS[name]


def list_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_TASKS)


register_task(Classification())
register_task(Detection())
register_task(ImageToImage())

__all__ = ["ClassDelta", "Criterion", "GateEvidence", "LossConfig", "MetricDelta", "Paired", "Task", "get_task",
           "list_tasks", "register_task"]
