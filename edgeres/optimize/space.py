"""What `edgeres optimize` searches over, and how it ranks what it measured.

A candidate is a pruned network (kept MACs fraction, channel rounding, importance criterion,
distillation on or off, fine-tuning epochs) and, once it is a finalist, an INT8 quantization choice
(NNCF preset or ONNX Runtime's activation symmetry, per-channel or per-tensor weights, calibration
method and size, float fallback of sensitive layers by NNCF's accuracy control). Each has a stable key,
so a resumed search finds what it already measured.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, Sequence

from edgeres.compress.prune import IMPORTANCES
from edgeres.errors import UserInputError

SAME_SPEED = 0.05  # latencies within 5% rank as equal, the more accurate first
BACKENDS = {"openvino": "openvino", "onnxruntime": "onnx", "tensorrt": "tensorrt"}  # backend -> export format


def _key(prefix: str, fields: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    return f"{prefix}-{digest}"


ALLOCATIONS = ("uniform", "latency")


@dataclasses.dataclass(frozen=True)
class Structure:
    """A pruned network before training: what decides its latency.

    allocation "uniform": every layer loses the same share of channels until `macs` of the MACs remain.
    allocation "latency": channels ranked across layers by importance per unit of latency they cost on the
    device's roofline, removed until `amount` of the estimated latency remains (set to what the uniform
    structure of the same `macs` level keeps, so the two compete at equal estimated speed).
    """

    macs: float      # kept fraction of the baseline's MACs (the level this structure belongs to)
    round_to: int    # pruned widths stay multiples of this
    allocation: str = "uniform"
    amount: float | None = None  # "latency": kept fraction of the roofline latency

    def fields(self) -> dict[str, Any]:
        """What identifies the structure (a uniform one without the fields it does not use, so keys of
        searches recorded before allocations existed stay valid)."""
        if self.allocation == "uniform":
            return {"macs": self.macs, "round_to": self.round_to}
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        return _key("s", self.fields())

    def label(self) -> str:
        if self.allocation == "latency":
            return f"latency {self.amount:g} /{self.round_to} (global)"
        return f"macs {self.macs:g} /{self.round_to}"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A structure, how its channels were chosen, and how it was fine-tuned."""

    structure: Structure
    importance: str
    distill: bool
    epochs: int

    @property
    def key(self) -> str:
        return _key("c", {**self.structure.fields(), "importance": self.importance,
                          "distill": self.distill, "epochs": self.epochs})

    def label(self) -> str:
        return (f"{self.structure.label()} {self.importance}{' +KD' if self.distill else ''} "
                f"{self.epochs} ep")


@dataclasses.dataclass(frozen=True)
class Quantization:
    """One INT8 recipe; None fields keep the exporter's default. max_drop: NNCF's accuracy control reverts
    the most sensitive layers to float until the val-split drop is within it (OpenVINO only)."""

    preset: str | None = None          # performance (symmetric activations) | mixed (asymmetric)
    per_channel: bool = True           # ONNX Runtime weights; NNCF is always per channel
    method: str = "minmax"             # ONNX Runtime calibration
    calib_size: int = 300
    max_drop: float | None = None

    @property
    def key(self) -> str:
        return _key("q", dataclasses.asdict(self))

    def label(self) -> str:
        parts = [self.preset or "default", "per-channel" if self.per_channel else "per-tensor", self.method,
                 f"calib {self.calib_size}"]
        if self.max_drop is not None:
            parts.append(f"float fallback (drop <= {self.max_drop:g})")
        return ", ".join(parts)

    def export_fields(self) -> dict[str, Any]:
        return {"int8_preset": self.preset, "int8_per_channel": self.per_channel, "int8_method": self.method,
                "calib_size": self.calib_size, "max_drop": self.max_drop}


def quantizations(backend: str, max_drop: float, train_size: int) -> list[Quantization]:
    """The INT8 choices a finalist is tried with: the default first (what a user gets by hand)."""
    more = min(max(train_size, 1), 1000)
    if backend == "openvino":
        return [Quantization(), Quantization(preset="mixed"), Quantization(calib_size=more),
                Quantization(max_drop=max_drop / 2)]
    return [Quantization(), Quantization(preset="performance"), Quantization(method="percentile"),
            Quantization(per_channel=False)]


def validate_grid(macs: Sequence[float], round_to: Sequence[int], importances: Sequence[str],
                  allocations: Sequence[str] = ("uniform",)) -> None:
    bad = [a for a in allocations if a not in ALLOCATIONS]
    if bad or "uniform" not in allocations:
        raise UserInputError(f"allocations must include 'uniform' and be among {list(ALLOCATIONS)}, "
                             f"got {list(allocations)}")
    for m in macs:
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < 1:
            raise UserInputError(f"each kept-MACs fraction must be between 0 and 1 (exclusive), got {m!r}")
    for r in round_to:
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise UserInputError(f"each channel rounding must be a positive integer, got {r!r}")
    bad = [i for i in importances if i not in IMPORTANCES]
    if bad or not importances:
        raise UserInputError(f"importance criteria must be among {list(IMPORTANCES)}, got {list(importances)}")


def macs_for_latency(points: Sequence[tuple[float, float]], target_ms: float) -> float | None:
    """The kept-MACs fraction whose latency, interpolated on log-log axes between measured (macs, ms)
    points, equals `target_ms`; None if the target is outside what was measured."""
    pts = sorted((m, ms) for m, ms in points if ms > 0)
    for (m0, t0), (m1, t1) in zip(pts, pts[1:]):
        if min(t0, t1) <= target_ms <= max(t0, t1) and t0 != t1:
            f = (math.log(target_ms) - math.log(t0)) / (math.log(t1) - math.log(t0))
            return float(math.exp(math.log(m0) + f * (math.log(m1) - math.log(m0))))
    return None


def rank(records: list[dict[str, Any]], baseline_val: float, max_drop: float, target_ms: float | None,
         slack: float = 0.0) -> list[dict[str, Any]]:
    """Order measured candidates best first.

    Feasible ones (val drop within max_drop + slack points, latency within the target) come first: without a
    target the fastest first (latencies within SAME_SPEED of each other count as one, the more accurate
    first), with one the most accurate first (it already fits). The rest follow by how close they come:
    the sum of their accuracy and latency shortfalls, relative to the limits.
    """
    def drop(r: dict[str, Any]) -> float:
        return (baseline_val - r["val"]) * 100

    def feasible(r: dict[str, Any]) -> bool:
        return drop(r) <= max_drop + slack + 1e-9 and (target_ms is None or r["latency_ms"] <= target_ms)

    def key(r: dict[str, Any]) -> tuple:
        if feasible(r):
            return (0, -r["val"], r["latency_ms"]) if target_ms is not None else (0, r["latency_ms"], -r["val"])
        over_acc = max(0.0, drop(r) - max_drop - slack) / max(max_drop, 0.1)
        over_lat = 0.0 if target_ms is None else max(0.0, r["latency_ms"] / target_ms - 1)
        return (1, over_acc + over_lat, r["latency_ms"])
    ordered = sorted(records, key=key)
    if target_ms is not None:
        return ordered
    # Fastest first, but latencies within SAME_SPEED of each other are one speed (timing noise: the same
    # network quantized two ways differs by ~1-4% between runs), and among those the more accurate leads.
    fits = [r for r in ordered if feasible(r)]
    tiers: list[list[dict[str, Any]]] = []
    for r in fits:
        if tiers and r["latency_ms"] <= tiers[-1][0]["latency_ms"] * (1 + SAME_SPEED):
            tiers[-1].append(r)
        else:
            tiers.append([r])
    return [r for tier in tiers for r in sorted(tier, key=lambda r: -r["val"])] + ordered[len(fits):]


def pareto(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records no other record beats on both val accuracy and latency, fastest first."""
    front = [r for r in records
             if not any(o is not r and o["val"] >= r["val"] and o["latency_ms"] <= r["latency_ms"]
                        and (o["val"] > r["val"] or o["latency_ms"] < r["latency_ms"]) for o in records)]
    return sorted(front, key=lambda r: r["latency_ms"])
