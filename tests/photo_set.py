"""A small YOLO-layout photo set built from photos that ship inside installed packages (scikit-learn's
china.jpg and flower.jpg, matplotlib's grace_hopper.jpg): nothing drawn by the project, nothing downloaded.

Each scene is a crop of one photo with patches of the others pasted at random places and scales; a patch's
rectangle is its box, its source photo its class. Scenes are JPEGs of varied sizes and aspect ratios, as a
user's would be.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

#: class name -> (photo, the object's box in that photo's pixels)
OBJECTS = {
    "pagoda": ("china.jpg", (60, 24, 370, 380)),
    "flower": ("flower.jpg", (170, 80, 450, 356)),
    "portrait": ("grace_hopper.jpg", (150, 60, 370, 390)),
}


def _photo(name: str) -> Image.Image:
    if name == "grace_hopper.jpg":
        import matplotlib.cbook

        return Image.open(matplotlib.cbook.get_sample_data(name)).convert("RGB")
    import sklearn.datasets

    return Image.open(os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", name)).convert("RGB")


def build_photo_set(root: Path, per_split: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write ROOT/images/<split>/*.jpg, ROOT/labels/<split>/*.txt and ROOT/data.yaml; returns the yaml."""
    per_split = per_split or {"train": 24, "val": 8}
    rng = np.random.default_rng(seed)
    photos = {name: _photo(photo) for name, (photo, _) in OBJECTS.items()}
    patches = [photos[name].crop(box) for name, (_, box) in OBJECTS.items()]
    names = list(OBJECTS)
    for split, count in per_split.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            w, h = int(rng.integers(240, 400)), int(rng.integers(200, 320))
            background = photos[names[int(rng.integers(len(names)))]]
            x0 = int(rng.integers(0, background.width - 200))
            y0 = int(rng.integers(0, background.height - 200))
            scene = background.crop((x0, y0, x0 + 200, y0 + 200)).resize((w, h), Image.BILINEAR)
            lines, placed = [], []
            for _ in range(int(rng.integers(1, 3))):
                c = int(rng.integers(len(names)))
                side = int(rng.integers(min(w, h) // 4, min(w, h) // 2))
                patch = patches[c].resize((side, int(side * patches[c].height / patches[c].width)), Image.BILINEAR)
                px, py = int(rng.integers(0, w - patch.width)), int(rng.integers(0, max(1, h - patch.height)))
                x1, y1 = px, py
                x2, y2 = min(px + patch.width, w), min(py + patch.height, h)
                if any(x1 < b[2] and b[0] < x2 and y1 < b[3] and b[1] < y2 for b in placed):
                    continue  # no object hides another: every box shows what it labels
                placed.append((x1, y1, x2, y2))
                scene.paste(patch, (px, py))
                lines.append(f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} "
                             f"{(y2 - y1) / h:.6f}")
            scene.save(root / "images" / split / f"scene_{k:03d}.jpg", quality=90)
            (root / "labels" / split / f"scene_{k:03d}.txt").write_text("\n".join(lines) + "\n")
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\n"
                         "names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
    return yaml_path
