"""Latency distributions: warm-up, then timed runs in one process; samples kept, percentiles reported."""
from __future__ import annotations

import dataclasses
import os
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
    if (budget_s is not None and not budget_s > 0) or not min_seconds >= 0:  # `not` so NaN is refused too
        raise UserInputError(f"budget_s must be None or seconds > 0 and min_seconds seconds >= 0, "
                             f"got budget_s={budget_s}, min_seconds={min_seconds}")
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


# A forward pass holds the input, the runtime's copy of it and activations larger still (a ResNet stem's
# output alone is 16/in_chans times its input): an input past this share of free memory cannot run.
INPUT_MEMORY_SHARE = 0.25


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_batch_memory(shape: tuple[int, ...], available: int | None = None) -> int:
    """Bytes of a float32 batch of `shape`; refuses one too large to run here before anything allocates it."""
    nbytes = 4 * int(np.prod(shape, dtype=object))  # object dtype: no int64 overflow on absurd shapes
    available = available_memory() if available is None else available
    if available is not None and nbytes > INPUT_MEMORY_SHARE * available:
        raise UserInputError(
            f"a batch of shape {tuple(shape)} float32 takes {nbytes / 2**30:,.1f} GiB before any activation; "
            f"the memory available is {available / 2**30:,.1f} GiB (inputs up to {INPUT_MEMORY_SHARE:.0%} of it "
            f"can run): use a smaller batch size or the model's img_size in model.json")
    return nbytes


def runner_latency(runner, batch_size: int = 1, warmup: int = 10, runs: int = 100,
                   budget_s: float | None = None, seed: int = 0, min_seconds: float = 0.0) -> Latency:
    """Engine-only latency of a Runner on a fixed random batch (input checks excluded, runtime call only)."""
    _, c, h, w = runner.info.input_shape
    fixed = runner.info.input_shape[0]
    if fixed is not None and fixed != batch_size:
        raise UserInputError(f"{runner.info.path} has a fixed batch of {fixed}; cannot time batch {batch_size}")
    check_batch_memory((batch_size, c, h, w))
    batch = np.random.default_rng(seed).standard_normal((batch_size, c, h, w), dtype=np.float32)
    return time_calls(lambda: runner.run(batch), warmup, runs, budget_s, batch_size, min_seconds)
