"""What a search leaves for its user: the report (tables and the Pareto plot) and a recipe that reproduces
the chosen artifact with `edgeres run`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edgeres.artifacts import read_json, write_text
from edgeres.optimize.space import BACKENDS, Structure, pareto


def write_outputs(s: Any, result: dict[str, Any]) -> None:
    """report.md and pareto.png in the search's folder, and recipe.yaml when something was chosen."""
    if result["quantized"] or result["trained"]:
        plot_front(result, s.out / "pareto.png")
    if result["chosen"] is not None:
        write_text(s.out / "recipe.yaml", recipe_text(s, result["chosen"]))
    write_text(s.out / "report.md", report_markdown(result))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def _delta(x: float | None, base: float) -> str:
    return "-" if x is None else f"{(x - base) * 100:+.2f}"


def report_markdown(result: dict[str, Any]) -> str:
    c, base, metric = result["config"], result["baseline_val"], result["metric"]
    lines = [f"# edgeres optimize: {Path(result['baseline']).name} on {c['backend']}", "",
             f"Limit: {c['max_drop']:g} points of {metric} against the FP32 baseline (val {_pct(base)})"
             + (f"; target {c['target_ms']:g} ms" if c["target_ms"] else "")
             + f"; budget {c['budget_minutes']:g} min, took {result['minutes']:.1f} min. Latency: engine p50 at "
               "batch 1, timed interleaved with the dense INT8 file (the hand path) in one process"
             + ("" if c["device"] in (None, "host") else f" (estimated on the {c['device']} profile)") + ".", ""]
    chosen = result["chosen"]
    if chosen:
        lines += [f"**Chosen:** {chosen['label']}: {chosen['latency_ms']:.3f} ms, "
                  f"{1 / chosen['ratio_to_dense']:.2f}x faster than the dense INT8 file "
                  f"({result['dense_latency_ms']:.3f} ms); test {metric} {_pct(chosen['test_candidate'])} against "
                  f"{_pct(chosen['test_baseline'])} ({chosen['delta_points']:+.2f} points, 95% CI "
                  f"{chosen['delta_ci_points'][0]:+.2f} to {chosen['delta_ci_points'][1]:+.2f}, n={chosen['n']}). "
                  "Reproduce: `edgeres run recipe.yaml`.", ""]
    else:
        lines += [f"**Nothing met the constraints:** {result['failure']}", ""]
    lines += ["## Candidates on the Pareto front (val accuracy against latency)", "",
              "| candidate | val | vs baseline | p50 ms | speed-up vs dense INT8 | size KB |", "|---|---|---|---|---|---|"]
    for r in pareto(result["quantized"]):
        lines.append(f"| {r['label']} | {_pct(r['val'])} | {_delta(r['val'], base)} | {r['latency_ms']:.3f} | "
                     f"{1 / r['ratio_to_dense']:.2f}x | {r['bytes'] / 1e3:,.0f} |")
    lines += ["", "![Pareto front](pareto.png)", "", "## Every INT8 file", "",
              "| candidate | val | vs baseline | p50 ms | speed-up | size KB |", "|---|---|---|---|---|---|"]
    for r in sorted(result["quantized"], key=lambda r: r["latency_ms"]):
        lines.append(f"| {r['label']} | {_pct(r['val'])} | {_delta(r['val'], base)} | {r['latency_ms']:.3f} | "
                     f"{1 / r['ratio_to_dense']:.2f}x | {r['bytes'] / 1e3:,.0f} |")
    lines += ["", "## Successive halving (FP32 val after fine-tuning)", "",
              "| rung | candidate | val | vs baseline | probe p50 ms | MACs kept | params |", "|---|---|---|---|---|---|---|"]
    for r in result["trained"]:
        lines.append(f"| {r['rung']} | {r['label']} | {_pct(r['val'])} | {_delta(r['val'], base)} | "
                     f"{r['latency_ms']:.3f} | {r['macs_fraction']:.3f} | {r['params']:,} |")
    runs = {"probe": "every fraction and channel multiple, uniform allocation",
            "allocation": "each fraction's fastest uniform structure beside the latency-aware one"}
    for run, what in runs.items():
        rows = [r for r in result.get("all_probes") or result["probe"] if r.get("timed", "probe") == run]
        if not rows:
            continue
        lines += ["", f"## Probe ({what}): INT8, untrained weights, timed in one run with the dense file", "",
                  "| structure | MACs kept | p50 ms | speed-up vs dense INT8 (paired) |", "|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {Structure(**r['structure']).label()} | {r['macs_fraction']:.3f} | "
                         f"{r['latency_ms']:.3f} | {1 / r['ratio_to_dense']:.2f}x |")
    if result["gates"]:
        lines += ["", "## Gate on the test split (`edgeres check` statistics)", "",
                  "| candidate | test | change (95% CI) | passed |", "|---|---|---|---|"]
        for g in result["gates"]:
            lines.append(f"| {g['label']} | {_pct(g['test_candidate'])} | {g['delta_points']:+.2f} "
                         f"({g['delta_ci_points'][0]:+.2f} to {g['delta_ci_points'][1]:+.2f}) | "
                         f"{'yes' if g['passed'] else 'no: ' + '; '.join(g['reasons'])} |")
    return "\n".join(lines) + "\n"


def plot_front(result: dict[str, Any], path: Path) -> None:
    """Val accuracy against time relative to the dense INT8 file: each point's paired ratio from the run that
    timed it beside that file, so points timed minutes apart (probes, finalists) stay comparable."""
    from edgeres.plots import plt, save_figure

    base = result["baseline_val"] * 100
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    trained = [r for r in result["trained"] if r.get("val") is not None]
    if trained:
        ax.scatter([r["ratio_to_dense"] for r in trained], [r["val"] * 100 for r in trained], s=14, c="0.7",
                   label="pruned, FP32 val (structure timed in the probe)")
    files = result["quantized"]
    if files:
        ax.scatter([r["ratio_to_dense"] for r in files], [r["val"] * 100 for r in files], s=22, c="tab:blue",
                   label="INT8 files")
        front = sorted(pareto(files), key=lambda r: r["ratio_to_dense"])
        ax.plot([r["ratio_to_dense"] for r in front], [r["val"] * 100 for r in front], "-", c="tab:blue", lw=1)
    dense = result["dense"]
    if dense.get("val") is not None:
        ax.scatter([1.0], [dense["val"] * 100], marker="s", c="tab:red", label="dense INT8 (hand path)")
    ax.axhline(base, c="k", lw=0.8, ls="--", label="FP32 baseline")
    ax.axhspan(base - result["config"]["max_drop"], base, color="tab:green", alpha=0.1, label="allowed drop")
    if result["chosen"]:
        ax.scatter([result["chosen"]["ratio_to_dense"]], [result["chosen"]["val"] * 100], marker="*", s=160,
                   c="tab:orange", label="chosen", zorder=5)
    values = [r["val"] * 100 for r in [*trained, *files]] + [base]
    ax.set_ylim(max(0.0, min(values) - 1.0), min(100.0, max(values) + 0.5))
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("engine p50 / dense INT8 file's p50 (batch 1, timed side by side)")
    ax.set_ylabel(f"val {result['metric']} (%)")
    ax.set_title(f"optimize on {result['config']['backend']}: accuracy against latency")
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def recipe_text(s: Any, chosen: dict[str, Any]) -> str:
    """A recipe that trains the baseline as it was trained, then prunes, fine-tunes and exports as chosen."""
    train = read_json(s.baseline / "train.json") if (s.baseline / "train.json").exists() else {}
    data = {k: v for k, v in (s.meta.data or {}).items()
            if k in ("source", "img_size", "in_chans", "split", "seed", "augment", "skip_bad") and v is not None}
    cand, q, c = chosen["candidate"], chosen["quantization"], s.config
    recipe = {
        "name": f"optimized-{s.meta.arch}",
        "data": data,
        "train": {k: train[k] for k in ("model", "epochs", "batch_size", "lr", "optimizer", "scheduler", "amp")
                  if k in train} or {"model": s.meta.arch},
        "prune": {**_target(cand["structure"], c, s.roofline), "round_to": cand["structure"]["round_to"],
                  "importance": cand["importance"], "finetune_epochs": cand["epochs"], "distill": cand["distill"],
                  "lr": c.lr, "amp": c.amp},
        "export": {"to": [BACKENDS[c.backend]], "precisions": ["int8"], "dynamic_batch": False,
                   "calib_size": q["calib_size"], "max_drop": q["max_drop"] if c.backend == "openvino" else None,
                   "int8_preset": q["preset"], "int8_per_channel": q["per_channel"], "int8_method": q["method"]},
        "bench": {"batch_sizes": [1], "threads": [c.threads]},
        "check": {"candidate": "fastest-int8", "max_drop": c.max_drop},
        "report": {},
    }
    head = (f"# Written by edgeres optimize: {chosen['label']}\n"
            f"# searched on {s.baseline} ({c.backend}); `edgeres run` this file to rebuild it from the data.\n")
    return head + yaml.safe_dump(recipe, sort_keys=False)


def _target(structure: dict[str, Any], config: Any, roofline: dict[str, float]) -> dict[str, Any]:
    if structure.get("allocation") == "latency":
        return {"latency": structure["amount"], "global_pruning": True,
                "latency_device": "host" if config.measured_here else config.device, "roofline": roofline}
    return {"macs": structure["macs"]}
