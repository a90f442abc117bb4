"""A fresh virtual environment that can import only the named distributions (and what they require): what a
deploy bundle finds on a device. Built offline in a second: the packages are this environment's own, linked
into a folder the new environment's site-packages points at, so `import torch` or `import edgeres` fails there.
"""
from __future__ import annotations

import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _closure(names: tuple[str, ...]) -> list[metadata.Distribution]:
    """The distributions and, recursively, their unconditional requirements."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def lean_python(root: Path, distributions: tuple[str, ...]) -> Path:
    """The python of a new venv at `root` that imports only `distributions` (plus the standard library)."""
    venv.create(root, with_pip=False, symlinks=True)
    linked = root / "linked"
    linked.mkdir()
    for dist in _closure(distributions):
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {".."}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (linked / top).exists() and not top.endswith(".pth"):
                (linked / top).symlink_to(source)
    python = root / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "lean.pth").write_text(str(linked) + "\n")
    return python


def importable(python: Path, module: str) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0


if __name__ == "__main__":  # a quick look: python tests/lean_env.py DIR numpy pillow onnxruntime
    py = lean_python(Path(sys.argv[1]), tuple(sys.argv[2:]))
    print(py, {m: importable(py, m) for m in ("numpy", "PIL", "onnxruntime", "openvino", "torch", "edgeres")})
