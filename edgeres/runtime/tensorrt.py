"""TensorRT backend: runs a serialized engine (the name-based API of TensorRT 8.5 and later) on an NVIDIA GPU
through torch CUDA tensors.

An engine file holds no edgeres metadata, so the runner reads `<engine>.json`, the sidecar that
build_engine() and the bundle's build scripts write beside it. An engine ending in TensorRT's EfficientNMS
plugin gives its four outputs; the runner returns them as one "detections" array, as the other backends do.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.errors import UserInputError
from edgeres.meta import ModelMeta
from edgeres.runtime.base import Outputs, Runner, RunnerInfo
from edgeres.runtime.embedded import DETECTIONS

#: EfficientNMS_TRT's outputs in order, as edgeres names them when it adds the plugin (edgeres.export.tensorrt.nms).
EFFICIENT_NMS_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")


def assemble_detections(num_dets: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                        classes: np.ndarray) -> np.ndarray:
    """EfficientNMS's outputs as "detections" (N, max_det, 6) `[x1, y1, x2, y2, score, class]`, float32; rows
    past each image's count are zeros with class -1, like the in-graph NMS of the other backends."""
    n, max_det = scores.shape
    found = np.arange(max_det)[None, :] < np.asarray(num_dets).reshape(n, 1)
    rows = np.concatenate([boxes, scores[..., None], classes[..., None]], axis=-1).astype(np.float32)
    padding = np.array([0, 0, 0, 0, 0, -1], dtype=np.float32)
    return np.where(found[..., None], rows, padding)


def unavailable_reason() -> str | None:
    """Why TensorRT cannot run here (no package, no GPU), or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python package is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


def sidecar_path(engine: str | Path) -> Path:
    """Where the metadata of `engine` lives: `<engine>.json`."""
    return Path(f"{engine}.json")


class TensorRTRunner(Runner):
    """A TensorRT engine with one input "input" and its named outputs, fed from numpy through CUDA memory."""

    def __init__(self, path: str | Path, precision: str | None = None, threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"{path}: no such TensorRT engine file")
        reason = unavailable_reason()
        if reason:
            raise UserInputError(f"{path}: running a TensorRT engine needs an NVIDIA GPU and TensorRT ({reason}); "
                                 f"run the model's .onnx with onnxruntime here, or the engine on the target")
        import tensorrt as trt
        import torch

        self.meta, built = _read_sidecar(path)
        if precision not in (None, built):
            raise UserInputError(f"{path} was built for {built}; an engine's precision is fixed when it is built, "
                                 f"so precision={precision!r} cannot be applied")
        self._trt, self._torch = trt, torch
        # The IRuntime must outlive the engines it deserialized, so the runner holds it.
        self._runtime, self.engine = _deserialize(trt, path)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise UserInputError(f"{path}: expected one input and at least one output tensor, found {inputs} "
                                 f"and {outputs}")
        self._input, self._outputs = inputs[0], outputs
        dims = tuple(self.engine.get_tensor_shape(self._input))
        self._max_batch = dims[0] if dims[0] != -1 else self.engine.get_tensor_profile_shape(self._input, 0)[2][0]
        self.info = RunnerInfo(
            backend="tensorrt",
            precision=built,
            device=f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})",
            threads=None,
            input_shape=(None if dims[0] == -1 else dims[0], *dims[1:]),
            path=str(path),
            versions={"tensorrt": trt.__version__, "torch": torch.__version__},
            extra={"max_batch": int(self._max_batch), "threads_note": "GPU backend: threads do not apply"},
        )

    def check_input(self, batch: np.ndarray) -> np.ndarray:
        batch = super().check_input(batch)
        if len(batch) > self._max_batch:
            raise UserInputError(f"this engine takes at most {self._max_batch} images per batch "
                                 f"(its optimization profile), got {len(batch)}")
        return batch

    def run(self, batch: np.ndarray) -> Outputs:
        torch, trt = self._torch, self._trt
        x = torch.from_numpy(batch).cuda()
        if self.engine.get_tensor_dtype(self._input) == trt.DataType.HALF:
            x = x.half()
        self.context.set_input_shape(self._input, tuple(x.shape))
        self.context.set_tensor_address(self._input, x.data_ptr())
        results = {}
        for name in self._outputs:
            dtype = _TORCH_TYPES[str(self.engine.get_tensor_dtype(name)).rsplit(".", 1)[-1]]
            results[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=getattr(torch, dtype),
                                        device="cuda")
            self.context.set_tensor_address(name, results[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT failed to execute the engine")
        stream.synchronize()
        arrays = {name: (y.float() if y.is_floating_point() else y).cpu().numpy() for name, y in results.items()}
        if set(arrays) == set(EFFICIENT_NMS_OUTPUTS):
            return {DETECTIONS: assemble_detections(*(arrays[name] for name in EFFICIENT_NMS_OUTPUTS))}
        return arrays


# TensorRT tensor types (DataType member names) -> torch dtypes of the buffers that receive them.
_TORCH_TYPES = {"FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT64": "int64", "INT8": "int8",
                "BOOL": "bool", "UINT8": "uint8", "BF16": "bfloat16"}


def _read_sidecar(path: Path) -> tuple[ModelMeta, str]:
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise UserInputError(f"{path}: its metadata file {sidecar.name} is missing; engines built by edgeres or "
                             f"by a bundle's build_engine.sh/.py write it beside the engine")
    data: dict[str, Any] = json.loads(sidecar.read_text(encoding="utf-8"))
    if "meta" not in data or "precision" not in data:
        raise UserInputError(f"{sidecar}: not an edgeres engine sidecar (needs the keys 'meta' and 'precision')")
    return ModelMeta.from_dict(data["meta"], source=f"{sidecar} (its 'meta' entry)"), data["precision"]


def _deserialize(trt: Any, path: Path) -> tuple[Any, Any]:
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # an engine holding EfficientNMS_TRT needs its plugin registered
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise UserInputError(f"{path}: TensorRT could not load this engine; engines only run with the TensorRT "
                             f"version and GPU they were built on, so rebuild it on this device")
    return runtime, engine
