"""Export a PyTorch model to a checked, simplified ONNX file that carries its edgeres metadata."""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeres.artifacts import atomic_path, sha256_file
from edgeres.errors import UserInputError
from edgeres.meta import ModelMeta
from edgeres.models.base import EdgeModel, evaluating
from edgeres.runtime.embedded import DETECTIONS, INPUT_NAME, META_KEY, OUTPUT_NAME, read_meta, read_onnx_meta
from edgeres.tasks import get_task

EXPORTERS = ("torchscript", "dynamo")
# The dynamo exporter has no translations below opset 18 and cannot always convert down.
_DYNAMO_MIN_OPSET = 18


def export_onnx(
    model: nn.Module,
    meta: ModelMeta,
    out: str | Path,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    simplify: bool = True,
    batch_size: int = 1,
    source_sha256: str | None = None,
    exporter: str = "torchscript",
    validate: bool = True,
    nms: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export `model.inference_module(nms)` to `out` (ONNX, input "input", its `output_names`); return what was done.

    batch_size: the fixed batch of a static export, and the batch used to trace and validate.
    source_sha256: identity of the checkpoint the model came from, stored in the file.
    validate: run the file in ONNX Runtime against the model before it is renamed into place.
    nms: {"max_det", "iou", "conf"} builds a detector's NMS into the graph (output "detections").
    """
    import onnx

    if exporter not in EXPORTERS:
        raise UserInputError(f"unknown ONNX exporter {exporter!r}; choose one of {list(EXPORTERS)}")
    if batch_size < 1:
        raise UserInputError(f"batch_size must be a positive integer, got {batch_size}")
    out = Path(out)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(batch_size, *meta.input_shape, generator=gen)
    # A dynamic export is checked at a batch other than the traced one, so a baked-in batch size shows up.
    check = torch.randn(batch_size + int(dynamic_batch), *meta.input_shape, generator=gen)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="edgeres-onnx-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with evaluating(model):
            module, names = export_module(model, nms)
            _torch_export(module, sample.to(device), raw, names, opset=opset, dynamic_batch=dynamic_batch,
                          exporter=exporter)
            reference = _named(module(check.to(device)), names) if validate else None
        proto = onnx.load(str(raw))
    nodes_before = len(proto.graph.node)
    if simplify:
        proto = _simplify(proto)
    graph = {"output_names": names, "nms": nms, "keep_float": keep_float(model)}
    _embed_metadata(proto, meta, source_sha256, graph)
    onnx.checker.check_model(proto, full_check=True)
    record = _describe(proto, exporter, simplify, nodes_before, graph)
    with atomic_path(out) as tmp_path:
        onnx.save(proto, str(tmp_path))
        if validate:
            record["validation"] = _validate(tmp_path, meta, check.numpy(), reference)
    record.update(path=str(out), bytes=out.stat().st_size, sha256=sha256_file(out))
    return record


def export_module(model: nn.Module, nms: dict[str, Any] | None = None) -> tuple[nn.Module, list[str]]:
    """What exporters trace, in eval mode (call inside `evaluating(model)`), and its output names.

    A zoo model gives `model.inference_module(nms)`; one without a "detections" output cannot take NMS and is
    refused, whatever its task. A plain nn.Module (torchvision's ResNet) is a classifier with one output, "logits".
    """
    if not isinstance(model, EdgeModel):
        if nms is not None:
            raise UserInputError(f"nms needs a detector; {type(model).__name__} is a plain classifier")
        return model.eval(), [OUTPUT_NAME]
    module = model.inference_module(nms=nms).eval()
    names = list(module.output_names)
    if nms is not None and DETECTIONS not in names:
        raise UserInputError(f"nms needs a model with detection outputs; {type(model).__name__} outputs "
                             f"{names}. Export it without nms")
    return module, names


def keep_float(model: nn.Module) -> list[str]:
    """Module-name prefixes INT8 must keep in float: the zoo model's declaration; none for a plain module."""
    return list(model.keep_float) if isinstance(model, EdgeModel) else []


def _named(outputs: Any, names: list[str]) -> dict[str, np.ndarray]:
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return {name: out.float().cpu().numpy() for name, out in zip(names, outputs, strict=True)}


def _torch_export(module: nn.Module, sample: torch.Tensor, path: Path, output_names: list[str], *, opset: int,
                  dynamic_batch: bool, exporter: str) -> None:
    names = dict(input_names=[INPUT_NAME], output_names=output_names)
    if exporter == "dynamo":
        dims = ({0: torch.export.Dim("batch")},) if dynamic_batch else None  # positional: any argument name
        torch.onnx.export(module, (sample,), str(path), dynamo=True, opset_version=max(opset, _DYNAMO_MIN_OPSET),
                          dynamic_shapes=dims, external_data=False, verbose=False, **names)
        return
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *output_names]} if dynamic_batch else None
    with warnings.catch_warnings():
        # The TorchScript path is chosen on purpose (see the package docstring); its deprecation notice is noise.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        # A traced NMS warns that its output size depends on the data: it does, and ONNX computes it so.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # Box gathers index with non-negative indices only, the case the exporter's warning does not cover.
        warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
        try:
            torch.onnx.export(module, (sample,), str(path), dynamo=False, opset_version=opset,
                              do_constant_folding=True, dynamic_axes=axes, **names)
        except (TypeError, AttributeError, ImportError) as e:
            raise RuntimeError(f"the TorchScript ONNX exporter failed ({e}); try exporter='dynamo'") from e


def _simplify(proto: Any) -> Any:
    import onnxslim

    # torch writes `amax()` over all dims as axes=[], which means the same as no axes attribute (reduce
    # everything) but which onnxslim cannot re-export; drop it first.
    for node in proto.graph.node:
        empty = [a for a in node.attribute if a.name == "axes" and not a.ints and a.type == a.INTS]
        for attribute in empty:
            node.attribute.remove(attribute)
    return onnxslim.slim(proto)


def _embed_metadata(proto: Any, meta: ModelMeta, source_sha256: str | None, graph: dict[str, Any]) -> None:
    readable = {
        **{key: json.dumps(value) for key, value in graph.items()},
        META_KEY: json.dumps(meta.to_dict(), sort_keys=True),
        "class_names": json.dumps(meta.class_names),
        "mean": json.dumps(list(meta.mean)),
        "std": json.dumps(list(meta.std)),
        "input_size": json.dumps(list(meta.input_shape)),
        "source_sha256": source_sha256 or "",
    }
    kept = [p for p in proto.metadata_props if p.key not in readable]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in readable.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "edgeres"


def input_shape(proto: Any) -> list[int | None]:
    """The graph input's shape, None for a symbolic dimension."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _describe(proto: Any, exporter: str, simplify: bool, nodes_before: int, graph: dict[str, Any]) -> dict[str, Any]:
    import onnx

    shape = input_shape(proto)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    record: dict[str, Any] = {
        "format": "onnx",
        "opset": opset,
        "dynamic_batch": shape[0] is None,
        "input_name": INPUT_NAME,
        "output_names": graph["output_names"],
        "nms": graph["nms"],
        "input_shape": shape,
        "exporter": exporter,
        "simplifier": None,
        "nodes": len(proto.graph.node),
        "nodes_before_simplify": nodes_before,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
    }
    if simplify:
        import onnxslim

        record["simplifier"] = {"name": "onnxslim", "version": onnxslim.__version__}
    return record


def _validate(path: Path, meta: ModelMeta, sample: np.ndarray, reference: dict[str, np.ndarray]) -> dict[str, Any]:
    """The file in ONNX Runtime against the PyTorch outputs, judged by the model's task at fp32 tolerance."""
    task = get_task(meta.task)
    stats = task.compare(reference, run_onnx(path, sample))
    reasons = task.judge(stats, task.tolerance("fp32"))
    if reasons:
        raise RuntimeError(f"the ONNX export does not match the PyTorch model: {'; '.join(reasons)}")
    return stats


def run_onnx(path: Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs of an ONNX file on `batch` in a plain ONNX Runtime CPU session, by name."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {INPUT_NAME: batch})
    return {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), outputs)}
