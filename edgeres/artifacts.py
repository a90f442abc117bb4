"""Run directories: atomic writes, checksums and the manifest."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any, Callable, Iterator

from edgeres.errors import UserInputError


TMP_SUFFIX = ".tmp"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _written_by_dead_process(tag: str) -> bool:
    """Whether `tag` (`<pid>-<token>`, as edgeres names work in progress) names a process that is gone."""
    pid = tag.split("-", 1)[0]
    return pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid))


def leftover_of_dead_writer(path: Path, prefix: str) -> bool:
    """Whether `path` is named `<prefix><pid>-...` by a process that no longer runs (killed mid-write)."""
    return path.name.startswith(prefix) and _written_by_dead_process(path.name[len(prefix):])


def remove_leftovers(directory: Path, prefix: str) -> list[Path]:
    """Remove `directory`'s files and folders named `<prefix><pid>-...` whose writer was killed."""
    removed = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        if leftover_of_dead_writer(p, prefix):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


_swept: set[Path] = set()  # folders whose dead writers' temporary files this process has removed


def _sweep_tmp(directory: Path) -> None:
    """Once per folder and process: remove `.<name>.<pid>-<token>.tmp` files whose writer was killed."""
    if directory in _swept:
        return
    _swept.add(directory)
    for p in directory.glob(f".*{TMP_SUFFIX}"):
        tag = p.name[:-len(TMP_SUFFIX)].rsplit(".", 1)[-1]
        if p.is_file() and _written_by_dead_process(tag):
            p.unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_dir(parent: str | Path, name: str) -> Iterator[Path]:
    """A temporary folder in `parent` (the output's file system, so results move out of it by rename).

    Its name carries the writer's pid, so the next scratch folder of the same `name` removes what a killed
    writer left; removed when the block ends, however it ends.
    """
    parent = Path(parent)
    prefix = f".{name}.scratch."
    parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(parent, prefix)
    path = parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary file is created like open() would (0666 less the umask), not mkstemp's 0600, so every
    output has the same permissions however it was written. Its name carries the writer's pid: the next
    write into the same folder removes what a killed writer left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_tmp(path.parent)
    tmp_path = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}"
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = stat.S_IMODE(tmp_path.stat().st_mode)
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)  # some writers (safetensors) recreate the file as 0600
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically: readers see the old file or the whole new one, never half."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically, indented, with a trailing newline."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_versions(names: tuple[str, ...] = ("edgeres", "torch", "torchvision", "numpy", "onnx", "onnxruntime",
                                               "onnxslim", "openvino", "nncf")) -> dict[str, str]:
    """Installed versions of `names`; packages that are not installed are left out."""
    from importlib import metadata

    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def read_user_document(path: str | Path, parse: Callable[[str], Any], errors: tuple[type[Exception], ...],
                       expected: str) -> Any:
    """Parse a file the user named; a missing, binary or malformed one is a UserInputError saying which and why.

    The message says where the file is wrong and what was expected, never what it holds: the file may be
    anything (`edgeres run /etc/shadow`), and error output ends up in CI logs.
    """
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{path} is a folder; expected {expected}")
    if not path.is_file():
        raise UserInputError(f"{path} does not exist; expected {expected}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserInputError(f"{path} is not UTF-8 text (undecodable byte at offset {e.start}: a binary "
                             f"file?); expected {expected}") from None
    except OSError as e:
        raise UserInputError(f"{path} cannot be read ({e.strerror}); expected {expected}") from None
    try:
        return parse(text)
    except errors as e:
        raise UserInputError(f"{path} is not valid: {_parse_problem(e)}; expected {expected}") from None
    except RecursionError:
        raise UserInputError(f"{path} nests too deeply to parse; expected {expected}") from None


def _parse_problem(e: Exception) -> str:
    """Where a JSON or YAML parser stopped and why, without the text it quotes from the file."""
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at line {e.lineno}, column {e.colno}"
    mark = getattr(e, "problem_mark", None)  # yaml.MarkedYAMLError, duck-typed to keep yaml out of this module
    # PyYAML quotes the offending characters ('x') but names token kinds in angle brackets ('<scalar>').
    problem = re.sub(r"'(?!<)[^']*'", "…", str(getattr(e, "problem", None) or type(e).__name__))
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    if getattr(e, "position", None) is not None:  # yaml.reader.ReaderError: a character YAML does not allow
        return f"a character YAML does not allow at offset {e.position}"
    return problem


EXPORT_RECORD = "export.json"


def read_record(path: str | Path, remedy: str) -> Any:
    """Read a JSON record edgeres wrote (a manifest, export.json); a damaged one is a UserInputError saying
    what to do (`remedy`), since nothing written beside it can be trusted."""
    try:
        return read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserInputError(f"{path} is not valid JSON ({e}); {remedy}") from None


def _recorded_sha256(record: Path) -> dict[str, str]:
    """{file name: sha256} of the published artifacts an export.json lists."""
    doc = read_record(record, "it records the sha256 of the exported files beside it, so they cannot be "
                              "trusted: export again")
    hashes: dict[str, str] = {}
    for entry in doc.get("artifacts", []) if isinstance(doc, dict) else []:
        hashes.update(entry.get("files") or {})
        if entry.get("file") and entry.get("sha256"):  # export.json written before per-file records
            hashes.setdefault(Path(entry["file"]).name, entry["sha256"])
    return hashes


def check_recorded_sha256(*files: str | Path) -> None:
    """Refuse an exported file whose sha256 differs from what the export.json beside it records.

    Files with no export.json beside them, or not listed in it, are not edgeres-published and pass.
    """
    for f in map(Path, files):
        record = f.parent / EXPORT_RECORD
        if not record.is_file():
            continue
        expected = _recorded_sha256(record).get(f.name)
        if expected is not None and sha256_file(f) != expected:
            raise UserInputError(f"{f}: its sha256 does not match the one {record} records: the file was changed "
                                 "or replaced after export (or an export was interrupted); export again")
