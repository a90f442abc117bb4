"""The shape of a results.json, checked once before the report reads any of it.

A results.json is a file the user names, and may be hand-edited or written by an older edgeres. The renderers
trust the types below; this check turns a wrong one into a UserInputError naming the field, instead of a
traceback from deep inside a chart. A field the report can do without may be absent or null, as in results.json
files written before it existed; keys the report does not read are not checked, so newer files still render.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgeres.errors import UserInputError
from edgeres.meta import DEFAULT_TASK
from edgeres.tasks import get_task

EXPECTED = "expected a results.json from `edgeres bench`"

Check = Callable[[Any, str], None]  # raises _Wrong(path, wanted, value) when the value does not fit


class _Wrong(Exception):
    def __init__(self, path: str, wanted: str, value: Any):
        super().__init__(path, wanted, value)
        self.path, self.wanted, self.value = path, wanted, value


def _kind(wanted: str, fits: Callable[[Any], bool]) -> Check:
    def check(value: Any, path: str) -> None:
        if not fits(value):
            raise _Wrong(path, wanted, value)
    return check


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


NUMBER = _kind("a number", _is_number)
COUNT = _kind("a positive integer", _is_count)
DIM = _kind("a positive integer or null", lambda v: v is None or _is_count(v))  # a None batch: any batch size
TEXT = _kind("a string", lambda v: isinstance(v, str))
FLAG = _kind("true or false", lambda v: isinstance(v, bool))
OBJECT = _kind("an object", lambda v: isinstance(v, dict))


def list_of(item: Check, length: int | None = None) -> Check:
    wanted = "a list" if length is None else f"a list of {length}"

    def check(value: Any, path: str) -> None:
        if not isinstance(value, list) or (length is not None and len(value) != length):
            raise _Wrong(path, wanted, value)
        for i, v in enumerate(value):
            item(v, f"{path}[{i}]")
    return check


def fields(spec: dict[str, Check], required: tuple[str, ...] = ()) -> Check:
    """An object whose `spec` keys, when present and not null, pass their checks; `required` ones must be there."""
    def check(value: Any, path: str) -> None:
        OBJECT(value, path)
        for key, check_value in spec.items():
            where = f"{path}.{key}" if path else key
            if value.get(key) is None:
                if key in required:
                    raise _Wrong(where, "present", None)
                continue
            check_value(value[key], where)
    return check


CI = list_of(_kind("a number or null", lambda v: v is None or _is_number(v)), length=2)
ENVIRONMENT = fields({"cpu": TEXT, "cores": COUNT, "isa": list_of(TEXT), "python": TEXT, "created": TEXT,
                      "versions": OBJECT})
ARTIFACT = fields({
    "task": TEXT, "backend": TEXT, "precision": TEXT, "batch_size": COUNT, "input_shape": list_of(DIM),
    "size_bytes": NUMBER, "params": NUMBER, "macs": NUMBER, "peak_rss_mb": NUMBER,
    "memory": fields({"runtime_peak_mb": NUMBER, "runtime_baseline_mb": NUMBER, "harness_peak_mb": NUMBER}),
    "load": fields({"contended": FLAG, "other_cores": NUMBER}),
    "latency": fields({"engine": fields({"p50_ms": NUMBER, "p99_ms": NUMBER, "throughput_ips": NUMBER,
                                         "samples_ms": list_of(NUMBER)})}),
    "metrics": fields({"confusion": list_of(list_of(NUMBER))}),
    "class_names": list_of(TEXT),
})
GATE = fields({
    "passed": FLAG, "baseline_accuracy": NUMBER, "candidate_accuracy": NUMBER, "delta_ci_points": CI,
    "metric_checks": list_of(fields({"name": TEXT, "unit": TEXT, "baseline": NUMBER, "candidate": NUMBER,
                                     "delta_ci_points": CI}, required=("name",))),
    "reasons": list_of(TEXT), "warnings": list_of(TEXT),
    "checks": list_of(fields({"name": TEXT, "limit": TEXT, "measured": TEXT, "passed": FLAG},
                             required=("name", "limit", "measured", "passed"))),
})
EVALUATION = fields({"name": TEXT, "task": TEXT, "metrics": OBJECT, "plots": list_of(TEXT),
                     "reference": fields({"name": TEXT, "params": COUNT}, required=("name", "params"))},
                    required=("name", "metrics"))
_DRIFT_NUMBERS = ("window", "stride", "rank_correlation_mean", "rank_correlation_min", "top_iou_mean", "top_iou_min")
EXPLANATIONS = fields({"panel": TEXT, "baseline": TEXT,
                       "drift": list_of(fields({"name": TEXT, "images": list_of(OBJECT),
                                                **{k: NUMBER for k in _DRIFT_NUMBERS}},
                                               required=("name", "images", *_DRIFT_NUMBERS)))})
RESULTS = fields({"environment": ENVIRONMENT, "config": OBJECT, "baseline": TEXT, "gate": GATE,
                  "evaluation": EVALUATION, "explanations": EXPLANATIONS})


def check_results(results: Any, source: str | Path | None = None) -> None:
    """Refuse a results.json the report cannot read, naming the field, what it holds and what was expected.

    source: the file the results came from, named in the message.
    """
    where = str(source) if source is not None else "results"
    if not isinstance(results, dict) or not isinstance(results.get("artifacts"), list) or not results["artifacts"]:
        raise UserInputError(f"{where} must be an object with a non-empty 'artifacts' list; {EXPECTED}")
    try:
        RESULTS(results, "")
        for i, artifact in enumerate(results["artifacts"]):
            ARTIFACT(artifact, f"artifacts[{i}]")
            _check_headline(artifact, f"artifacts[{i}]")
    except _Wrong as e:
        got = "nothing" if e.value is None else _show(e.value)
        raise UserInputError(f"{where}: {e.path} must be {e.wanted}, got {got}; {EXPECTED}") from None


def read_results(path: str | Path) -> dict[str, Any]:
    """Read and check a results.json the user named; errors name the file."""
    import json

    from edgeres.artifacts import read_user_document

    results = read_user_document(path, json.loads, (json.JSONDecodeError,), EXPECTED.removeprefix("expected "))
    check_results(results, path)
    return results


def _check_headline(artifact: dict[str, Any], path: str) -> None:
    """The task's headline metric, which the summary and the charts compute with."""
    metric = get_task(artifact.get("task") or DEFAULT_TASK).metric
    value = (artifact.get("metrics") or {}).get(metric)
    if value is not None:
        NUMBER(value, f"{path}.metrics.{metric}")


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
