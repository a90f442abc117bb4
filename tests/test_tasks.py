"""Tasks: the registry, classification's pieces, and no stage outside edgeres/tasks branching on a task."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgeres
from edgeres.errors import UserInputError
from edgeres.meta import DEFAULT_TASK, TASKS, ModelMeta
from edgeres.report.render import summary_rows
from edgeres.tasks import Task, get_task, list_tasks, register_task
from edgeres.tasks.classify import Predictions

PACKAGE = Path(edgeres.__file__).parent
# A stage comparing a task to a literal name (or testing membership in a list of names) branches on it.
BRANCH = re.compile(r"""\btask\s*(==|!=)\s*['"]|['"]\s*(==|!=)\s*[\w.]*\btask\b|\btask\s+(not\s+)?in\s*[(\[{]""")


def test_every_task_model_json_accepts_has_a_module_and_back():
    assert list_tasks() == sorted(TASKS)
    assert DEFAULT_TASK in TASKS
    assert ModelMeta(arch="resnet18", num_classes=2).task == DEFAULT_TASK  # old model.json files: classifiers
    assert all(isinstance(get_task(name), Task) and get_task(name).name == name for name in TASKS)


def test_unknown_task_is_refused_with_the_known_ones():
    with pytest.raises(UserInputError, match="unknown task 'segmentation'.*classification"):
        get_task("segmentation")


def test_a_second_task_of_one_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_task(get_task("classification"))


def test_no_stage_outside_tasks_branches_on_the_task():
    offenders = [f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
                 for path in sorted(PACKAGE.rglob("*.py")) if "tasks" not in path.relative_to(PACKAGE).parts
                 for n, line in enumerate(path.read_text().splitlines(), 1) if BRANCH.search(line)]
    assert offenders == []
    assert BRANCH.search('if meta.task == "detection":') and BRANCH.search("if task in ('a', 'b'):")


def test_classification_scores_losses_and_postprocesses_as_before():
    task = get_task("classification")
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    assert task.batch_score(logits, targets) == int((logits.argmax(1) == targets).sum())
    assert torch.equal(task.loss_sum(logits, targets), F.cross_entropy(logits, targets, reduction="sum"))
    probs = task.postprocess(logits.numpy())
    assert probs.dtype == np.float64 and np.allclose(probs.sum(1), 1) and (probs.argmax(1) == logits.argmax(1).numpy()).all()
    bundle = _Bundle(np.array([0, 0, 0, 1, 2, 2]), ["a", "b", "c"])
    weighted = task.criterion(bundle, class_weighted=True, label_smoothing=0.1)(logits, targets, None)
    reference = nn.CrossEntropyLoss(weight=torch.tensor([0.5, 1.5, 0.75]) * 3 / 2.75, label_smoothing=0.1)
    assert torch.allclose(weighted, reference(logits, targets))


def test_gate_statistic_pairs_per_image_correctness():
    task = get_task("classification")
    labels = np.array([0, 1, 1])
    base = Predictions(labels, np.eye(2)[[0, 1, 0]])
    cand = Predictions(labels, np.eye(2)[[1, 1, 1]])
    paired = task.paired(base, cand, ["a", "b"])
    assert paired.baseline.tolist() == [True, True, False] and paired.candidate.tolist() == [False, True, True]
    with pytest.raises(UserInputError, match="same test images"):
        task.paired(base, Predictions(labels[:2], np.eye(2)[[0, 1]]), ["a", "b"])


def test_report_takes_its_metric_columns_from_the_task_and_refuses_mixed_tasks():
    artifact = {"name": "a", "metrics": {"accuracy": 0.5}}
    columns, rows = summary_rows({"artifacts": [artifact]})
    assert get_task("classification").report_columns[0] in columns
    assert rows[0][columns.index("accuracy %")] == "50.00"
    with pytest.raises(UserInputError, match="mix tasks"):
        summary_rows({"artifacts": [artifact, {**artifact, "name": "b", "task": "detection"}]})
    with pytest.raises(UserInputError, match="unknown task"):
        summary_rows({"artifacts": [{**artifact, "task": "segmentation"}]})


class _Bundle:
    def __init__(self, labels: np.ndarray, class_names: list[str]):
        self._labels, self.class_names = labels, class_names

    def labels(self, split: str) -> np.ndarray:
        return self._labels
