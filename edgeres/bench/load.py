"""The machine's load while a measurement runs: load average, and how much CPU other processes took.

A latency is only the artifact's own when nothing else competed for the cores it ran on (PyTorch with
2 threads on 2 cores slowed 10-17x in one run while another job held a core). The kernel's /proc/stat
counts the CPU time every process spent, the process's own os.times() its share: the difference over
the measurement, in cores, is what others took. Cores the measurement left free (cores - threads)
absorb that much without competing; whatever is beyond them ran on cores the measurement wanted.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

# Others flagged as competing when, beyond the cores the measurement left free, they took more than
# this share of the cores it used: a thread that loses a tenth of its core runs ~10% slower, twice the
# run-to-run spread of a quiet `edgeres bench` (benchmarks/bench_repeatability.py, <= 5%).
CONTENTION_SHARE = 0.10

_BUSY = ("user", "nice", "system", "irq", "softirq", "steal")  # steal: another VM held the physical core
_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


@dataclasses.dataclass(frozen=True)
class CpuSample:
    """One reading: busy CPU seconds of the whole machine and of this process, at a wall time."""

    machine_busy_s: float | None  # None where /proc/stat is not available
    own_s: float
    wall_s: float
    loadavg: tuple[float, float, float] | None


def machine_busy_seconds(stat_text: str, ticks_per_second: float) -> float:
    """Busy CPU seconds summed over all cores, from the text of /proc/stat (guest time is inside user)."""
    for line in stat_text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            values = dict(zip(_FIELDS, map(int, parts[1:1 + len(_FIELDS)])))
            return sum(values.get(k, 0) for k in _BUSY) / ticks_per_second
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def sample() -> CpuSample:
    """Read the machine's and this process's CPU time now."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            busy = machine_busy_seconds(f.read(), os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):
        busy = None
    t = os.times()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return CpuSample(busy, t.user + t.system, time.monotonic(), load)


def contention(before: CpuSample, after: CpuSample, cores: int, threads: int) -> dict[str, Any]:
    """What other processes took between two samples, and whether it competed with `threads` threads."""
    wall = max(after.wall_s - before.wall_s, 1e-9)
    result: dict[str, Any] = {
        "loadavg_before": _rounded(before.loadavg), "loadavg_after": _rounded(after.loadavg),
        "wall_s": round(wall, 3), "cores": cores, "threads": threads, "other_cores": None,
        "contended": None, "rule": f"others took > {CONTENTION_SHARE:.0%} of the measured cores beyond "
                                    "the free ones",
    }
    if before.machine_busy_s is None or after.machine_busy_s is None:
        return result
    others = max((after.machine_busy_s - before.machine_busy_s) - (after.own_s - before.own_s), 0.0) / wall
    spare = max(cores - threads, 0)
    used = min(threads, cores)
    result["other_cores"] = round(others, 3)
    result["contended"] = bool(max(others - spare, 0.0) > CONTENTION_SHARE * used)
    return result


class LoadMonitor:
    """Context manager recording the load over a block: `monitor.result` after the block ends."""

    def __init__(self, threads: int, cores: int | None = None):
        self.threads, self.cores = threads, cores or os.cpu_count() or 1
        self.result: dict[str, Any] | None = None

    def __enter__(self) -> "LoadMonitor":
        self._before = sample()
        return self

    def __exit__(self, *exc: object) -> None:
        self.result = contention(self._before, sample(), self.cores, self.threads)


def _rounded(load: tuple[float, float, float] | None) -> list[float] | None:
    return None if load is None else [round(v, 2) for v in load]
