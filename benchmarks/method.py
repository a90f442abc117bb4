"""The one timing method every script in benchmarks/ uses, and the record each one saves.

Development machines are shared 2-core VMs whose load comes and goes within seconds, so absolute
milliseconds move from run to run; ratios measured side by side are what holds. Hence:

- all contenders live in one process and are timed in interleaved rounds: each round gives every
  contender one untimed call and a block of timed calls, in an order reversed every other round, so a
  slow spell of the machine hits all of them alike;
- a comparison is a paired ratio: per round, the ratio of the two contenders' block p50s (blocks that
  ran back to back), then the median over rounds, with a bootstrap 95% interval over rounds; pooled
  p50s, which depend on which spells each side happened to hit, are reported beside it;
- an A/A control: a twin of one contender (same code, separate instance) compared like any pair, so
  a ratio inside the control's spread is no difference;
- samples, settings, versions, the CPU model with the ISA flags that choose int8/bf16 kernels
  (AVX-512 VNNI/BF16, AMX), and the load during timing (edgeres.bench.load) are saved in results/*.json;
- each script turns its saved result into the Markdown block of benchmarks/README.md (between
  `<!-- results:NAME -->` markers), so re-measuring is one command; `--quick` is a short smoke run
  that writes results/quick/NAME.json and leaves the README alone.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeres.artifacts import package_versions
from edgeres.bench.latency import time_calls
from edgeres.bench.load import LoadMonitor
from edgeres.bench.run import cpu_info

HERE = Path(__file__).parent
RESULTS = HERE / "results"
README = HERE / "README.md"
DRAWS = 4000
METHOD = ("interleaved rounds (one untimed call + a timed block per contender per round, order reversed every "
          "other round); ratio_p50: median over rounds of the per-round ratio of block p50s; ratio_p50_ci95: "
          "bootstrap over rounds; ratio_pooled_p50: ratio of the p50s of all samples; control: A/A twin")


# ---------------------------------------------------------------- command line

def add_arguments(ap: argparse.ArgumentParser, *, rounds: int, runs: int, warmup: int = 10,
                  max_seconds: float = 180.0, threads: int = 2) -> None:
    """The options every timing script shares, with that script's defaults."""
    ap.add_argument("--threads", type=int, default=threads)
    ap.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds")
    ap.add_argument("--runs", type=int, default=runs, help="timed calls per contender (fewer if over budget)")
    ap.add_argument("--warmup", type=int, default=warmup, help="untimed calls per contender before round 1")
    ap.add_argument("--max-seconds", type=float, default=max_seconds, help="time budget of the timed phase")
    add_output_arguments(ap)


def add_output_arguments(ap: argparse.ArgumentParser) -> None:
    """--quick and --out, for every script, timing or not."""
    ap.add_argument("--quick", action="store_true",
                    help="a short smoke run: results/quick/NAME.json, README untouched")
    ap.add_argument("--out", help="results file (default: results/NAME.json, or results/quick/NAME.json)")
    ap.add_argument("--table-only", action="store_true",
                    help="measure nothing: print (and put in README.md) the table of the saved results file")


def quick(args: argparse.Namespace, **values: Any) -> argparse.Namespace:
    """With --quick, replace the named options by short-run values."""
    if args.quick:
        for key, value in values.items():
            setattr(args, key, value)
    return args


def out_path(args: argparse.Namespace, name: str) -> Path:
    return Path(args.out) if args.out else (RESULTS / "quick" if args.quick else RESULTS) / f"{name}.json"


# ---------------------------------------------------------------- machine

def machine_info() -> dict[str, Any]:
    """CPU model, logical CPUs, the ISA flags that decide int8/bf16 kernels, platform and load average."""
    cpu, isa = cpu_info()
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "isa": isa,
            "loadavg_1_5_15": [round(v, 2) for v in os.getloadavg()], "platform": platform.platform()}


def versions() -> dict[str, str]:
    """Versions of everything that can change a figure (packages not installed are left out)."""
    return {"python": platform.python_version(), **package_versions(
        ("edgeres", "numpy", "torch", "onnx", "onnxruntime", "openvino", "nncf", "torch-pruning"))}


# ---------------------------------------------------------------- timing

def interleaved(fns: dict[str, Callable[[], Any]], runs: dict[str, int], rounds: int,
                block_warmup: int = 1) -> dict[str, list[float]]:
    """Samples (ms) per contender, timed in `rounds` rounds of `block_warmup` untimed calls plus a timed block."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            block = -(-runs[name] // rounds)  # the same block every round, so rounds split evenly again
            samples[name] += time_calls(fns[name], warmup=block_warmup, runs=block).samples_ms
    return samples


def plan_runs(fns: dict[str, Callable[[], Any]], runs: int, warmup: int, rounds: int, max_seconds: float,
              tied: list[list[str]] | None = None) -> dict[str, int]:
    """Warm every contender up, then give each as many runs (<= `runs`, >= one per round) as fit the budget;
    contenders in one `tied` group (a pair compared with each other) get the same count."""
    estimate = {name: float(np.median(time_calls(fn, warmup=1, runs=max(warmup - 1, 1)).samples_ms)) / 1000
                for name, fn in fns.items()}
    share = max_seconds / len(fns)
    planned = {name: int(min(runs, max(rounds, share / estimate[name] - rounds))) for name in fns}
    for group in tied or []:
        fewest = min(planned[name] for name in group)
        planned.update({name: fewest for name in group})
    return planned


def timed(fns: dict[str, Callable[[], Any]], args: argparse.Namespace, tied: list[list[str]] | None = None,
          block_warmup: int = 1) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Warm up, plan, time interleaved; the samples and the machine's load while timing."""
    runs = plan_runs(fns, args.runs, args.warmup, args.rounds, args.max_seconds, tied)
    with LoadMonitor(args.threads) as load:
        samples = interleaved(fns, runs, args.rounds, block_warmup)
    return samples, load.result or {}


def round_ratios(num: list[float], den: list[float], rounds: int) -> np.ndarray:
    """Per round, the ratio of the two contenders' block p50s. Their blocks ran back to back, so a slow
    spell of the machine lands on both sides of a ratio; pooled p50s mix spells instead."""
    a, b = np.array_split(np.asarray(num), rounds), np.array_split(np.asarray(den), rounds)
    return np.asarray([np.median(x) / np.median(y) for x, y in zip(a, b)])


def compare(num: list[float], den: list[float], rounds: int, draws: int = DRAWS) -> dict[str, Any]:
    """Paired p50 ratio num/den (median over rounds) with a 95% bootstrap interval over rounds, and the pooled ratio."""
    return {**paired(round_ratios(num, den, rounds), draws),
            "ratio_pooled_p50": float(np.median(num) / np.median(den))}


def paired(per_round: np.ndarray | list[float], draws: int = DRAWS) -> dict[str, Any]:
    """Median of per-round ratios with a 95% bootstrap interval over rounds (seed 0: reruns agree)."""
    per_round = np.asarray(per_round, dtype=float)
    boot = np.median(np.random.default_rng(0).choice(per_round, (draws, len(per_round))), axis=1)
    return {"ratio_p50": float(np.median(per_round)),
            "ratio_p50_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}


def control(samples: dict[str, list[float]], original: str, twin: str, rounds: int) -> dict[str, Any]:
    """The A/A control: a contender against its twin, compared as any pair is."""
    return {"what": f"{original} against an identical twin", **compare(samples[original], samples[twin], rounds)}


def distribution(samples: list[float]) -> dict[str, Any]:
    """p50/p90/p99 and the samples themselves (ms, rounded to microseconds)."""
    s = np.asarray(samples)
    return {"runs": int(len(s)), "p50_ms": float(np.percentile(s, 50)), "p90_ms": float(np.percentile(s, 90)),
            "p99_ms": float(np.percentile(s, 99)), "samples_ms": [round(float(v), 3) for v in s]}


# ---------------------------------------------------------------- record

def record(name: str, args: argparse.Namespace, started: float, **fields: Any) -> dict[str, Any]:
    """The common part of every results file: what ran, how, where, with which versions, for how long."""
    settings = {k: v for k, v in vars(args).items() if k not in ("out",)}
    return {"benchmark": name, "quick": bool(args.quick), "method": METHOD, "settings": settings,
            "machine": machine_info(), "versions": versions(), **fields,
            "wall_seconds": round(time.perf_counter() - started, 1)}


def ci(comparison: dict[str, Any], spec: str = ".3f") -> str:
    """'1.234 (1.200-1.250)': a paired ratio and its interval, for tables."""
    lo, hi = comparison["ratio_p50_ci95"]
    return f"{comparison['ratio_p50']:{spec}} ({lo:{spec}}-{hi:{spec}})"


def footer(result: dict[str, Any]) -> str:
    """The machine, versions, load and A/A line printed under every table."""
    m, v, load = result["machine"], result["versions"], result.get("load") or {}
    lines = [f"{m['cpu']}, {m['logical_cpus']} logical CPUs, ISA: {', '.join(m['isa']) or 'none of interest'}; "
             + ", ".join(f"{k} {val}" for k, val in v.items())]
    if load:
        busy = {True: "YES", False: "no", None: "unknown"}[load.get("contended")]
        lines.append(f"load average {load.get('loadavg_before', ['?'])[0]} -> {load.get('loadavg_after', ['?'])[0]}; "
                     f"other processes took {load.get('other_cores')} cores while timing (contended: {busy}); "
                     f"{result['wall_seconds']} s")
    if result.get("control"):
        lines.append(f"A/A control ({result['control']['what']}): paired p50 ratio {ci(result['control'])}, "
                     f"pooled {result['control']['ratio_pooled_p50']:.3f}")
    return "\n".join("    " + line for line in lines)


def save(result: dict[str, Any], path: Path) -> Path:
    """Write a results file (indented JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def publish(name: str, block: str, readme: Path = README) -> None:
    """Put a Markdown block into the README between its markers."""
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n).*?(\n<!-- /results:{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme} has no <!-- results:{name} --> ... <!-- /results:{name} --> block")
    readme.write_text(pattern.sub(lambda m: m.group(1) + block.strip("\n") + m.group(2), text), encoding="utf-8")


def finish(name: str, result: dict[str, Any], args: argparse.Namespace, block: Callable[[dict], str]) -> None:
    """Save the result, print its Markdown block, and publish that to the README for a full run to the
    default results file (not for --quick or --out)."""
    path = save(result, out_path(args, name))
    text = block(result)
    print(text)
    if args.quick or args.out:
        print(f"\nwrote {path}; README.md left alone ({'--quick' if args.quick else '--out'})")
    else:
        publish(name, text)
        print(f"\nwrote {path}; README.md updated")


def rerender(name: str, args: argparse.Namespace, block: Callable[[dict], str]) -> None:
    """--table-only: the README block again from the saved results file, nothing measured."""
    path = out_path(args, name)
    text = block(json.loads(path.read_text()))
    print(text)
    if not (args.quick or args.out):
        publish(name, text)
        print(f"\nREADME.md updated from {path}")
