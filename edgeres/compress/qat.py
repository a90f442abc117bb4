"""Quantization-aware training: NNCF fake-quantizes a checkpoint's model, fine-tunes it, and exports INT8
OpenVINO IR and QDQ ONNX, each measured against the fp32 model and plain post-training INT8."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import logging
import math
import os
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from edgeres.artifacts import package_versions, scratch_dir, sha256_file, write_json
from edgeres.checkpoint import ModelMeta, checkpoint_dir, checkpoint_sha256, load_checkpoint
from edgeres.errors import UserInputError
from edgeres.evaluate.predict import check_compatible
from edgeres.models.base import evaluating
from edgeres.tasks import Task, get_task
from edgeres.train.device import Execution, check_device, placed, resolve_execution
from edgeres.train.loop import train_epoch

log = logging.getLogger("edgeres")

QAT_XML, QAT_ONNX, PTQ_XML, RECORD = "model.int8.qat.xml", "model.int8.qat.onnx", "model.int8.ptq.xml", "qat.json"
_CALIB_BATCH = 32


@dataclasses.dataclass(frozen=True)
class QATConfig:
    """Fine-tuning and calibration settings; the learning rate is small because the weights start trained."""

    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 64
    calib_size: int = 300   # un-augmented training-split images for NNCF's initial ranges
    seed: int = 0
    # Where fine-tuning runs (auto, cpu, cuda, cuda:N). Always fp32, no --amp: bf16 keeps 8 bits of
    # mantissa, about as coarse as the int8 grid the fake quantizers simulate, so it would blur what QAT learns.
    device: str = "auto"

    def __post_init__(self) -> None:
        for name, least in (("epochs", 1), ("batch_size", 1), ("calib_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UserInputError(f"{name} must be an integer >= {least}, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
            raise UserInputError(f"lr must be a positive finite number, got {self.lr!r}")
        check_device(self.device)


def recommend_qat(ptq_drop_points: float, budget_points: float) -> bool:
    """QAT is offered when post-training INT8 loses more accuracy points than the user's budget allows."""
    for name, value in (("ptq_drop_points", ptq_drop_points), ("budget_points", budget_points)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserInputError(f"{name} must be a finite number of accuracy points, got {value!r}")
    if budget_points < 0:
        raise UserInputError(f"budget_points must be >= 0, got {budget_points}")
    return ptq_drop_points > budget_points


def quantization_aware_training(ckpt: str | Path, out_dir: str | Path, config: QATConfig, *,
                                bundle: Any = None, progress: Callable[..., None] | None = None) -> dict[str, Any]:
    """Fake-quantize `ckpt` with NNCF, fine-tune it, export INT8 IR + QDQ ONNX to `out_dir`, write qat.json.

    bundle: the checkpoint's data, when the caller has it open already (default: from model.json).
    progress: called as progress(n_images, loss=...) during fine-tuning.
    """
    execution = resolve_execution(config.device, amp=False)  # a missing GPU is refused before any work
    if importlib.util.find_spec("torchao") is None:  # checked before training, not after it
        raise UserInputError("QAT's QDQ ONNX export needs torchao (nncf.strip imports it): pip install torchao")
    # NNCF compiles a C++ extension on first use (about two minutes on two cores) under a 60 s default
    # limit; hitting it fails the run after the calibration. Allow the build unless the user chose a limit.
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")
    source = checkpoint_dir(ckpt)
    model, meta = load_checkpoint(source)
    bundle = bundle if bundle is not None else _load_bundle(meta, source)
    check_compatible(meta, bundle)
    out, sha = Path(out_dir), checkpoint_sha256(source)
    out.mkdir(parents=True, exist_ok=True)
    calib = [x for x, _ in bundle.batches("train", _CALIB_BATCH, limit=config.calib_size)]
    samples, seconds = int(sum(map(len, calib))), {}
    accuracy, precision = {}, {}
    accuracy["fp32"], precision["fp32"] = _accuracy(str(source), bundle, backend="torch")
    with _timed(seconds, "ptq"):
        ptq = _post_training_int8(model, meta, sha, calib, out / PTQ_XML)
    accuracy["ptq_int8_openvino"], precision["ptq_int8_openvino"] = _accuracy(ptq["path"], bundle)
    with _timed(seconds, "calibrate"):
        folded = fold_batchnorm(model)
        qmodel = _fake_quantize(model, calib)
    with _timed(seconds, "fine_tune"):
        history = _fine_tune(qmodel, bundle, config, execution, progress, get_task(meta.task))
    qmeta = _export_meta(meta, config, folded, samples)
    check = np.concatenate([x for x, _ in bundle.batches("val", 128)])
    with _timed(seconds, "export"):
        files = {"openvino": export_qat_openvino(qmodel, qmeta, out / QAT_XML, check, sha),
                 "onnx": export_qat_onnx(qmodel, qmeta, out / QAT_ONNX, check, sha), "ptq_openvino": ptq}
    for key, fmt in (("qat_int8_openvino", "openvino"), ("qat_int8_onnx", "onnx")):
        accuracy[key], precision[key] = _accuracy(files[fmt]["path"], bundle)
    record = {
        "source": str(source), "source_sha256": sha, "config": dataclasses.asdict(config),
        "calibration": {"split": "train", "augmented": False, "samples": samples},
        "epochs": config.epochs, "history": history, "execution": execution.to_dict(), "batchnorm_folded": folded,
        "test_samples": int(len(bundle.labels("test"))), "accuracy": accuracy,
        # Points lost against fp32 (negative: the INT8 model scored higher).
        "drop_points": {k: round((accuracy["fp32"] - v) * 100, 3) for k, v in accuracy.items() if k != "fp32"},
        "precision": precision, "files": files, "versions": package_versions(("torch", "nncf", "openvino", "onnx", "onnxruntime", "torchao")),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    write_json(out / RECORD, record)
    return record


def fold_batchnorm(model: nn.Module) -> int:
    """Fold each BatchNorm2d that reads only a Conv2d's output into that conv, in place; returns how many.

    Folded, a quantized conv's output goes straight to its activation, the QDQ pattern ONNX Runtime and
    TensorRT run as an int8 convolution. A model torch.fx cannot trace keeps its BatchNorms (returns 0).
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # data-dependent control flow and the like: folding is an optimisation only
        log.info("QAT: BatchNorm left unfolded, torch.fx cannot trace the model (%s)", e)
        return 0
    modules, pairs = dict(model.named_modules()), []
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")  # shared modules stay
    for node in graph.nodes:
        src = node.args[0] if node.args else None
        if (node.op == "call_module" and isinstance(modules.get(node.target), nn.BatchNorm2d)
                and isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules.get(src.target), nn.Conv2d) and len(src.users) == 1
                and calls[src.target] == calls[node.target] == 1):
            pairs.append((src.target, node.target))
    with evaluating(model):
        for conv, bn in pairs:
            model.set_submodule(conv, fuse_conv_bn_eval(modules[conv], modules[bn]))
            model.set_submodule(bn, nn.Identity())
    return len(pairs)


def export_qat_openvino(qmodel: nn.Module, meta: ModelMeta, out_xml: Path, check: np.ndarray,
                        source_sha256: str) -> dict[str, Any]:
    """Convert the fake-quantized torch model to an INT8 IR (FakeQuantize ops), validated before it is saved."""
    import nncf
    import openvino as ov

    from edgeres.export.openvino.convert import name_tensors, save_ir, set_edgeres_info

    c, h, w = meta.input_shape
    with evaluating(qmodel), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)   # torch.jit.trace's deprecation notice
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        ov_model = ov.convert_model(qmodel, example_input=torch.zeros(1, c, h, w),
                                    input=[([-1, c, h, w], ov.Type.f32)])
        reference = qmodel(torch.from_numpy(check)).numpy()
    name_tensors(ov_model, getattr(qmodel, "output_names", ("logits",)))
    stats = _validate("OpenVINO", reference, ov.Core().compile_model(ov_model, "CPU")(check)[0], meta)
    set_edgeres_info(ov_model, meta, {"precision": "int8", "source_sha256": source_sha256, "quantization": "qat",
                                      "openvino_version": ov.get_version(), "nncf_version": nncf.__version__})
    save_ir(ov_model, out_xml, compress_to_fp16=False)
    return {"path": str(out_xml), "bin_path": str(out_xml.with_suffix(".bin")), "sha256": sha256_file(out_xml),
            "bytes": out_xml.stat().st_size + out_xml.with_suffix(".bin").stat().st_size, "validation": stats}


def export_qat_onnx(qmodel: nn.Module, meta: ModelMeta, out: Path, check: np.ndarray,
                    source_sha256: str) -> dict[str, Any]:
    """nncf.strip turns NNCF's quantizers into torch FakeQuantize, which export as QuantizeLinear/DequantizeLinear."""
    import nncf
    import onnxruntime as ort

    from edgeres.export.onnx.convert import INPUT_NAME, export_onnx

    c, h, w = meta.input_shape
    with evaluating(qmodel):
        native = nncf.strip(qmodel, do_copy=True, strip_format=nncf.StripFormat.NATIVE,
                            example_input=torch.zeros(1, c, h, w))
    with evaluating(native):
        reference = native(torch.from_numpy(check)).numpy()
    with scratch_dir(out.parent, out.name) as tmp:
        staged = tmp / out.name
        with warnings.catch_warnings():  # NNCF's hooks read quantizer settings as Python values while traced
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # export_onnx's own check is the fp32 one; an int8 graph is judged on agreement below.
            record = export_onnx(native, meta, staged, validate=False, source_sha256=source_sha256)
        session = ort.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
        record["validation"] = _validate("ONNX", reference, session.run(None, {INPUT_NAME: check})[0], meta)
        os.replace(staged, out)
    record.update(path=str(out), quantization="qat")
    return record


def _fake_quantize(model: nn.Module, calib: list[np.ndarray]) -> nn.Module:
    """nncf.quantize on the torch model: quantizers with initial ranges from the calibration batches."""
    import nncf

    dataset = nncf.Dataset([torch.from_numpy(x) for x in calib])
    # Items are batches: statistics over each batch, as NNCF advises when an item holds several samples.
    return nncf.quantize(model, dataset, subset_size=len(calib),
                         advanced_parameters=nncf.AdvancedQuantizationParameters(batchwise_statistics=True))


def _fine_tune(qmodel: nn.Module, bundle: Any, config: QATConfig, execution: Execution,
               progress: Callable[..., None] | None, task: Task) -> list[dict[str, Any]]:
    """`config.epochs` of the task's plain loss on the augmented training split, on `execution`'s device (back on
    the CPU after, for export); the draws depend on seed and epoch."""
    torch.manual_seed(config.seed)
    history = []
    with placed(execution, qmodel):
        optimizer = torch.optim.Adam([p for p in qmodel.parameters() if p.requires_grad], lr=config.lr)
        for epoch in range(config.epochs):
            torch.manual_seed(config.seed * 10_007 + epoch)
            loader = torch.utils.data.DataLoader(bundle.dataset("train"), config.batch_size, shuffle=True,
                                                 generator=torch.Generator().manual_seed(config.seed * 10_007 + epoch),
                                                 pin_memory=execution.pin_memory,
                                                 collate_fn=getattr(bundle, "collate", None))
            start = time.perf_counter()
            loss, acc, seen = train_epoch(qmodel, loader, optimizer,
                                          task.criterion(bundle, execution.device, model=qmodel),
                                          progress, execution, task=task)
            history.append({"epoch": epoch + 1, "train_loss": loss, f"train_{task.metric}": acc, "samples": seen,
                            "seconds": round(time.perf_counter() - start, 2)})
            log.info("QAT epoch %d/%d  loss %.4f%s", epoch + 1, config.epochs, loss,
                     "" if acc is None else f"  {task.metric} {acc:.4f}")
    qmodel.eval()
    return history


def _post_training_int8(model: nn.Module, meta: ModelMeta, sha: str, calib: list[np.ndarray],
                        out_xml: Path) -> dict[str, Any]:
    """Plain NNCF post-training INT8 of the fp32 IR, from the same calibration images, for comparison."""
    from edgeres.export.openvino.convert import export_openvino
    from edgeres.export.openvino.quantize import quantize_openvino

    with scratch_dir(out_xml.parent, "qat-fp32") as tmp:
        fp32 = export_openvino(model, meta, tmp / "model.fp32.xml", source_sha256=sha)
        record = quantize_openvino(fp32["path"], calib, out_xml, subset_size=sum(map(len, calib)))
    record.update(sha256=sha256_file(out_xml), source_ir="(temporary fp32 IR)")
    return record


def _accuracy(path: str, bundle: Any, backend: str | None = None) -> tuple[float, str]:
    """The test-split headline metric (top-1 for a classifier) of an artifact through its Runner, and the
    precision that Runner executes."""
    from edgeres import runtime
    from edgeres.evaluate.predict import evaluate_runner

    runner = runtime.load(path, backend=backend)
    metrics, _ = evaluate_runner(runner, bundle, splits=("test",))
    return get_task(runner.meta.task).headline(metrics["test"]), runner.info.precision


def _validate(what: str, reference: np.ndarray, candidate: np.ndarray, meta: ModelMeta) -> dict[str, Any]:
    """Judge a runtime's INT8 outputs against the fake-quantized torch model on the validation split."""
    task = get_task(meta.task)
    stats = task.compare(reference, candidate)
    # simulated: integer kernels requantize unlike the float simulation, so the task allows more room.
    reasons = task.judge(stats, task.tolerance("int8", simulated=True))
    if reasons:
        raise RuntimeError(f"the QAT {what} export does not match the fake-quantized model: {'; '.join(reasons)}")
    return stats


def _export_meta(meta: ModelMeta, config: QATConfig, folded: int, samples: int) -> ModelMeta:
    qat = dict(method="qat", config=dataclasses.asdict(config), calibration_samples=samples, batchnorm_folded=folded)
    return dataclasses.replace(copy.deepcopy(meta), compression={**meta.compression, "quantization": qat})


def _load_bundle(meta: ModelMeta, source: Path) -> Any:
    from edgeres.evaluate import load_task_data

    if not meta.data:
        raise UserInputError(f"{source} records no training data; QAT needs it to calibrate, fine-tune and measure")
    return load_task_data(meta)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[key] = time.perf_counter() - start
