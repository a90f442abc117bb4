"""Repeatability of `edgeres bench`: the same artifacts measured by two separate `bench` runs, p50 compared.

Each run measures every artifact in its own process, as `edgeres bench` does; the figure is how far the
two runs' p50s lie apart, and each row says whether other processes competed for the cores while it
was timed (edgeres.bench.load), since a contended row measures the load rather than the artifact.

Usage: python benchmarks/bench_repeatability.py CHECKPOINT_OR_FILE [...] [--quick] [--table-only]
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import method
from edgeres.bench.run import BenchConfig, bench_artifacts

NAME = "bench_repeatability"


def markdown(result: dict[str, Any]) -> str:
    """The README block of a saved result."""
    lines = ["| artifact | precision | p50 run 1 (ms) | p50 run 2 (ms) | difference | contended (run 1, run 2) |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        busy = ", ".join({True: "YES", False: "no", None: "?"}[c] for c in r["contended"])
        lines.append(f"| {r['artifact']} | {r['precision']} | {r['p50_run1_ms']:.3f} | {r['p50_run2_ms']:.3f} | "
                     f"{r['difference'] * 100:.1f}% | {busy} |")
    return "\n".join(lines) + "\n\n" + method.footer(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="*")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    method.add_output_arguments(ap)
    args = method.quick(ap.parse_args(), runs=20, min_seconds=0.5)
    if args.table_only:
        return method.rerender(NAME, args, markdown)
    if not args.artifacts:
        ap.error("give the artifacts to measure")
    start = time.perf_counter()
    config = BenchConfig(runs=args.runs, warmup=20, budget_s=30, min_seconds=args.min_seconds, accuracy=False,
                         end_to_end=False)
    first, second = (bench_artifacts(args.artifacts, config) for _ in range(2))
    rows = []
    for a, b in zip(first["artifacts"], second["artifacts"]):
        p1, p2 = a["latency"]["engine"]["p50_ms"], b["latency"]["engine"]["p50_ms"]
        rows.append({"artifact": a["name"], "precision": a["precision"], "p50_run1_ms": p1, "p50_run2_ms": p2,
                     "difference": abs(p1 - p2) / min(p1, p2),
                     "contended": [(e.get("load") or {}).get("contended") for e in (a, b)],
                     "samples_ms": [a["latency"]["engine"]["samples_ms"], b["latency"]["engine"]["samples_ms"]]})
    result = method.record(NAME, args, start, bench_config=first["config"], rows=rows)
    method.finish(NAME, result, args, markdown)


if __name__ == "__main__":
    main()
