"""Latency distributions: warm-up, then timed runs in one process; samples kept, percentiles reported."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

from edgeres.errors import UserInputError


@dataclasses.dataclass
class Latency:
    """Per-call latency samples in milliseconds and the figures drawn from them."""

    samples_ms: list[float]
    batch_size: int
    warmup: int

    def summary(self) -> dict[str, Any]:
        s = np.asarray(self.samples_ms)
        return {
            "runs": int(len(s)), "warmup": self.warmup, "batch_size": self.batch_size,
            "p50_ms": float(np.percentile(s, 50)), "p90_ms": float(np.percentile(s, 90)),
            "p99_ms": float(np.percentile(s, 99)), "mean_ms": float(s.mean()), "std_ms": float(s.std(ddof=1))
            if len(s) > 1 else 0.0, "min_ms": float(s.min()),
            "throughput_ips": float(self.batch_size * 1000.0 / np.median(s)),
        }


def time_calls(fn: Callable[[], Any], warmup: int = 10, runs: int = 100, budget_s: float | None = None,
               batch_size: int = 1, min_seconds: float = 0.0) -> Latency:
    """Call `fn` `warmup` times untimed, then time at least `runs` calls and at least `min_seconds`
    (a sub-millisecond model needs many calls for a stable median), stopping past `budget_s` seconds."""
    if runs < 1 or warmup < 0:
        raise UserInputError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    samples = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
        elapsed = time.perf_counter() - start
        if budget_s is not None and elapsed > budget_s and len(samples) >= 5:
            break
        if len(samples) >= runs and elapsed >= min_seconds:
            break
    return Latency(samples, batch_size, warmup)


def runner_latency(runner, batch_size: int = 1, warmup: int = 10, runs: int = 100,
                   budget_s: float | None = None, seed: int = 0, min_seconds: float = 0.0) -> Latency:
    """Engine-only latency of a Runner on a fixed random batch (input checks excluded, runtime call only)."""
    _, c, h, w = runner.info.input_shape
    fixed = runner.info.input_shape[0]
    if fixed is not None and fixed != batch_size:
        raise UserInputError(f"{runner.info.path} has a fixed batch of {fixed}; cannot time batch {batch_size}")
    batch = np.random.default_rng(seed).standard_normal((batch_size, c, h, w)).astype(np.float32)
    return time_calls(lambda: runner.run(batch), warmup, runs, budget_s, batch_size, min_seconds)
