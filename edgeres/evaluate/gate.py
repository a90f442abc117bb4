"""The CI regression gate: is a candidate artifact as accurate, fast and small as the limits allow?

Both models are scored on the same test images, so the comparison is paired. The model's task hands the
gate its evidence (`tasks.base.GateEvidence`): the metrics it limits and how they change on a resample of
the images. A classifier's accuracy change gets a paired-bootstrap confidence interval and McNemar's
exact test on the images they disagree on; a detector's mAP@0.5:0.95 and mAP@0.5 changes get the
bootstrap interval (COCO matching is per image, so a resample re-weights images instead of re-matching).

Pass/fail rule. A metric's check fails when the *point estimate* of its drop exceeds `max_drop`.
The confidence interval does not decide; it is reported, and when its lower end reaches past
`-max_drop` (the data cannot rule out a regression larger than allowed) the result carries a warning.
Why not let the interval decide: requiring the whole interval inside the limit (a non-inferiority
test) fails an unchanged model on any small test set (400 images with 10 disagreements give a 95%
interval about 3 points wide, far wider than a 0.5-point limit), so CI would be red for noise;
failing only when the interval lies wholly beyond the limit lets real multi-point regressions through
on those same small sets. The point estimate is deterministic and what a reviewer reasons about;
the interval and warning tell them how much to trust it. The McNemar p-value is reported, never used
to decide: significance says a change is real, not that it is large. A value exactly at a limit passes.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeres.artifacts import write_text
from edgeres.errors import UserInputError
from edgeres.meta import DEFAULT_TASK
from edgeres.tasks import Task, get_task
from edgeres.tasks.base import ClassDelta, GateEvidence, MetricDelta
from edgeres.tasks.classify import mcnemar_exact  # noqa: F401  (public here, where the gate's statistics are)

_EPS = 1e-9  # float slack so a drop computed as 0.5000000001 still counts as "at the limit"
_BOOT_CHUNK = 4_000_000  # resampled indices held in memory at once (~16 MB of int32)


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """Limits of the gate. Metric limits are in each metric's `unit`: percentage points for fractions (accuracy,
    mAP, per-class recall or AP, SSIM x100), dB for PSNR; MB is 10**6 bytes. max_drop limits every metric the task
    gates; max_class_drop its per-class figure."""

    max_drop: float = 0.5
    max_class_drop: float | None = None
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    #: 1 - the mean rank correlation of the candidate's occlusion maps with the baseline's (0: the same evidence)
    max_explanation_drift: float | None = None
    explanation_images: int = 16
    confidence: float = 0.95
    n_boot: int = 10000
    seed: int = 0

    def __post_init__(self) -> None:
        _require(_is_number(self.max_drop) and self.max_drop >= 0, "max_drop", self.max_drop, "a number >= 0")
        _require(self.max_class_drop is None or (_is_number(self.max_class_drop) and self.max_class_drop >= 0),
                 "max_class_drop", self.max_class_drop, "None or a number >= 0")
        # No latency or size is 0 or less: such a limit fails every candidate, so it is a mistake, not a gate.
        for name in ("max_latency_ms", "max_size_mb"):
            value = getattr(self, name)
            _require(value is None or (_is_number(value) and value > 0), name, value, "None or a number > 0")
        _require(self.max_explanation_drift is None or (_is_number(self.max_explanation_drift)
                                                        and 0 <= self.max_explanation_drift <= 2),
                 "max_explanation_drift", self.max_explanation_drift, "None or a number from 0 to 2 (1 - rank correlation)")
        _require(_is_int(self.explanation_images) and self.explanation_images >= 1, "explanation_images",
                 self.explanation_images, "an integer >= 1")
        _require(_is_number(self.confidence) and 0 < self.confidence < 1, "confidence", self.confidence,
                 "a number strictly between 0 and 1")
        _require(_is_int(self.n_boot) and self.n_boot >= 100, "n_boot", self.n_boot, "an integer >= 100")
        _require(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")


@dataclasses.dataclass(frozen=True)
class Check:
    """One row of the verdict: what was limited, the limit, what was measured, and why it failed."""

    name: str
    limit: str
    measured: str
    passed: bool
    reason: str | None = None


#: A per-class figure under both models (recall for classifiers, AP for detectors); the old name stays valid.
ClassRecall = ClassDelta


@dataclasses.dataclass(frozen=True)
class MetricCheck:
    """One limited metric: both models' values (fractions), the change and its paired-bootstrap CI in points."""

    key: str
    name: str
    baseline: float
    candidate: float
    delta_points: float
    delta_ci_points: tuple[float, float]
    test: str | None = None
    p_value: float | None = None
    unit: str = "points"  # of the change and its CI: points of a fraction, or the metric's own unit (PSNR: dB)


@dataclasses.dataclass
class GateResult:
    """The verdict and every figure behind it. Metric values are fractions; deltas are in points.

    `metric_checks` holds every limited metric of the task, the headline first (classification: accuracy;
    detection: mAP@0.5:0.95 and mAP@0.5); `delta_points` and `delta_ci_points` repeat the headline's.
    The accuracy and McNemar fields are classification's and None for other tasks; `per_class` holds the
    task's per-class figure, named by `class_metric`.
    """

    passed: bool
    reasons: list[str]
    warnings: list[str]
    checks: list[Check]
    n: int
    baseline_accuracy: float | None
    candidate_accuracy: float | None
    delta_points: float
    delta_ci_points: tuple[float, float]
    confidence: float
    mcnemar_b: int | None  # baseline right, candidate wrong
    mcnemar_c: int | None  # baseline wrong, candidate right
    mcnemar_p: float | None
    per_class: list[ClassDelta]
    latency_ms: float | None
    size_mb: float | None
    config: GateConfig
    task: str = DEFAULT_TASK
    metric_checks: list[MetricCheck] = dataclasses.field(default_factory=list)
    class_metric: str = "recall"
    #: The candidate's explanation drift from the baseline (`edgeres.explain.DriftResult.to_dict()`), when gated
    explanation_drift: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the `gate` entry of results.json)."""
        d = dataclasses.asdict(self)
        d["delta_ci_points"] = list(self.delta_ci_points)
        for m in d["metric_checks"]:
            m["delta_ci_points"] = list(m["delta_ci_points"])
        return d

    def properties(self) -> dict[str, Any]:
        """The figures a JUnit report carries: a classifier's accuracies and McNemar p, or for other tasks each
        limited metric's values, change and CI."""
        props: dict[str, Any] = {"n": self.n}
        if self.baseline_accuracy is not None:
            props.update(baseline_accuracy=self.baseline_accuracy, candidate_accuracy=self.candidate_accuracy,
                         delta_points=self.delta_points, mcnemar_p=self.mcnemar_p)
            return props
        for m in self.metric_checks:
            props.update({f"baseline_{m.key}": m.baseline, f"candidate_{m.key}": m.candidate,
                          f"{m.key}_delta_points": m.delta_points, f"{m.key}_ci_low_points": m.delta_ci_points[0],
                          f"{m.key}_ci_high_points": m.delta_ci_points[1]})
        return props


def check(baseline: Any, candidate: Any, class_names: list[str], config: GateConfig, *,
          candidate_latency_ms: float | None = None, candidate_size_mb: float | None = None,
          task: Task | None = None, explanation_drift: dict[str, Any] | None = None) -> GateResult:
    """Compare a candidate's predictions with the baseline's on the same test images and decide pass or fail.

    task: whose predictions these are and what it measures (default: classification, as in model.json).
    """
    task = task or get_task(DEFAULT_TASK)
    ev = task.gate_evidence(baseline, candidate, class_names)
    cis = ([(0.0, 0.0)] * len(ev.metrics) if ev.constant  # every resample of equal outcomes is zero
           else paired_bootstrap(ev.resample, ev.n, config.confidence, config.n_boot, config.seed))
    metric_checks = [MetricCheck(m.key, m.name, m.baseline, m.candidate, m.delta_points, ci, m.test, m.p_value,
                                 m.unit) for m, ci in zip(ev.metrics, cis)]
    checks = [_metric_check(m, ci, config) for m, ci in zip(ev.metrics, cis)]
    if config.max_class_drop is not None:
        checks.append(_class_check(ev, config.max_class_drop))
    checks += _resource_checks(config, candidate_latency_ms, candidate_size_mb)
    if config.max_explanation_drift is not None:
        checks.append(_drift_check(config.max_explanation_drift, explanation_drift))
    head = metric_checks[0]
    return GateResult(
        passed=all(ch.passed for ch in checks), reasons=[ch.reason for ch in checks if ch.reason],
        warnings=[w for m in metric_checks for w in _warnings(m, ev.n, config)], checks=checks, n=ev.n,
        baseline_accuracy=ev.legacy.get("baseline_accuracy"), candidate_accuracy=ev.legacy.get("candidate_accuracy"),
        delta_points=head.delta_points, delta_ci_points=head.delta_ci_points, confidence=config.confidence,
        mcnemar_b=ev.legacy.get("mcnemar_b"), mcnemar_c=ev.legacy.get("mcnemar_c"),
        mcnemar_p=ev.legacy.get("mcnemar_p"), per_class=ev.per_class, latency_ms=candidate_latency_ms,
        size_mb=candidate_size_mb, config=config, task=task.name, metric_checks=metric_checks,
        class_metric=ev.class_metric, explanation_drift=explanation_drift)


def paired_bootstrap(resample: Callable[[np.ndarray], np.ndarray], n: int, confidence: float = 0.95,
                     n_boot: int = 10000, seed: int = 0) -> list[tuple[float, float]]:
    """Percentile CIs of paired changes, one (low, high) per metric: rows of n image indices drawn with
    replacement, the same row for both models; resample(rows) -> (rows, metrics) changes in points."""
    rng = np.random.default_rng(seed)
    deltas = []
    rows = max(1, _BOOT_CHUNK // n)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n), dtype=np.int32)
        deltas.append(np.asarray(resample(idx), dtype=np.float64).reshape(stop - start, -1))
    alpha = 1.0 - confidence
    lo, hi = np.quantile(np.concatenate(deltas), [alpha / 2, 1 - alpha / 2], axis=0)
    return [(float(a), float(b)) for a, b in zip(lo, hi)]


def bootstrap_delta_ci(right_b: np.ndarray, right_c: np.ndarray, confidence: float = 0.95, n_boot: int = 10000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile CI, in points, of candidate minus baseline accuracy; images resampled in pairs."""
    diff = right_c.astype(np.int8) - right_b.astype(np.int8)
    n = len(diff)
    if not diff.any():  # every resample of all-zero differences is zero
        return (0.0, 0.0)
    return paired_bootstrap(lambda idx: diff[idx].sum(axis=1, dtype=np.int64) * (100.0 / n), n, confidence,
                            n_boot, seed)[0]


def check_rows(result: GateResult | dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of the checks table, from a GateResult or its `to_dict()`."""
    checks = result["checks"] if isinstance(result, dict) else [dataclasses.asdict(ch) for ch in result.checks]
    rows = [[ch["name"], ch["limit"], ch["measured"], "pass" if ch["passed"] else "FAIL"] for ch in checks]
    return ["check", "limit", "measured", "verdict"], rows


def format_table(result: GateResult | dict[str, Any]) -> str:
    """The checks as a Markdown table (also readable as plain text)."""
    columns, rows = check_rows(result)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_junit(result: GateResult, path: str | Path) -> Path:
    """Write JUnit XML: suite `edgeres.check`, one testcase per check, a <failure> for each failed one."""
    failures = sum(not ch.passed for ch in result.checks)
    suite = ET.Element("testsuite", name="edgeres.check", tests=str(len(result.checks)),
                       failures=str(failures), errors="0", skipped="0", time="0")
    props = ET.SubElement(suite, "properties")
    for key, value in result.properties().items():
        ET.SubElement(props, "property", name=key, value=str(value))
    for ch in result.checks:
        case = ET.SubElement(suite, "testcase", classname="edgeres.check", name=ch.name, time="0")
        if not ch.passed:
            failure = ET.SubElement(case, "failure", message=ch.reason or "failed", type="regression")
            failure.text = f"limit {ch.limit}; measured {ch.measured}"
    if result.warnings:
        ET.SubElement(suite, "system-out").text = "\n".join(result.warnings)
    ET.indent(suite)
    text = '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
    if Path(path).is_dir():
        raise UserInputError(f"the JUnit report path {path} is a folder; give a file name, e.g. "
                             f"{Path(path) / 'junit.xml'}")
    try:
        return write_text(path, text)
    except OSError as e:
        raise UserInputError(f"cannot write the JUnit report {path}: {e.strerror}") from None


def _metric_check(m: MetricDelta, ci: tuple[float, float], config: GateConfig) -> Check:
    drop, drop_lo, drop_hi = -m.delta_points, -ci[1], -ci[0]
    conf = f"{config.confidence:.0%}"
    test = f"; {m.test} p={m.p_value:.3g}" if m.p_value is not None else ""
    measured = f"{_signed(m.delta_points)} {m.unit} ({conf} CI {_signed(ci[0])} to {_signed(ci[1])}{test})"
    passed = drop <= config.max_drop + _EPS
    detail = f", {m.detail}" if m.detail else ""
    reason = None if passed else (
        f"{m.name} dropped {drop:.1f} {m.unit} ({conf} CI {drop_lo:.1f} to {drop_hi:.1f}{test}{detail}) > allowed "
        f"{config.max_drop:g}")
    return Check(f"{m.name} drop", f"drop <= {config.max_drop:g} {m.unit}", measured, passed, reason)


def _class_check(ev: GateEvidence, max_class_drop: float) -> Check:
    name, limit = f"class {ev.class_metric} drop", f"drop <= {max_class_drop:g} points per class"
    scored = [r for r in ev.per_class if r.delta_points is not None]
    if not scored:
        return Check(name, limit, f"no class has test {ev.support_unit}", True)
    worst = min(scored, key=lambda r: r.delta_points)
    failed = [r for r in scored if -r.delta_points > max_class_drop + _EPS]
    reason = None
    if failed:
        reason = "; ".join(
            f"{ev.class_metric} of class {r.name!r} dropped {-r.delta_points:.1f} points ({r.baseline:.1%} -> "
            f"{r.candidate:.1%}, {r.support} {ev.support_unit}) > allowed {max_class_drop:g}" for r in failed)
    measured = f"worst {_signed(worst.delta_points)} points ({worst.name})"
    return Check(name, limit, measured, not failed, reason)


def _resource_checks(config: GateConfig, latency_ms: float | None, size_mb: float | None) -> list[Check]:
    out = []
    for name, limit, value, unit in (("latency", config.max_latency_ms, latency_ms, "ms"),
                                     ("size", config.max_size_mb, size_mb, "MB")):
        if limit is None:
            continue
        if value is None or not _is_number(value):
            # A limit with nothing measured would pass silently; that is a misconfigured pipeline.
            raise UserInputError(f"max_{name}_{unit.lower()} is set but no candidate {name} was given "
                                 f"(candidate_{name}_{unit.lower()}={value!r})")
        passed = value <= limit + _EPS
        reason = None if passed else f"{name} {value:.2f} {unit} > allowed {limit:g} {unit}"
        out.append(Check(name, f"<= {limit:g} {unit}", f"{value:.2f} {unit}", passed, reason))
    return out


def _drift_check(limit: float, drift: dict[str, Any] | None) -> Check:
    """Explanation drift (1 - mean rank correlation of the occlusion maps) against its limit."""
    if drift is None:
        raise UserInputError("max_explanation_drift is set but no explanation drift was measured "
                             "(explanation_drift=None)")
    value = 1.0 - drift["rank_correlation_mean"]
    passed = value <= limit + _EPS
    measured = (f"{value:.3f} (rank corr. {drift['rank_correlation_mean']:.2f}, min "
                f"{drift['rank_correlation_min']:.2f}; top-20% IoU {drift['top_iou_mean']:.2f}; "
                f"{len(drift['images'])} images)")
    reason = None if passed else (f"explanation drift {value:.3f} > allowed {limit:g}: the candidate's occlusion maps "
                                  f"rank the image's regions unlike the baseline's (mean rank correlation "
                                  f"{drift['rank_correlation_mean']:.2f})")
    return Check("explanation drift", f"<= {limit:g}", measured, passed, reason)


def _warnings(m: MetricCheck, n: int, config: GateConfig) -> list[str]:
    out = []
    (lo, hi), delta = m.delta_ci_points, m.delta_points
    within = -delta <= config.max_drop + _EPS
    if within and lo < -config.max_drop - _EPS:
        out.append(f"the {config.confidence:.0%} CI of the {m.name} change ({_signed(lo)} to {_signed(hi)} "
                   f"{m.unit}) reaches past the allowed drop of {config.max_drop:g}: these {n} test images cannot "
                   "rule out a larger regression")
    if within and delta < 0 and m.p_value is not None and m.p_value < 1 - config.confidence:
        out.append(f"the drop of {-delta:.2f} {m.unit} is within the limit but statistically significant "
                   f"({m.test} p={m.p_value:.3g})")
    return out


def _signed(x: float) -> str:
    return f"{x:+.1f}" if abs(x) >= 0.05 or x == 0 else f"{x:+.2f}"


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


#: The limits `edgeres check` takes as options; the other fields are set from recipes and Python only.
_CLI_OPTIONS = frozenset({"max_drop", "max_class_drop", "max_latency_ms", "max_size_mb", "max_explanation_drift",
                          "explanation_images"})


def _require(ok: bool, field: str, value: Any, expected: str) -> None:
    if not ok:  # named as a recipe spells it (and as the CLI does), never by the class
        option = f" (--{field.replace('_', '-')})" if field in _CLI_OPTIONS else ""
        raise UserInputError(f"{field}{option} must be {expected}, got {value!r}")
