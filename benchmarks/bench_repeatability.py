"""Repeatability of `edgeres bench`: the same artifact measured by two separate `bench` runs, p50 compared.

Usage: python benchmarks/bench_repeatability.py CHECKPOINT_OR_FILE [...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeres.bench.run import BenchConfig, bench_artifacts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_repeatability.json"))
    args = ap.parse_args()
    config = BenchConfig(runs=args.runs, warmup=20, budget_s=30, min_seconds=args.min_seconds, accuracy=False,
                         end_to_end=False)
    first, second = (bench_artifacts(args.artifacts, config) for _ in range(2))
    rows = []
    for a, b in zip(first["artifacts"], second["artifacts"]):
        p1, p2 = a["latency"]["engine"]["p50_ms"], b["latency"]["engine"]["p50_ms"]
        rows.append({"artifact": a["name"], "precision": a["precision"], "p50_run1_ms": p1, "p50_run2_ms": p2,
                     "difference": abs(p1 - p2) / min(p1, p2)})
    Path(args.out).write_text(json.dumps({"cpu": first["environment"]["cpu"], "runs": args.runs, "rows": rows},
                                         indent=2) + "\n")
    print("| artifact | precision | p50 run 1 (ms) | p50 run 2 (ms) | difference |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['artifact']} | {r['precision']} | {r['p50_run1_ms']:.3f} | {r['p50_run2_ms']:.3f} | "
              f"{r['difference'] * 100:.1f}% |")


if __name__ == "__main__":
    main()
