#!/usr/bin/env python3
"""Run this edgeres bundle on the device: predictions for image files, or a self-check against golden outputs.

Needs numpy, Pillow and the bundle's runtime (onnxruntime; openvino; or tensorrt with cuda-python or pycuda), not
torch and not edgeres. `letterbox.py` beside this file is edgeres's own letterbox module, copied unchanged.

    python infer.py IMAGES --out DIR [--backend B] [--device D] [--threads N]   # DIR/predictions.json
    python infer.py --selftest        # SHA256SUMS, then the golden inputs against golden/expected.npz

Exit codes: 0 done (self-check passed), 1 the self-check failed, 2 bad input or a bundle that cannot run here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # letterbox.py sits beside this file; `python -I` would not look there
from letterbox import letterbox, letterbox_geometry, unletterbox_boxes  # noqa: E402

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
WIDE_GREYS = ("I;16", "I;16B", "I;16L", "I", "F")  # 16-bit and float greys: scaled into [0, 1], not clipped
EFFICIENT_NMS = ("num_dets", "det_boxes", "det_scores", "det_classes")  # TensorRT's EfficientNMS_TRT outputs
MATCH_IOU = 0.5  # a golden detection and the device's are the same object at this IoU (edgeres's comparator)
# Up to this many classes a frame's softmax and ranking run in plain Python: numpy's per-call overhead is most of
# the cost, 30 us instead of 14 for the 10-class demo right after inference (benchmarks/preprocess.py).
SMALL_SOFTMAX = 64


class BundleError(Exception):
    """Bad input, or a bundle that cannot run here: reported in one line, exit 2."""


# --- the bundle's files ---

def inside(name: str) -> Path:
    """A path named by the bundle's own files, refused unless it stays inside the bundle."""
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts:
        raise BundleError(f"the bundle names the file {name!r}; expected a path inside the bundle folder")
    return HERE.joinpath(*parts)


def load_meta() -> dict:
    path = HERE / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path} is missing; infer.py runs from the bundle folder `edgeres deploy` wrote") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"{path} is not readable JSON ({e})") from None
    missing = [k for k in ("task", "backend", "model", "input", "class_names", "postprocess") if k not in meta]
    if missing or meta.get("task") not in TASKS:
        raise BundleError(f"{path} lacks {missing or ['a known task']}; expected a meta.json written by edgeres deploy "
                          f"(task one of {sorted(TASKS)})")
    return meta


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sums() -> list[str]:
    """What differs from SHA256SUMS ("<hex>  <relative path>" lines, as sha256sum writes): each names its file."""
    sums = HERE / "SHA256SUMS"
    if not sums.is_file():
        return ["SHA256SUMS is missing"]
    problems = []
    for number, line in enumerate(sums.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, mark, name = line[:64].lower(), line[64:66], line[66:]
        if len(digest) != 64 or mark not in ("  ", " *") or not name:
            problems.append(f"SHA256SUMS line {number} is not '<sha256>  <file>': {line[:80]!r}")
            continue
        try:
            path = inside(name)
        except BundleError as e:
            problems.append(f"SHA256SUMS line {number}: {e}")
            continue
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256(path) != digest:
            problems.append(f"{name} changed: its sha256 is not the one SHA256SUMS records")
    return problems


# --- runtimes: each loads the model file and maps an input batch to {output name: array} ---

class OnnxRuntimeModel:
    PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                 "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}
    DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}

    def __init__(self, path: Path, meta: dict, device: str | None, threads: int | None):
        import onnxruntime as ort

        device = (device or "cpu").lower()
        if device not in self.PROVIDERS:
            raise BundleError(f"--device for onnxruntime is one of {list(self.PROVIDERS)}, got {device!r}")
        wanted = self.PROVIDERS[device][0]
        if wanted not in ort.get_available_providers():
            raise BundleError(f"this onnxruntime has no {wanted} (it has {ort.get_available_providers()}); install "
                              f"the build that has it (onnxruntime-gpu for cuda and tensorrt)")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=self.PROVIDERS[device])
        except Exception as e:  # onnxruntime raises its own exception types for an unreadable file
            raise BundleError(f"{path.name}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None
        graph_input = self.session.get_inputs()[0]
        self.input_name, self.dtype = graph_input.name, self.DTYPES.get(graph_input.type, np.float32)
        self.batch = graph_input.shape[0] if isinstance(graph_input.shape[0], int) else None
        self.max_batch = None
        self.names = [o.name for o in self.session.get_outputs()]
        self.info = {"backend": "onnxruntime", "version": ort.__version__, "device": device,
                     "providers": self.session.get_providers(), "threads": threads}

    def run(self, x: np.ndarray) -> dict:
        outputs = self.session.run(None, {self.input_name: x.astype(self.dtype, copy=False)})
        return dict(zip(self.names, outputs))


class OpenVinoModel:
    def __init__(self, path: Path, meta: dict, device: str | None, threads: int | None):
        try:
            from openvino import Core, Tensor
        except ImportError:  # OpenVINO before 2023.1
            from openvino.runtime import Core, Tensor

        device = device or "CPU"
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if meta.get("precision") == "fp32" and device.upper().startswith("CPU"):
            # The CPU plugin computes in bf16 where the CPU has it unless told otherwise; an fp32 bundle is checked
            # at fp32 tolerance, as edgeres's export validation ran it.
            config["INFERENCE_PRECISION_HINT"] = "f32"
        core = Core()
        try:
            compiled = core.compile_model(core.read_model(str(path)), device, config)
        except RuntimeError as e:
            reason = [line for line in str(e).splitlines() if line.strip() and not line.startswith("Exception from")]
            raise BundleError(f"{path.name}: OpenVINO cannot load it on {device} ({' '.join(reason)[:200]})") from None
        self.request, self.Tensor = compiled.create_infer_request(), Tensor
        self.names = [o.get_any_name() for o in compiled.outputs]
        first = compiled.input(0).get_partial_shape()[0]
        self.batch, self.max_batch = (first.get_length() if first.is_static else None), None
        try:
            self.dtype = compiled.input(0).get_element_type().to_dtype()
        except AttributeError:  # older bindings: the meta.json says what the input is
            self.dtype = np.dtype(meta["input"].get("dtype", "float32"))
        hint = compiled.get_property("INFERENCE_PRECISION_HINT") if device.upper().startswith("CPU") else None
        self.info = {"backend": "openvino", "device": device, "threads": threads,
                     "inference_precision": getattr(hint, "get_type_name", lambda: str(hint))()}

    def run(self, x: np.ndarray) -> dict:
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if x.flags.writeable:  # bound in place: ~4% faster than infer({0: x}, share_inputs=True) for the demo model
            self.request.set_input_tensor(self.Tensor(x, shared_memory=True))
            self.request.infer()
        else:  # OpenVINO cannot share a read-only array (np.asarray of a PIL image): it copies it
            self.request.infer({0: x}, share_inputs=True)
        return {name: self.request.get_output_tensor(i).data.copy() for i, name in enumerate(self.names)}


class TensorRTModel:
    """A serialized engine built on this device. TensorRT 8.5 added the name-based tensor API (set_input_shape,
    set_tensor_address, execute_async_v3) and 10.0 removed the binding API; older engines (JetPack 4.6's 8.2) run
    through the bindings (set_binding_shape, execute_v2)."""

    def __init__(self, path: Path, meta: dict, device: str | None, threads: int | None):
        try:
            import tensorrt as trt
        except ImportError:
            raise BundleError("the tensorrt Python package is missing; JetPack installs it (python3-libnvinfer)") \
                from None
        if not path.is_file():
            raise BundleError(f"{path.name} is not built yet: run ./build_engine.sh or python3 build_engine.py here")
        self.trt, self.cuda = trt, cuda_memory()
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")  # an engine ending in EfficientNMS_TRT needs its plugin
        self.runtime = trt.Runtime(logger)  # must outlive the engine
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BundleError(f"{path.name}: TensorRT cannot load it; an engine runs only with the TensorRT version "
                              "and GPU that built it, so rebuild it here with build_engine.sh")
        self.context = self.engine.create_execution_context()
        engine = self.engine
        self.named = hasattr(engine, "num_io_tensors")
        if self.named:
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            shape = tuple(engine.get_tensor_shape(inputs[0]))
            top = engine.get_tensor_profile_shape(inputs[0], 0)[2][0] if shape[0] == -1 else None
        else:
            names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]
            inputs = [n for n in names if engine.binding_is_input(engine.get_binding_index(n))]
            shape = tuple(engine.get_binding_shape(engine.get_binding_index(inputs[0])))
            top = engine.get_profile_shape(0, inputs[0])[2][0] if shape[0] == -1 else None
        if len(inputs) != 1:
            raise BundleError(f"{path.name}: expected one input tensor, the engine has {inputs}")
        self.input, self.names = inputs[0], [n for n in names if n not in inputs]
        self.batch, self.max_batch = (None if shape[0] == -1 else shape[0]), top
        self.info = {"backend": "tensorrt", "version": trt.__version__, "api": "tensors" if self.named else "bindings",
                     "cuda": type(self.cuda).__name__}

    def _dtype(self, name: str) -> np.dtype:
        get = self.engine.get_tensor_dtype if self.named else self.engine.get_binding_dtype
        return np.dtype(self.trt.nptype(get(name if self.named else self.engine.get_binding_index(name))))

    def run(self, x: np.ndarray) -> dict:
        x = np.ascontiguousarray(x.astype(self._dtype(self.input), copy=False))
        ctx, engine, cuda = self.context, self.engine, self.cuda
        buffers = {self.input: cuda.alloc(x.nbytes)}
        try:
            cuda.to_device(buffers[self.input], x)
            if self.named:
                ctx.set_input_shape(self.input, x.shape)
                shapes = {n: tuple(ctx.get_tensor_shape(n)) for n in self.names}
            else:
                ctx.set_binding_shape(engine.get_binding_index(self.input), x.shape)
                shapes = {n: tuple(ctx.get_binding_shape(engine.get_binding_index(n))) for n in self.names}
            host = {n: np.empty(shapes[n], self._dtype(n)) for n in self.names}
            for name, array in host.items():
                buffers[name] = cuda.alloc(array.nbytes)
            if self.named:
                for name, pointer in buffers.items():
                    ctx.set_tensor_address(name, pointer)
                ok = ctx.execute_async_v3(cuda.stream)
                cuda.synchronize()
            else:
                ok = ctx.execute_v2([buffers[engine.get_binding_name(i)] for i in range(engine.num_bindings)])
            if not ok:
                raise RuntimeError("TensorRT failed to execute the engine")
            for name, array in host.items():
                cuda.to_host(array, buffers[name])
            return host
        finally:
            for pointer in buffers.values():
                cuda.free(pointer)


def cuda_memory():
    """Device memory and a stream from cuda-python, or else pycuda: TensorRT's Python package brings neither."""
    try:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python 12.6 and later
        except ImportError:
            from cuda import cudart
        return CudaPython(cudart)
    except ImportError:
        pass
    try:
        import pycuda.autoinit  # noqa: F401  (a context on GPU 0)
        import pycuda.driver
    except ImportError:
        raise BundleError("TensorRT needs CUDA memory from cuda-python or pycuda; pip install cuda-python") from None
    return PyCuda(pycuda.driver)


class CudaPython:
    def __init__(self, cudart):
        self.rt = cudart
        self._stream = self._ok(cudart.cudaStreamCreate())
        self.stream = int(self._stream)  # TensorRT takes the handle as an integer

    @staticmethod
    def _ok(result):
        error, *value = result if isinstance(result, tuple) else (result,)
        if int(error) != 0:
            raise RuntimeError(f"CUDA error {error}")
        return value[0] if value else None

    def alloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(max(int(nbytes), 1))))

    def free(self, pointer: int) -> None:
        self._ok(self.rt.cudaFree(pointer))

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpy(pointer, array.ctypes.data, array.nbytes, kind))

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpy(array.ctypes.data, pointer, array.nbytes, kind))

    def synchronize(self) -> None:
        self._ok(self.rt.cudaStreamSynchronize(self._stream))


class PyCuda:
    def __init__(self, driver):
        self.driver, self._stream = driver, driver.Stream()
        self.stream, self._held = self._stream.handle, {}

    def alloc(self, nbytes: int) -> int:
        memory = self.driver.mem_alloc(max(int(nbytes), 1))
        self._held[int(memory)] = memory
        return int(memory)

    def free(self, pointer: int) -> None:
        self._held.pop(pointer).free()

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        self.driver.memcpy_htod(pointer, array)

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        self.driver.memcpy_dtoh(array, pointer)

    def synchronize(self) -> None:
        self._stream.synchronize()


RUNTIMES = {"onnxruntime": OnnxRuntimeModel, "openvino": OpenVinoModel, "tensorrt": TensorRTModel}


def load_model(meta: dict, backend: str | None, device: str | None, threads: int | None):
    backend = backend or meta["backend"]
    if backend == meta["backend"]:
        name = meta["model"]
    elif backend != "tensorrt" and meta.get("onnx"):
        name = meta["onnx"]  # a TensorRT bundle's ONNX runs on the CPU runtimes too
    elif backend == "openvino" and meta["model"].endswith(".onnx"):
        name = meta["model"]  # OpenVINO reads ONNX
    else:
        raise BundleError(f"this bundle's model {meta['model']} is for {meta['backend']}; it cannot run on {backend}")
    path = inside(name)
    if backend != "tensorrt" and not path.is_file():
        raise BundleError(f"{name} is missing from the bundle")
    if threads is not None and threads < 1:
        raise BundleError(f"--threads must be a positive integer, got {threads}")
    model = RUNTIMES[backend](path, meta, device, threads or meta.get("threads"))
    model.info.update(model=name, precision=meta.get("precision"))
    return model


def run_model(model, x: np.ndarray, batch_size: int = 8) -> dict:
    """The model's named outputs for batch x, run in the batches the model file takes (a fixed batch is padded)."""
    step = model.batch or min(batch_size, model.max_batch or batch_size)
    if len(x) == step:  # one call as it is (a camera's frame): no slicing, padding or joining
        return finish_outputs(model.run(x))
    parts = []
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        n = len(chunk)
        if model.batch and n < model.batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], model.batch - n, axis=0)])
        parts.append({k: np.asarray(v)[:n] for k, v in model.run(chunk).items()})
    return finish_outputs({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


def finish_outputs(outputs: dict) -> dict:
    """EfficientNMS's outputs joined into one detections array; fp16 outputs as float32."""
    if set(outputs) == set(EFFICIENT_NMS):
        outputs = {"detections": assemble_detections(*(outputs[k] for k in EFFICIENT_NMS))}
    return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in outputs.items()}


def assemble_detections(num_dets, boxes, scores, classes) -> np.ndarray:
    """EfficientNMS's four outputs as (N, max_det, 6) [x1, y1, x2, y2, score, class] rows, padding class -1."""
    n, max_det = scores.shape
    found = np.arange(max_det)[None, :] < np.asarray(num_dets).reshape(n, 1)
    rows = np.concatenate([boxes, scores[..., None], classes[..., None]], axis=-1).astype(np.float32)
    return np.where(found[..., None], rows, np.array([0, 0, 0, 0, 0, -1], np.float32))


# --- images to model inputs, as edgeres prepares them ---

def open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)  # the rotation a phone records in EXIF: what the user sees
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise BundleError(f"cannot read image {path}: {e}") from None


def normalise(x: np.ndarray, inp: dict) -> np.ndarray:
    mean = np.asarray(inp["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(inp["std"], dtype=np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32)


def resized(image: Image.Image, inp: dict) -> tuple[np.ndarray, None]:
    """A classifier's input: float [0, 1] planes (RGB, or L for one channel) with an antialiased bilinear resize to
    S x S, as edgeres's data pipeline reads training images."""
    size, chans = inp["img_size"], inp["in_chans"]
    if image.mode in WIDE_GREYS:
        a = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(a.max()), 1.0)
        planes = [np.clip(a / top, 0, 1)] * (3 if chans == 3 else 1)
    else:
        a = np.asarray(image.convert("L" if chans == 1 else "RGB"), dtype=np.float32) / 255.0
        planes = [a] if a.ndim == 2 else [a[..., c] for c in range(3)]
    # Pillow resizes float ("F") images with the antialiased filter torchvision's antialias=True reproduces.
    x = np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR)) for p in planes])
    return normalise(np.clip(x, 0, 1), inp), None


def letterboxed(image: Image.Image, inp: dict) -> tuple[np.ndarray, tuple]:
    """A detector's input: the image letterboxed to S x S and normalised; what maps its boxes back."""
    boxed, scale, pad = letterbox(np.asarray(image.convert("RGB")), inp["img_size"])
    x = boxed.astype(np.float32).transpose(2, 0, 1) / 255.0
    return normalise(x, inp), (scale, pad, (1.0, 1.0), image.size)


def frame(image: Image.Image, inp: dict) -> tuple[np.ndarray, tuple]:
    """The uint8 RGB frame a graph with preprocessing inside takes (resized only to the fixed frame it may need);
    a detector's graph letterboxes the frame to S as letterbox_geometry says, so its boxes map back the same way."""
    rgb = image.convert("RGB")
    fixed = inp.get("frame")
    if fixed and (rgb.height, rgb.width) != tuple(fixed):
        rgb = rgb.resize((fixed[1], fixed[0]), Image.BILINEAR)
    scale, _, pad = letterbox_geometry(rgb.width, rgb.height, inp["img_size"])
    stretch = (image.width / rgb.width, image.height / rgb.height)
    return np.asarray(rgb), (scale, pad, stretch, image.size)


# --- outputs to predictions, as `edgeres predict` writes them ---

def classify(outputs: dict, contexts: list, meta: dict) -> list[dict]:
    names, logits = meta["class_names"], np.asarray(single(outputs, "logits"), dtype=np.float64)
    top_k = meta["postprocess"].get("top_k", 5)
    if logits.shape[1] > SMALL_SOFTMAX:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        ranked = zip(probs.tolist(), np.argsort(-probs, axis=1, kind="stable")[:, :top_k].tolist())
    else:
        probs = [softmax(row) for row in logits.tolist()]
        # reverse=True keeps tied classes in index order, as a stable argsort of -p does
        ranked = ((p, sorted(range(len(p)), key=p.__getitem__, reverse=True)[:top_k]) for p in probs)
    records = []  # Python floats and ints, as json writes them
    for row, order in ranked:
        top = [{"class": names[i], "class_id": i, "probability": row[i]} for i in order]
        records.append({"class": top[0]["class"], "class_id": order[0], "probability": row[order[0]], "top": top})
    return records


def softmax(z: list) -> list:
    """One row's probabilities in plain Python (a few classes: numpy's per-call overhead outweighs the sums)."""
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = sum(e)
    return [v / total for v in e]


def single(outputs: dict, name: str) -> np.ndarray:
    if name in outputs:
        return outputs[name]
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    raise BundleError(f"the model's outputs are {sorted(outputs)}; expected {name!r}")


def detections(outputs: dict, conf: float, iou: float, max_det: int) -> list[np.ndarray]:
    """Per image (k, 6) [x1, y1, x2, y2, score, class] rows scoring above conf, best first: the graph's own NMS
    rows, or per-class NMS here over every (box, class) pair above conf."""
    if "detections" in outputs:
        found = []
        for d in np.asarray(outputs["detections"], np.float32):
            rows = d[(d[:, 5] >= 0) & (d[:, 4] > max(conf, 0.0))]
            found.append(rows[np.argsort(-rows[:, 4], kind="stable")][:max_det])
        return found
    if not {"boxes", "scores"} <= set(outputs):
        raise BundleError(f"a detector's outputs are boxes and scores, or detections; these are {sorted(outputs)}")
    boxes, scores = np.asarray(outputs["boxes"], np.float32), np.asarray(outputs["scores"], np.float32)
    return [nms(b, s, conf, iou, max_det) for b, s in zip(boxes, scores)]


def nms(boxes: np.ndarray, scores: np.ndarray, conf: float, iou: float, max_det: int) -> np.ndarray:
    """Greedy NMS within each class, highest score first (torchvision's batched_nms, in numpy)."""
    box_i, cls = np.nonzero(scores > conf)
    order = np.argsort(-scores[box_i, cls], kind="stable")
    box_i, cls = box_i[order], cls[order]
    b = boxes[box_i]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = np.zeros(len(b), bool)
    keep = []
    for i in range(len(b)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) == max_det:
            break
        w = np.maximum(0, np.minimum(b[i, 2], b[i + 1:, 2]) - np.maximum(b[i, 0], b[i + 1:, 0]))
        h = np.maximum(0, np.minimum(b[i, 3], b[i + 1:, 3]) - np.maximum(b[i, 1], b[i + 1:, 1]))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            overlap = inter / (area[i] + area[i + 1:] - inter)
        suppressed[i + 1:] |= (overlap > iou) & (cls[i + 1:] == cls[i])
    keep = np.asarray(keep, dtype=np.int64)
    return np.concatenate([b[keep], scores[box_i[keep], cls[keep], None],
                           cls[keep, None].astype(np.float32)], axis=1).astype(np.float32)


def detect(outputs: dict, contexts: list, meta: dict) -> list[dict]:
    post, names = meta["postprocess"], meta["class_names"]
    records = []
    for dets, (scale, pad, (sx, sy), (width, height)) in zip(
            detections(outputs, post["conf"], post["iou"], post["max_det"]), contexts):
        boxes = np.zeros((0, 4), np.float32)
        if len(dets):
            boxes = unletterbox_boxes(dets[:, :4], scale, pad) * np.asarray([sx, sy, sx, sy], np.float32)
        boxes = np.clip(boxes, 0, [width, height, width, height])
        records.append({"detections": [
            {"class": names[int(c)], "class_id": int(c), "score": float(s),
             "box_xyxy": [round(float(v), 2) for v in box]}
            for box, s, c in sorted(zip(boxes, dets[:, 4], dets[:, 5]), key=lambda t: -t[1])]})
    return records


# --- the self-check: golden outputs against this device's ---

def cosine_check(expected: dict, got: dict, tol: dict, meta: dict) -> tuple[dict, list[str]]:
    ref = np.asarray(single(expected, "logits"), np.float64)
    ref = ref.reshape(len(ref), -1)
    cand = np.asarray(single(got, "logits"), np.float64).reshape(len(ref), -1)
    # As edgeres judges exports: the cosine of the whole batch's logits, each row less its mean (a softmax
    # ignores that shift; a two-class sample's own pair of logits has one direction left).
    a, b = ref - ref.mean(1, keepdims=True), cand - cand.mean(1, keepdims=True)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float((a * b).sum() / norms) if norms else float(not a.any() and not b.any())
    stats = {"samples": len(ref), "logit_cosine": cosine, "max_abs_diff": float(np.abs(ref - cand).max()),
             "top1_agreement": float((ref.argmax(1) == cand.argmax(1)).mean())}
    reasons = []
    if stats["logit_cosine"] < tol.get("min_cosine", 0.0):
        reasons.append(f"logit cosine {stats['logit_cosine']:.6f} < {tol['min_cosine']}")
    if tol.get("max_abs_diff") is not None:
        limit = tol["max_abs_diff"] + tol.get("rel_diff", 0.0) * float(np.abs(ref).max())
        if stats["max_abs_diff"] > limit:
            reasons.append(f"max abs diff {stats['max_abs_diff']:.3g} > {limit:.3g}")
    if stats["top1_agreement"] < tol.get("min_top1_agreement", 0.0):
        reasons.append(f"top-1 agreement {stats['top1_agreement']:.3f} < {tol['min_top1_agreement']}")
    return stats, reasons


def match(query: np.ndarray, pool: np.ndarray) -> list[float]:
    """IoUs of the query detections (best first) that find an unmatched pool detection of their class at IoU >= 0.5."""
    taken, ious = np.zeros(len(pool), bool), []
    for q in np.argsort(-query[:, 4], kind="stable"):
        if not len(pool):
            break
        lt = np.maximum(query[q, :2], pool[:, :2])
        rb = np.minimum(query[q, 2:4], pool[:, 2:4])
        inter = np.clip(rb - lt, 0, None).prod(axis=1)
        area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa
        union = area(query[q]) + area(pool) - inter
        overlap = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        overlap[(pool[:, 5] != query[q, 5]) | taken] = -1.0
        best = int(overlap.argmax())
        if overlap[best] >= MATCH_IOU:
            taken[best] = True
            ious.append(float(overlap[best]))
    return ious


def detection_check(expected: dict, got: dict, tol: dict, meta: dict) -> tuple[dict, list[str]]:
    """Detections at the predict confidence matched both ways; the other side keeps down to half of it, so a
    0.26 against a 0.24 counts as found."""
    post = meta["postprocess"]
    conf = post["conf"]
    sides = [detections(o, conf / 2, post["iou"], post["max_det"]) for o in (expected, got)]
    stats, reasons, ious = {"images": len(sides[0])}, [], []
    for who, query_side, pool_side in (("golden", 0, 1), ("device", 1, 0)):
        shown = found = 0
        for query, pool in zip(sides[query_side], sides[pool_side]):
            query = query[query[:, 4] >= conf]
            matched = match(query, pool)
            shown, found = shown + len(query), found + len(matched)
            ious += matched if who == "golden" else []
        stats[f"{who}_detections"], stats[f"{who}_found"] = shown, found / shown if shown else 1.0
        if stats[f"{who}_found"] < tol.get("min_matched", 0.0):
            reasons.append(f"{stats[f'{who}_found']:.1%} of {shown} {who} detections have a match < "
                           f"{tol['min_matched']:.0%}")
    stats["mean_iou"] = float(np.mean(ious)) if ious else None
    if ious and stats["mean_iou"] < tol.get("min_mean_iou", 0.0):
        reasons.append(f"mean IoU of matched detections {stats['mean_iou']:.4f} < {tol['min_mean_iou']}")
    if "scores" in expected and "scores" in got and np.shape(expected["scores"]) == np.shape(got["scores"]):
        diff = np.abs(np.asarray(expected["scores"], np.float64) - np.asarray(got["scores"], np.float64))
        stats["raw_score_max_abs_diff"] = float(diff.max()) if diff.size else 0.0
        limit = tol.get("max_raw_score_diff")
        if limit is not None and stats["raw_score_max_abs_diff"] > limit:
            reasons.append(f"max abs diff of raw class scores {stats['raw_score_max_abs_diff']:.3g} > {limit}")
    return stats, reasons


def selftest(meta: dict, args: argparse.Namespace) -> int:
    problems = check_sums()
    if problems:
        print("selftest FAILED: the bundle's files differ from SHA256SUMS:\n  " + "\n  ".join(problems))
        return 1
    golden = meta.get("golden") or {}
    paths = [inside(golden.get(k, "")) for k in ("inputs", "expected")] if golden else []
    if not paths or not all(p.is_file() for p in paths):
        print(f"selftest FAILED: golden files missing ({golden or 'meta.json names none'})")
        return 1
    x = np.load(paths[0], allow_pickle=False)
    with np.load(paths[1], allow_pickle=False) as npz:
        expected = {k: npz[k] for k in npz.files}
    model = load_model(meta, args.backend, args.device, args.threads)
    try:
        got = run_model(model, x, args.batch_size)
    except Exception as e:  # the runtime's own exception types: the device cannot run what the host ran
        print(f"selftest FAILED: {model.info['model']} cannot run the golden inputs {x.dtype}{list(x.shape)}: "
              f"{str(e).splitlines()[0][:300] if str(e) else type(e).__name__}")
        return 1
    bad = sum(int((~np.isfinite(np.asarray(v, np.float64))).sum()) for v in got.values())
    stats, reasons = TASKS[meta["task"]]["check"](expected, got, meta.get("tolerance") or {}, meta)
    if bad:
        reasons.insert(0, f"{bad} NaN or infinite values in the outputs")
    print(f"selftest: {model.info['model']} on {model.info['backend']}, {len(x)} golden inputs, "
          f"{meta['task']} tolerance for {meta.get('precision')}: {json.dumps(meta.get('tolerance'))}")
    for key, value in stats.items():
        print(f"  {key}: {value}")
    print("selftest FAILED: " + "; ".join(reasons) if reasons else "selftest passed")
    return 1 if reasons else 0


TASKS = {
    "classification": {"resize": resized, "describe": classify, "check": cosine_check},
    "detection": {"resize": letterboxed, "describe": detect, "check": detection_check},
}


# --- predictions ---

def find_images(given: str) -> tuple[Path, list[Path]]:
    path = Path(given)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise BundleError(f"{path} is not an image file; expected one of {', '.join(IMAGE_SUFFIXES)}")
        return path.parent, [path]
    if not path.is_dir():
        raise BundleError(f"{path} does not exist; give an image file or a folder of images")
    found = []
    for folder, dirs, files in os.walk(path):  # symlinked folders are not followed: no loops
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder) / f for f in sorted(files)
                  if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
    if not found:
        raise BundleError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return path, found


def predict(meta: dict, args: argparse.Namespace) -> Path:
    root, files = find_images(args.images)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {out} is a file; expected a folder for predictions.json")
    task, inp = TASKS[meta["task"]], meta["input"]
    prepare = frame if inp.get("in_graph_preprocess") else task["resize"]
    model = load_model(meta, args.backend, args.device, args.threads)
    # Frames of any size cannot share a batch: a graph that takes any size runs them one at a time.
    step = 1 if inp.get("in_graph_preprocess") and not inp.get("frame") else args.batch_size
    records = []
    for start in range(0, len(files), step):
        batch = [(path, open_image(path)) for path in files[start:start + step]]
        prepared = [prepare(image, inp) for _, image in batch]
        outputs = run_model(model, np.stack([p[0] for p in prepared]), args.batch_size)
        for (path, image), record in zip(batch, task["describe"](outputs, [p[1] for p in prepared], meta)):
            records.append({"file": path.relative_to(root).as_posix(), "width": image.width, "height": image.height,
                            **record})
    doc = {"artifact": model.info["model"], "task": meta["task"], "runner": model.info,
           "class_names": meta["class_names"], "images": len(records), "skipped": [], "predictions": records}
    out.mkdir(parents=True, exist_ok=True)
    target = out / "predictions.json"
    partial = out / ".predictions.json.partial"
    partial.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, target)  # a reader never sees half a file
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="?", help="an image file or a folder of images (searched at any depth)")
    p.add_argument("--out", help="folder to write predictions.json into")
    p.add_argument("--selftest", action="store_true", help="check SHA256SUMS and the golden outputs; exit 0 or 1")
    p.add_argument("--backend", choices=BACKENDS, help="default: the bundle's own (meta.json)")
    p.add_argument("--device", help="onnxruntime: cpu, cuda or tensorrt; openvino: CPU, GPU, NPU, AUTO...")
    p.add_argument("--threads", type=int, help="CPU threads (default: the device preset's)")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    try:
        if args.batch_size < 1:
            raise BundleError(f"--batch-size must be positive, got {args.batch_size}")
        meta = load_meta()
        if args.selftest:
            return selftest(meta, args)
        if not args.images or not args.out:
            raise BundleError("give IMAGES and --out DIR to predict, or --selftest")
        print(f"wrote {predict(meta, args)}")
        return 0
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
