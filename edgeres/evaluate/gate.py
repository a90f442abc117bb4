"""The CI regression gate: is a candidate artifact as accurate, fast and small as the limits allow?

Both models are scored on the same test images, so the comparison is paired: the accuracy change
gets a paired-bootstrap confidence interval and McNemar's exact test on the images they disagree on.

Pass/fail rule. The accuracy check fails when the *point estimate* of the drop exceeds `max_drop`.
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
from typing import Any

import numpy as np

from edgeres.artifacts import write_text
from edgeres.errors import UserInputError
from edgeres.meta import DEFAULT_TASK
from edgeres.tasks import Task, get_task

_EPS = 1e-9  # float slack so a drop computed as 0.5000000001 still counts as "at the limit"
_BOOT_CHUNK = 4_000_000  # resampled indices held in memory at once (~16 MB of int32)


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """Limits of the gate. Accuracy and recall limits are in percentage points; MB is 10**6 bytes."""

    max_drop: float = 0.5
    max_class_drop: float | None = None
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    confidence: float = 0.95
    n_boot: int = 10000
    seed: int = 0

    def __post_init__(self) -> None:
        _require(_is_number(self.max_drop) and self.max_drop >= 0, "max_drop", self.max_drop, "a number >= 0")
        for name in ("max_class_drop", "max_latency_ms", "max_size_mb"):
            value = getattr(self, name)
            _require(value is None or (_is_number(value) and value >= 0), name, value, "None or a number >= 0")
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


@dataclasses.dataclass(frozen=True)
class ClassRecall:
    """Recall of one class under both models; None when the test set has no image of it."""

    name: str
    support: int
    baseline: float | None
    candidate: float | None
    delta_points: float | None


@dataclasses.dataclass
class GateResult:
    """The verdict and every figure behind it. Accuracies are fractions; deltas are in points."""

    passed: bool
    reasons: list[str]
    warnings: list[str]
    checks: list[Check]
    n: int
    baseline_accuracy: float
    candidate_accuracy: float
    delta_points: float
    delta_ci_points: tuple[float, float]
    confidence: float
    mcnemar_b: int  # baseline right, candidate wrong
    mcnemar_c: int  # baseline wrong, candidate right
    mcnemar_p: float
    per_class: list[ClassRecall]
    latency_ms: float | None
    size_mb: float | None
    config: GateConfig

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the `gate` entry of results.json)."""
        d = dataclasses.asdict(self)
        d["delta_ci_points"] = list(self.delta_ci_points)
        return d


def check(baseline: Any, candidate: Any, class_names: list[str], config: GateConfig, *,
          candidate_latency_ms: float | None = None, candidate_size_mb: float | None = None,
          task: Task | None = None) -> GateResult:
    """Compare a candidate's predictions with the baseline's on the same test images and decide pass or fail.

    task: whose predictions these are and what counts as right (default: classification, as in model.json).
    """
    paired = (task or get_task(DEFAULT_TASK)).paired(baseline, candidate, class_names)
    labels, right_b, right_c = paired.labels, paired.baseline, paired.candidate
    n = len(labels)
    delta = 100.0 * (int(right_c.sum()) - int(right_b.sum())) / n
    ci = bootstrap_delta_ci(right_b, right_c, config.confidence, config.n_boot, config.seed)
    b = int((right_b & ~right_c).sum())
    c = int((~right_b & right_c).sum())
    p = mcnemar_exact(b, c)
    per_class = _per_class_recall(labels, right_b, right_c, class_names)

    checks = [_accuracy_check(delta, ci, b, c, p, config)]
    if config.max_class_drop is not None:
        checks.append(_class_check(per_class, config.max_class_drop))
    checks += _resource_checks(config, candidate_latency_ms, candidate_size_mb)
    return GateResult(
        passed=all(ch.passed for ch in checks), reasons=[ch.reason for ch in checks if ch.reason],
        warnings=_warnings(delta, ci, p, n, config), checks=checks, n=n,
        baseline_accuracy=float(right_b.mean()), candidate_accuracy=float(right_c.mean()), delta_points=delta,
        delta_ci_points=ci, confidence=config.confidence, mcnemar_b=b, mcnemar_c=c, mcnemar_p=p,
        per_class=per_class, latency_ms=candidate_latency_ms, size_mb=candidate_size_mb, config=config)


def bootstrap_delta_ci(right_b: np.ndarray, right_c: np.ndarray, confidence: float = 0.95, n_boot: int = 10000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile CI, in points, of candidate minus baseline accuracy; images resampled in pairs."""
    diff = right_c.astype(np.int8) - right_b.astype(np.int8)
    n = len(diff)
    if not diff.any():  # every resample of all-zero differences is zero
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    sums = np.empty(n_boot, dtype=np.int64)
    rows = max(1, _BOOT_CHUNK // n)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n), dtype=np.int32)
        sums[start:stop] = diff[idx].sum(axis=1, dtype=np.int64)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(sums * (100.0 / n), [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of b successes in b + c trials at p = 1/2."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest  # scipy is slow to import; only the gate needs it

    return float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)


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
    for key in ("n", "baseline_accuracy", "candidate_accuracy", "delta_points", "mcnemar_p"):
        ET.SubElement(props, "property", name=key, value=str(getattr(result, key)))
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


def _per_class_recall(labels: np.ndarray, right_b: np.ndarray, right_c: np.ndarray,
                      class_names: list[str]) -> list[ClassRecall]:
    out = []
    for i, name in enumerate(class_names):
        mask = labels == i
        support = int(mask.sum())
        if support == 0:
            out.append(ClassRecall(name, 0, None, None, None))
            continue
        rb, rc = float(right_b[mask].mean()), float(right_c[mask].mean())
        out.append(ClassRecall(name, support, rb, rc, 100.0 * (rc - rb)))
    return out


def _accuracy_check(delta: float, ci: tuple[float, float], b: int, c: int, p: float, config: GateConfig) -> Check:
    drop, drop_lo, drop_hi = -delta, -ci[1], -ci[0]
    conf = f"{config.confidence:.0%}"
    measured = f"{_signed(delta)} points ({conf} CI {_signed(ci[0])} to {_signed(ci[1])}; McNemar p={p:.3g})"
    passed = drop <= config.max_drop + _EPS
    reason = None if passed else (
        f"accuracy dropped {drop:.1f} points ({conf} CI {drop_lo:.1f} to {drop_hi:.1f}; McNemar p={p:.3g}, "
        f"{b} images newly wrong, {c} newly right) > allowed {config.max_drop:g}")
    return Check("accuracy drop", f"drop <= {config.max_drop:g} points", measured, passed, reason)


def _class_check(per_class: list[ClassRecall], max_class_drop: float) -> Check:
    scored = [r for r in per_class if r.delta_points is not None]
    worst = min(scored, key=lambda r: r.delta_points)
    failed = [r for r in scored if -r.delta_points > max_class_drop + _EPS]
    reason = None
    if failed:
        reason = "; ".join(
            f"recall of class {r.name!r} dropped {-r.delta_points:.1f} points ({r.baseline:.1%} -> {r.candidate:.1%}, "
            f"{r.support} images) > allowed {max_class_drop:g}" for r in failed)
    measured = f"worst {_signed(worst.delta_points)} points ({worst.name})"
    return Check("class recall drop", f"drop <= {max_class_drop:g} points per class", measured, not failed, reason)


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


def _warnings(delta: float, ci: tuple[float, float], p: float, n: int, config: GateConfig) -> list[str]:
    out = []
    within = -delta <= config.max_drop + _EPS
    if within and ci[0] < -config.max_drop - _EPS:
        out.append(f"the {config.confidence:.0%} CI of the accuracy change ({_signed(ci[0])} to {_signed(ci[1])} "
                   f"points) reaches past the allowed drop of {config.max_drop:g}: these {n} test images cannot "
                   "rule out a larger regression")
    if within and delta < 0 and p < 1 - config.confidence:
        out.append(f"the drop of {-delta:.2f} points is within the limit but statistically significant "
                   f"(McNemar p={p:.3g})")
    return out


def _signed(x: float) -> str:
    return f"{x:+.1f}" if abs(x) >= 0.05 or x == 0 else f"{x:+.2f}"


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _require(ok: bool, field: str, value: Any, expected: str) -> None:
    if not ok:
        raise UserInputError(f"GateConfig.{field} must be {expected}, got {value!r}")
