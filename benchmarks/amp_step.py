"""Training step time with `--amp` (bf16 autocast) against fp32, through edgeres's own `train_epoch`.

Both contenders own an identical copy of the model and its optimizer and train on the same fixed batches;
one call is a pass over `--steps` batches, reported per step. Timed with benchmarks/method.py (interleaved
rounds, paired per-round ratio with a bootstrap interval); the A/A control is a second fp32 copy. On a CPU
without native bf16 (AVX512-BF16 or AMX) `--amp` is refused by edgeres, and so is this script.

Usage: python benchmarks/amp_step.py [--model resnet18 --img-size 64 --batch-size 32] [--quick] [--table-only]
"""
from __future__ import annotations

import argparse
import copy
import time
from typing import Any, Callable

import torch
from torch import nn

import method
from edgeres.models import create
from edgeres.train.device import Execution, amp_dtype
from edgeres.train.loop import train_epoch
from train_step import fixed_batches, per_step_ms

NAME = "amp_step"


def contenders(model: nn.Module, batches, ce: nn.Module, dtype: torch.dtype) -> dict[str, Callable[[], Any]]:
    """fp32, amp and an fp32 twin, each on its own copy of the model with a fresh AdamW."""
    def loop(execution: Execution) -> Callable[[], Any]:
        m = copy.deepcopy(model)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        return lambda: train_epoch(m, batches, opt, lambda lg, t, x: ce(lg, t), execution=execution)

    cpu = torch.device("cpu")
    return {"fp32": loop(Execution(cpu)), "amp": loop(Execution(cpu, dtype)), "fp32 (twin)": loop(Execution(cpu))}


def markdown(result: dict[str, Any]) -> str:
    """The README block of a saved result."""
    lines = [f"{result['model']}, input {result['input']}, AdamW; amp dtype {result['amp_dtype']}", "",
             "| step | ms/step p50 | p90 | steps timed |", "|---|---|---|---|"]
    for name, lat in result["ms_per_step"].items():
        lines.append(f"| {name} | {lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | {lat['runs'] * result['steps_per_call']} |")
    ratio, ctl = result["amp_vs_fp32"], result["control"]
    lines += ["", f"amp / fp32 ms per step, paired by round: {method.ci(ratio)}; "
                  f"A/A control (fp32 twin / fp32): {method.ci(ctl)}"]
    return "\n".join(lines) + "\n\n" + method.footer(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--in-chans", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="training steps per timed call")
    method.add_arguments(ap, rounds=12, runs=12, warmup=2, max_seconds=300.0)
    args = method.quick(ap.parse_args(), model="test_resnet", batch_size=8, steps=1, rounds=3, runs=3,
                        warmup=1, max_seconds=10.0)
    if args.table_only:
        return method.rerender(NAME, args, markdown)
    dtype = amp_dtype(torch.device("cpu"), True)  # refuses a CPU without native bf16, as `--amp` does
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = create(args.model, num_classes=10, in_chans=args.in_chans)
    batches = fixed_batches(args)
    fns = contenders(model, batches, nn.CrossEntropyLoss(), dtype)
    samples, load = method.timed(fns, args, tied=[list(fns)])
    per_step = per_step_ms(samples, args.steps)
    result = method.record(
        NAME, args, start, model=args.model, input=[args.batch_size, args.in_chans, args.img_size, args.img_size],
        amp_dtype=str(dtype).replace("torch.", ""), steps_per_call=args.steps, load=load,
        ms_per_step={name: method.distribution(s) for name, s in per_step.items()},
        amp_vs_fp32=method.compare(per_step["amp"], per_step["fp32"], args.rounds),
        control=method.control(per_step, "fp32", "fp32 (twin)", args.rounds))
    method.finish(NAME, result, args, markdown)


if __name__ == "__main__":
    main()
