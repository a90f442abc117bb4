"""One Runner interface over every backend; vendor libraries load only when their backend is used."""
from __future__ import annotations

import importlib
from pathlib import Path

from edgeres.meta import is_checkpoint
from edgeres.errors import UserInputError
from edgeres.runtime.base import Runner, RunnerInfo

# backend name -> (module, class); the module is imported only when that backend is asked for.
BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("edgeres.runtime.torch", "TorchRunner"),
    "onnxruntime": ("edgeres.runtime.onnxruntime", "OnnxRuntimeRunner"),
    "openvino": ("edgeres.runtime.openvino", "OpenVinoRunner"),
    "tensorrt": ("edgeres.runtime.tensorrt", "TensorRTRunner"),
}
_BY_SUFFIX = {".onnx": "onnxruntime", ".xml": "openvino", ".engine": "tensorrt", ".plan": "tensorrt"}


def detect_backend(path: str | Path) -> str:
    """The backend that runs a file: a checkpoint runs in torch, `.onnx` in ONNX Runtime, and so on."""
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"{path}: no such file or checkpoint directory")
    if is_checkpoint(p):
        return "torch"
    if p.is_dir():
        raise UserInputError(f"{path}: a folder but not an edgeres checkpoint (model.safetensors and model.json "
                             "are missing)")
    if p.suffix in _BY_SUFFIX:
        return _BY_SUFFIX[p.suffix]
    raise UserInputError(
        f"{path}: cannot tell what runs this; expected a checkpoint directory or a file ending in "
        f"{', '.join(sorted(_BY_SUFFIX))}"
    )


def load(
    path: str | Path,
    backend: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
) -> Runner:
    """Open `path` (checkpoint, .onnx, .xml or .engine) with `backend` (default: by file type)."""
    backend = backend or detect_backend(path)
    if backend not in BACKENDS:
        raise UserInputError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    if threads is not None and threads < 1:
        raise UserInputError(f"threads must be a positive integer, got {threads}")
    module_name, class_name = BACKENDS[backend]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserInputError(f"backend {backend!r} needs a package that is not installed ({e.name}); "
                             f"install edgeres with its extra, e.g. pip install 'edgeres[{_EXTRA.get(backend, backend)}]'") from e
    return getattr(module, class_name)(path, precision=precision, threads=threads)


_EXTRA = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "tensorrt"}

__all__ = ["BACKENDS", "Runner", "RunnerInfo", "detect_backend", "load"]
