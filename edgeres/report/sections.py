"""Report sections beyond the benchmark: the baseline's own test evaluation (per-class figures, confusion
matrix, ROC/PR curves) and explanations (a Grad-CAM panel and each artifact's explanation drift).

Their figures come from files other stages wrote; a picture is copied into the report's plots/ folder so the
Markdown links stay inside the report and the HTML embeds it.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgeres.artifacts import atomic_path
from edgeres.report.blocks import Block, Heading, Image, Para, Table


def _picture(source: str | Path, out_dir: Path, name: str, caption: str) -> Image | None:
    source = Path(source)
    if not source.is_file():
        return None
    target = out_dir / "plots" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return Image(caption, target, target.relative_to(out_dir).as_posix())


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def evaluation_blocks(evaluation: dict[str, Any], out_dir: Path, artifacts: list[dict[str, Any]] = ()) -> list[Block]:
    """The baseline's metrics on its test split, as the training run measured them (its metrics.json)."""
    from edgeres.tasks import get_task

    m = evaluation["metrics"]
    task = get_task(evaluation.get("task") or "classification")
    figures = ", ".join(f"{name} {value:.4f}" for name, value in task.table_columns(m) if value is not None)
    blocks: list[Block] = [Heading(2, f"{evaluation['name']} on the test split"),
                           Para(f"{m.get('n', '–')} test images: {figures}.")]
    binary = m.get("binary")
    if binary:
        text = (f"Two classes, positive: {binary['positive']}. ROC AUC {binary['roc_auc']:.3f}, precision-recall AUC "
                f"(average precision) {binary['pr_auc']:.3f}.")
        point = binary.get("operating_point")
        if point:
            text += (f" At the threshold chosen on val ({point['threshold']:.3f} on the positive class's probability, "
                     f"Youden's J): sensitivity {100 * point['sensitivity']:.1f}%, specificity "
                     f"{100 * point['specificity']:.1f}%, accuracy {100 * point['accuracy']:.1f}%.")
        blocks.append(Para(text))
    per_class = m.get("per_class") or {}
    if isinstance(per_class, list):  # a detector's: one entry per class, named inside
        per_class = {entry.get("name", str(i)): entry for i, entry in enumerate(per_class)}
    keys = [k for k in ("precision", "recall", "f1", "ap50", "ap") if any(k in v for v in per_class.values())]
    if per_class and keys:
        rows = [[name, *[_pct(v.get(k)) for k in keys], str(v.get("support", "–"))] for name, v in per_class.items()]
        blocks.append(Table("per-class", ["class", *[f"{k} %" for k in keys], "support"], rows, 1))
    reference = evaluation.get("reference")
    if reference:
        blocks.append(Table("scale", ["model", "params", "FP32 file MB (params x 4 bytes)", "measured here"],
                            _scale_rows(reference, artifacts), 1))
    for i, plot in enumerate(evaluation.get("plots") or []):
        picture = _picture(plot, out_dir, f"evaluation_{i}_{Path(plot).name}", f"{evaluation['name']}: {Path(plot).stem}")
        if picture:
            blocks.append(picture)
    return blocks


def _scale_rows(reference: dict[str, Any], artifacts: list[dict[str, Any]]) -> list[list[str]]:
    """The reference model's parameter count beside each measured artifact's: parameters, file size, mAP/accuracy
    and latency are measured for ours; the reference's are counted from its published architecture only."""
    rows = [[reference["name"], f"{reference['params']:,}", f"{4 * reference['params'] / 1e6:.1f}",
             "no (no weights or data for it here)"]]
    for a in artifacts:
        if a.get("params"):
            share = 100 * a["params"] / reference["params"]
            size = a.get("size_bytes")
            rows.append([a["name"], f"{a['params']:,} ({share:.1f}%)",
                         "–" if size is None else f"{size / 1e6:.1f} (file)", "yes (see Summary)"])
    return rows


def explanation_blocks(explanations: dict[str, Any], out_dir: Path) -> list[Block]:
    """The Grad-CAM panel of the baseline, and per artifact the agreement of its occlusion maps with the baseline's."""
    blocks: list[Block] = [Heading(2, "Explanations")]
    panel = explanations.get("panel")
    if panel:
        picture = _picture(panel, out_dir, "gradcam_panel.png",
                           f"Grad-CAM of {explanations.get('baseline', 'the baseline')} on test images "
                           "(the predicted class; true class in each title)")
        if picture:
            blocks.append(picture)
    drift = explanations.get("drift") or []
    if drift:
        first = drift[0]
        blocks.append(Para(
            f"Explanation drift: occlusion maps (window {first['window']} px, stride {first['stride']} px) of each "
            f"artifact against the baseline's, on the same {len(first['images'])} test images, the baseline's "
            "predicted class as the target of both. Rank correlation 1 and top-20% IoU 1 mean the same evidence; a "
            "model with random weights scores near 0. Drift is 1 - the mean rank correlation "
            "(edgeres check --max-explanation-drift limits it)."))
        rows = [[d["name"], f"{1 - d['rank_correlation_mean']:.3f}", f"{d['rank_correlation_mean']:.3f}",
                 f"{d['rank_correlation_min']:.3f}", f"{d['top_iou_mean']:.3f}", f"{d['top_iou_min']:.3f}"]
                for d in drift]
        blocks.append(Table("explanation-drift", ["artifact", "drift", "rank corr. mean", "rank corr. min",
                                                  "top-20% IoU mean", "top-20% IoU min"], rows, 1))
    return blocks
