"""Training step time: edgeres's `train_epoch` against a plain PyTorch loop, same model, same batches.

Both loops run in one process, interleaved over several rounds, so machine noise hits both alike;
the figure is the ratio of medians. Usage: python benchmarks/train_step.py [--model se_resnet18]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from edgeres.models import create
from edgeres.train.loop import train_epoch


def plain_loop(model, batches, optimizer, loss_fn):
    model.train()
    for images, targets in batches:
        loss = loss_fn(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="se_resnet18")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--in-chans", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create(args.model, num_classes=10, in_chans=args.in_chans)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ce = nn.CrossEntropyLoss()
    batches = [(torch.randn(args.batch_size, args.in_chans, args.img_size, args.img_size),
                torch.randint(0, 10, (args.batch_size,))) for _ in range(args.steps)]
    runs = {
        "plain": lambda: plain_loop(model, batches, optimizer, ce),
        "edgeres": lambda: train_epoch(model, batches, optimizer, lambda lg, t, x: ce(lg, t)),
    }
    for fn in runs.values():  # warm-up both
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            t0 = time.perf_counter()
            runs[name]()
            times[name].append((time.perf_counter() - t0) / args.steps * 1000)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "train_step", "model": args.model, "input": [args.batch_size, args.in_chans, args.img_size,
                                                                   args.img_size],
        "threads": args.threads, "steps_per_round": args.steps, "rounds": args.rounds,
        "ms_per_step_median": med, "ms_per_step_samples": times,
        "overhead": med["edgeres"] / med["plain"] - 1,
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"| loop | ms/step (median of {args.rounds}) |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} |")
    print(f"edgeres overhead: {result['overhead'] * 100:+.2f}%  ({args.model}, batch {args.batch_size}, "
          f"{args.img_size}x{args.img_size}, {args.threads} threads)")


if __name__ == "__main__":
    main()
