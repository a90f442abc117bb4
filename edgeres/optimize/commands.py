"""`edgeres optimize`, registered on the main app: parses, calls `edgeres.optimize.run.optimize`, prints."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize_cmd)


def optimize_cmd(
    run: Path = typer.Argument(..., help="The trained FP32 checkpoint (an `edgeres train` run directory)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the search: candidates, report, the chosen "
                                                      "artifact and its recipe. Run again to resume."),
    max_drop: float = typer.Option(1.0, help="Largest accuracy drop against the baseline, in points "
                                             "(val during the search, test at the final gate)."),
    target_ms: Optional[float] = typer.Option(None, help="Engine p50 (batch 1) the artifact must meet; then the "
                                                         "most accurate candidate within it wins."),
    backend: str = typer.Option("openvino", help="openvino, onnxruntime or tensorrt (tensorrt needs --device)."),
    device: Optional[str] = typer.Option(None, help="A device profile (see `edgeres devices`): latency is its "
                                                    "roofline estimate instead of a measurement here."),
    budget_minutes: float = typer.Option(20.0, help="Time budget of the whole search, in minutes."),
    macs: str = typer.Option("0.4,0.25,0.15,0.1", help="Kept-MACs fractions to try."),
    round_to: str = typer.Option("8,16,32", help="Channel multiples to probe (the fastest per fraction is kept)."),
    importance: str = typer.Option("l2,taylor", help="Channel importance criteria to try (l1, l2, bn, taylor)."),
    distill: str = typer.Option("on", help="Distillation from the baseline: on, off or both."),
    allocation: str = typer.Option("uniform,latency", help="How channels are shared over layers: uniform (same "
                                                           "share everywhere) and/or latency (global, by importance "
                                                           "per unit of the device roofline's latency)."),
    first_epochs: int = typer.Option(3, help="Fine-tuning epochs of the first rung."),
    eta: int = typer.Option(2, help="Each rung keeps 1/eta of the candidates and trains eta times longer."),
    rungs: int = typer.Option(3, help="Rungs of successive halving."),
    finalists: int = typer.Option(2, help="Candidates tried with every INT8 choice."),
    threads: int = typer.Option(2, help="Inference threads when timing."),
) -> None:
    """Search pruning, distillation and INT8 choices for the fastest artifact within --max-drop; exit 1 if none."""
    from edgeres.errors import UserInputError
    from edgeres.optimize.run import NotFound, OptimizeConfig, optimize
    from edgeres.optimize.space import pareto
    from edgeres.ui import console, csv_values, fail, float_values, int_values, print_table

    choices = {"on": (True,), "off": (False,), "both": (True, False)}
    if distill not in choices:
        raise UserInputError(f"--distill must be on, off or both, got {distill!r}")
    config = OptimizeConfig(max_drop=max_drop, target_ms=target_ms, backend=backend, device=device,
                            budget_minutes=budget_minutes, macs=float_values(macs, "--macs"),
                            round_to=int_values(round_to, "--round-to"),
                            importances=csv_values(importance, "--importance"),
                            distill=choices[distill],
                            allocations=csv_values(allocation, "--allocation"),
                            first_epochs=first_epochs, eta=eta, rungs=rungs,
                            finalists=finalists, threads=threads)
    try:
        result = optimize(run, out, config, progress=lambda m: console.print(m, highlight=False))
    except NotFound as e:
        _table(e.result, pareto, print_table)
        fail(str(e))
        console.print(f"report: {out / 'report.md'}")
        raise typer.Exit(1)
    _table(result, pareto, print_table)
    chosen = result["chosen"]
    console.print(f"chosen: {chosen['label']}: {chosen['latency_ms']:.3f} ms "
                  f"({1 / chosen['ratio_to_dense']:.2f}x the dense INT8 file), test {chosen['delta_points']:+.2f} points")
    console.print(f"published: {result['published']['file']}; recipe: {out / 'recipe.yaml'}; report: "
                  f"{out / 'report.md'}")


def _table(result: dict, pareto, print_table) -> None:
    from edgeres.optimize.space import Structure

    if not result["quantized"]:  # stopped before training (an unreachable --target-ms): the closest structures
        rows = [(Structure(**r["structure"]).label(), f"{r['macs_fraction']:.3f}", f"{r['latency_ms']:.3f}",
                 f"{1 / r['ratio_to_dense']:.2f}x") for r in sorted(result["probe"], key=lambda r: r["latency_ms"])]
        print_table("closest: the fastest pruned structures (INT8, untrained)",
                    ["structure", "MACs kept", "p50 ms", "vs dense INT8"], rows[:5])
        return
    base = result["baseline_val"]
    rows = [(r["label"], f"{r['val'] * 100:.2f}", f"{(r['val'] - base) * 100:+.2f}", f"{r['latency_ms']:.3f}",
             f"{1 / r['ratio_to_dense']:.2f}x") for r in pareto(result["quantized"])]
    print_table("Pareto front (val)", ["candidate", f"val {result['metric']} %", "points", "p50 ms",
                                       "vs dense INT8"], rows)
