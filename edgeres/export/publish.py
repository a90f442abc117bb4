"""Publishing an export set all-or-nothing: it is built in a staging folder beside `out` and swapped in by renames
(a reader never sees the new model's .xml beside the old one's .bin, or files under an export.json that describes
others); what a killed export left is undone on the next run; the user's own files in `out` are carried over.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

from edgeres.artifacts import EXPORT_RECORD, leftover_of_dead_writer, read_json, remove_leftovers, sha256_file

log = logging.getLogger("edgeres")

# Names an export writes into `out`: an older entry by one of these names is replaced by the new set.
# Anything else found in `out` is the user's and is carried into the new set untouched.
OURS = re.compile(r"(model\.(fp32|fp16|int8)\.(onnx|xml|bin)|tensorrt-(fp32|fp16|int8)|failed|export\.json|\.staging)")


def prefix(out: Path, kind: str) -> str:
    return f".{out.name}.{kind}."


def staging_root(out: Path) -> Path:
    """A fresh staging folder beside `out` (same file system, so publishing is a rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent / f"{prefix(out, 'staging')}{os.getpid()}-{secrets.token_hex(4)}"


def recover(out: Path) -> None:
    """Undo what a killed export left: put back a set moved aside but never replaced, drop staging folders."""
    moved = sorted(p for p in out.parent.glob(prefix(out, "old") + "*")
                   if leftover_of_dead_writer(p, prefix(out, "old")))
    if moved and not out.exists():
        moved[-1].rename(out)
        log.warning("restored %s from %s, left by an interrupted export", out, moved[-1])
    for kind in ("old", "staging"):
        for p in remove_leftovers(out.parent, prefix(out, kind)):
            log.info("removed %s, left by an interrupted export", p)


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)  # a second name for the same bytes: nothing to lose if killed
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def carry_over(out: Path, new_set: Path) -> None:
    """Give the new set every entry of `out` that is not an export's own (the user's notes, eval folders)."""
    if not out.is_dir():
        return
    for p in out.iterdir():
        if OURS.fullmatch(p.name) or (new_set / p.name).exists():
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.copytree(p, new_set / p.name, symlinks=True, copy_function=link_or_copy)
        else:
            link_or_copy(str(p), str(new_set / p.name))


def swap_in(new_set: Path, out: Path) -> None:
    """Replace `out` by `new_set`. A kill between the renames leaves the old set aside, restored next run."""
    old = out.parent / f"{prefix(out, 'old')}{os.getpid()}-{secrets.token_hex(4)}"
    if out.exists():
        out.rename(old)
    new_set.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def add_to_set(staged: list[Path], new_set: Path, folder: str = ".") -> dict[str, str]:
    """Move staged files into `folder` of the new set; returns {path in the set: sha256} of every file."""
    (new_set / folder).mkdir(parents=True, exist_ok=True)
    hashes = {}
    for p in staged:
        dest = new_set / folder / p.name
        p.replace(dest)
        files = sorted(f for f in dest.rglob("*") if f.is_file()) if dest.is_dir() else [dest]
        hashes.update({f.relative_to(new_set).as_posix(): sha256_file(f) for f in files})
    return hashes


def warn_dropped(out: Path, document: dict[str, Any]) -> None:
    """Warn when the set about to replace `out` leaves out files of the previous export's other formats.

    The folder holds one export and its export.json describes every file in it, so a narrower rerun replaces
    the whole set; the user is told which files go and how to keep them."""
    previous = out / EXPORT_RECORD
    if not previous.is_file():
        return
    try:
        old = read_json(previous)
    except (OSError, ValueError):  # a damaged record: nothing reliable to compare against
        return
    runs = [*document["artifacts"], *document["failed"]]
    asked = {(e["format"], e["precision"]) for e in runs}
    kept = {n for e in runs for n in entry_names(e)}
    dropped: dict[str, None] = {}
    formats, precisions = {e["format"]: None for e in runs}, {e["precision"]: None for e in runs}
    for entry in [*old.get("artifacts", []), *old.get("failed", [])]:
        if not isinstance(entry, dict) or (entry.get("format"), entry.get("precision")) in asked:
            continue
        gone = [n for n in entry_names(entry) if n not in kept and (out / n).exists()]
        if gone:
            dropped.update(dict.fromkeys(gone))
            formats[entry["format"]] = precisions[entry["precision"]] = None
    if dropped:
        log.warning("replaced the previous export in %s: %s %s not part of this one (export with --to %s "
                    "--precision %s to keep them)", out, ", ".join(dropped), "is" if len(dropped) == 1 else "are",
                    ",".join(formats), ",".join(precisions))


def entry_names(entry: dict[str, Any]) -> list[str]:
    """What an export.json entry put in its folder: files, a TensorRT bundle's folder, failed/ files."""
    names = list(entry.get("files") or [])
    if not names and entry.get("file"):  # export.json written before per-file records
        file = Path(entry["file"])
        names = [f"failed/{file.name}" if file.parent.name == "failed" else file.name]
    top = (n.split("/", 2)[:2] if n.startswith("failed/") else n.split("/")[:1] for n in names)
    return list(dict.fromkeys("/".join(parts) for parts in top))


_DROP = object()


def published(value: Any, moved: dict[Path, Path], staging_root: Path) -> Any:
    """`value` with every path into the staging folder made the path its file was published at; a path to an
    intermediate that was never published (it is deleted with the staging folder) is dropped."""
    if isinstance(value, dict):
        kept = {k: published(v, moved, staging_root) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not _DROP}
    if isinstance(value, list):
        return [v for v in (published(v, moved, staging_root) for v in value) if v is not _DROP]
    if not isinstance(value, str) or not Path(value).is_relative_to(staging_root):
        return value
    for staged, final in moved.items():
        if Path(value).is_relative_to(staged):
            return str(final / Path(value).relative_to(staged))
    return _DROP
