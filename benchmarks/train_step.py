"""Training step time: edgeres's `train_epoch` against a plain PyTorch loop, same model, same batches.

Each contender owns an identical copy of the model and its optimizer and trains on the same fixed
batches; one call is a pass over `--steps` batches, reported per step. Timed with benchmarks/method.py
(interleaved rounds, paired per-round ratio with a bootstrap interval); the A/A control is a second
plain loop on its own copy.

Usage: python benchmarks/train_step.py [--model se_resnet18] [--rounds 15 --runs 15] [--quick] [--table-only]
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
from edgeres.train.loop import train_epoch

NAME = "train_step"


def plain_loop(model: nn.Module, batches, optimizer: torch.optim.Optimizer, loss_fn: nn.Module) -> None:
    """forward, loss, zero_grad, backward, step: what a hand-written PyTorch loop does."""
    model.train()
    for images, targets in batches:
        loss = loss_fn(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def fixed_batches(args: argparse.Namespace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`--steps` random batches (10 classes) every contender trains on, so they do the same work."""
    return [(torch.randn(args.batch_size, args.in_chans, args.img_size, args.img_size),
             torch.randint(0, 10, (args.batch_size,))) for _ in range(args.steps)]


def per_step_ms(samples: dict[str, list[float]], steps: int) -> dict[str, list[float]]:
    """Per-call samples (one call = `steps` steps) as milliseconds per step."""
    return {name: [ms / steps for ms in s] for name, s in samples.items()}


def contenders(model: nn.Module, batches, ce: nn.Module) -> dict[str, Callable[[], Any]]:
    """Each loop on its own copy of the model and a fresh AdamW over it."""
    def own(m: nn.Module) -> tuple[nn.Module, torch.optim.Optimizer]:
        m = copy.deepcopy(m)
        return m, torch.optim.AdamW(m.parameters(), lr=1e-3)

    (pm, po), (em, eo), (tm, to) = own(model), own(model), own(model)
    return {"plain": lambda: plain_loop(pm, batches, po, ce),
            "edgeres": lambda: train_epoch(em, batches, eo, lambda lg, t, x: ce(lg, t)),
            "plain (twin)": lambda: plain_loop(tm, batches, to, ce)}


def markdown(result: dict[str, Any]) -> str:
    """The README block of a saved result."""
    lines = ["| loop | ms/step p50 | p90 | steps timed |", "|---|---|---|---|"]
    for name, lat in result["ms_per_step"].items():
        lines.append(f"| {name} | {lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | {lat['runs'] * result['steps_per_call']} |")
    ratio = result["edgeres_vs_plain"]
    lines += ["", f"edgeres / plain ms per step, paired by round: {method.ci(ratio)} "
                  f"(pooled {ratio['ratio_pooled_p50']:.3f})"]
    return "\n".join(lines) + "\n\n" + method.footer(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="se_resnet18")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--in-chans", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="training steps per timed call")
    method.add_arguments(ap, rounds=15, runs=15, warmup=2, max_seconds=300.0)
    args = method.quick(ap.parse_args(), model="test_se_resnet", batch_size=8, steps=2, rounds=3, runs=3,
                        warmup=1, max_seconds=10.0)
    if args.table_only:
        return method.rerender(NAME, args, markdown)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = create(args.model, num_classes=10, in_chans=args.in_chans)
    batches = fixed_batches(args)
    fns = contenders(model, batches, nn.CrossEntropyLoss())
    samples, load = method.timed(fns, args, tied=[list(fns)])
    per_step = per_step_ms(samples, args.steps)
    result = method.record(
        NAME, args, start, input=[args.batch_size, args.in_chans, args.img_size, args.img_size],
        optimizer="AdamW lr 1e-3", steps_per_call=args.steps, load=load,
        ms_per_step={name: method.distribution(s) for name, s in per_step.items()},
        edgeres_vs_plain=method.compare(per_step["edgeres"], per_step["plain"], args.rounds),
        control=method.control(per_step, "plain", "plain (twin)", args.rounds))
    method.finish(NAME, result, args, markdown)


if __name__ == "__main__":
    main()
