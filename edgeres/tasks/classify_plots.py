"""A two-class split's ROC and precision-recall curves, with the operating point chosen on val."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeres.plots import plt, save_figure


def plot_binary_curves(curves: dict[str, Any], path: str | Path, split: str) -> Path:
    """ROC (left) and precision-recall (right) of `curves` (classification metrics' `binary` entry)."""
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.5))
    roc.plot(curves["roc"]["fpr"], curves["roc"]["tpr"], linewidth=2, label=f"AUC {curves['roc_auc']:.3f}")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    pr.plot(curves["pr"]["recall"], curves["pr"]["precision"], linewidth=2, label=f"AP {curves['pr_auc']:.3f}")
    prevalence = curves["positives"] / (curves["positives"] + curves["negatives"])
    pr.axhline(prevalence, color="grey", linestyle=":", linewidth=1, label=f"prevalence {prevalence:.2f}")
    point = curves.get("operating_point")
    if point:
        roc.plot([1 - point["specificity"]], [point["sensitivity"]], "o", color="crimson",
                 label=f"threshold {point['threshold']:.2f} (chosen on {point['chosen_on']})")
    roc.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate (1 - specificity)",
            ylabel="true positive rate (sensitivity)", title=f"ROC ({split}; positive: {curves['positive']})")
    pr.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"recall ({curves['positive']})", ylabel="precision",
           title=f"Precision-recall ({split})")
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is roc else "lower left")
    fig.tight_layout()
    return save_figure(fig, path)
