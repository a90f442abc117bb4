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
from edgeres.models.base import evaluating
from edgeres.runtime.embedded import INPUT_NAME, META_KEY, OUTPUT_NAME, read_meta, read_onnx_meta

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
) -> dict[str, Any]:
    """Export `model` to `out` (ONNX, input "input", output "logits") and return what was done.

    batch_size: the fixed batch of a static export, and the batch used to trace and validate.
    source_sha256: identity of the checkpoint the model came from, stored in the file.
    validate: run the file in ONNX Runtime against the model before it is renamed into place.
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
            _torch_export(model, sample.to(device), raw, opset=opset, dynamic_batch=dynamic_batch, exporter=exporter)
            reference = model(check.to(device)).float().cpu().numpy() if validate else None
        proto = onnx.load(str(raw))
    nodes_before = len(proto.graph.node)
    if simplify:
        proto = _simplify(proto)
    _embed_metadata(proto, meta, source_sha256)
    onnx.checker.check_model(proto, full_check=True)
    record = _describe(proto, exporter, simplify, nodes_before)
    with atomic_path(out) as tmp_path:
        onnx.save(proto, str(tmp_path))
        if validate:
            record["validation"] = _validate(tmp_path, check.numpy(), reference)
    record.update(path=str(out), bytes=out.stat().st_size, sha256=sha256_file(out))
    return record


def _torch_export(model: nn.Module, sample: torch.Tensor, path: Path, *, opset: int, dynamic_batch: bool,
                  exporter: str) -> None:
    names = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    if exporter == "dynamo":
        dims = ({0: torch.export.Dim("batch")},) if dynamic_batch else None  # positional: any argument name
        torch.onnx.export(model, (sample,), str(path), dynamo=True, opset_version=max(opset, _DYNAMO_MIN_OPSET),
                          dynamic_shapes=dims, external_data=False, verbose=False, **names)
        return
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # The TorchScript path is chosen on purpose (see the package docstring); its deprecation notice is noise.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            torch.onnx.export(model, (sample,), str(path), dynamo=False, opset_version=opset,
                              do_constant_folding=True, dynamic_axes=axes, **names)
        except (TypeError, AttributeError, ImportError) as e:
            raise RuntimeError(f"the TorchScript ONNX exporter failed ({e}); try exporter='dynamo'") from e


def _simplify(proto: Any) -> Any:
    import onnxslim

    return onnxslim.slim(proto)


def _embed_metadata(proto: Any, meta: ModelMeta, source_sha256: str | None) -> None:
    readable = {
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


def _describe(proto: Any, exporter: str, simplify: bool, nodes_before: int) -> dict[str, Any]:
    import onnx

    shape = input_shape(proto)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    record: dict[str, Any] = {
        "format": "onnx",
        "opset": opset,
        "dynamic_batch": shape[0] is None,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
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


def _validate(path: Path, sample: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    import onnxruntime as ort

    from edgeres.export.validate import TOLERANCES, compare_outputs, judge

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    stats = compare_outputs(reference, session.run(None, {INPUT_NAME: sample})[0])
    reasons = judge(stats, TOLERANCES["fp32"])
    if reasons:
        raise RuntimeError(f"the ONNX export does not match the PyTorch model: {'; '.join(reasons)}")
    return stats
