"""`edgeres explain`, registered on the main app: parses, calls `explain_images`, prints a table.

Heavy imports (torch, captum) stay inside the command, so registering it costs the CLI nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_cmd)


def explain_cmd(
    artifact: Path = typer.Argument(..., help="A checkpoint directory or an exported .onnx/.xml file."),
    images: List[Path] = typer.Argument(..., help="Image files or folders of images (searched at any depth)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the overlays, raw maps (.npy) and JSON; "
                                                      "created if missing, existing files beside ours are kept."),
    method: str = typer.Option("auto", help="gradcam (checkpoints: gradients at a late conv stage), occlusion "
                                            "(any artifact: score drop under a sliding patch) or auto (gradcam "
                                            "for a checkpoint, occlusion for an exported file)."),
    target: Optional[str] = typer.Option(None, help="Class to explain, by name or index (default: the predicted "
                                                    "class; a detector: the top detection)."),
    window: Optional[int] = typer.Option(None, help="Occlusion patch side in input pixels (default: 1/8 of the "
                                                    "input)."),
    stride: Optional[int] = typer.Option(None, help="Occlusion step in input pixels (default: half the window)."),
    layer: Optional[str] = typer.Option(None, help="Grad-CAM layer, one of the model's feature stages (default: "
                                                   "the deepest at least 4 cells a side)."),
    batch_size: int = typer.Option(64, help="Occluded copies per inference call."),
) -> None:
    """Saliency maps of a model on your images: where it looks for the class it predicts."""
    from edgeres.explain.explainer import ExplainConfig, explain_images, image_files
    from edgeres.ui import console, print_table, progress_bar

    config = ExplainConfig(method=method, target=target, window=window, stride=stride, layer=layer,
                           batch_size=batch_size)
    with progress_bar("explaining", total=len(image_files(images))) as advance:
        doc = explain_images(artifact, images, out, config, progress=advance)
    how = (f"layer {doc['layer']}" if doc["method"] == "gradcam"
           else f"window {doc['window']} px, stride {doc['stride']} px")
    rows = [(r["file"], r["class"], r["score"], str(Path(out) / r["overlay"])) for r in doc["images"]]
    print_table(f"{doc['method']} of {artifact} ({doc['backend']}; {how}; score: {doc['score_kind']})",
                ["image", "target", "score", "overlay"], rows)
    record = Path(out) / f"explanations.{doc['method']}.json"
    console.print(f"wrote {record} and a raw map (.npy) per image")
