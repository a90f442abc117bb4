"""Post-training INT8 quantization of an OpenVINO IR with NNCF, keeping attention gates in float."""
from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from edgeres.errors import UserInputError
from edgeres.export.onnx.quantize import downstream, in_scope
from edgeres.export.openvino.convert import (WEIGHTED_OPS, check_ir_path, float_layers, ir_precision,
                                            quantized_ops, read_edgeres_info, save_ir, set_edgeres_info, xml_path)
from edgeres.runtime.embedded import GRAPH_FIELDS, graph_fields

PRESETS = ("performance", "mixed")
_GATES = {"Sigmoid", "HSigmoid"}
# Ops between a gate and the tensor it multiplies that change only the gate's layout.
_LAYOUT = {"Reshape", "Unsqueeze", "Squeeze", "Broadcast", "Convert", "Tile"}
# Parameter-free math that computes a gate from its input (SimAM's energy term and the like).
_GATE_MATH = {"ReduceMean", "ReduceSum", "ReduceMax", "Subtract", "Power", "SquaredDifference", "Divide",
              "Add", "Multiply", "Sqrt", "Exp", "Clamp", "Maximum", "Minimum", "Negative", "Abs"}
_MAX_GATE_OPS = 24  # a longer chain means the walk left the gate and entered the network


def find_attention(ov_model: Any) -> list[dict[str, Any]]:
    """Attention sites that quantize badly, found by op pattern: sigmoid gates with their math, and Softmax.

    Each site: {"kind": "sigmoid-gate" | "softmax", "nodes": op names found, "op_types": their types,
    "ignore": the names to keep in float (see _safe_to_ignore for the ones left out)}.
    """
    sites = []
    for op in ov_model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Softmax":
            nodes, ignore = [op], [op]
        elif kind in _GATES:
            multiply, gated = _gated_multiply(op)
            # A sigmoid that scales nothing is an output; x * sigmoid(x) is the SiLU activation.
            if multiply is None or op.input(0).get_source_output().get_node() is gated:
                continue
            nodes = [*_gate_math(op, gated), op, multiply]
            ignore = [n for n in nodes if _safe_to_ignore(n, gated)]
        else:
            continue
        sites.append({
            "kind": "softmax" if kind == "Softmax" else "sigmoid-gate",
            "nodes": [n.get_friendly_name() for n in nodes],
            "op_types": sorted({n.get_type_name() for n in nodes}),
            "ignore": [n.get_friendly_name() for n in ignore],
        })
    return sites


def _safe_to_ignore(node: Any, gated: Any) -> bool:
    """False for ops reading the gated tensor straight from a bias-less Convolution/MatMul.

    OpenVINO's CPU plugin (2026.4) miscomputes an int8 bias-less convolution whose output feeds
    float (ignored) ops in a dynamic-batch model: outputs collapse towards zero. SimAM sits right
    after conv2, before bn2, so this is the common case there. Letting NNCF quantize those readers
    puts a FakeQuantize on the convolution output, which avoids it; the gate math stays float.
    """
    if gated.get_type_name() not in WEIGHTED_OPS:
        return True
    return all(i.get_source_output().get_node() is not gated for i in node.inputs())


def quantize_openvino(
    fp32_xml: str | Path,
    calib_batches: Sequence[np.ndarray],
    out_xml: str | Path,
    *,
    ignored_attention: bool = True,
    keep_float: Sequence[str] | None = None,
    preset: str = "performance",
    subset_size: int = 300,
    fast_bias_correction: bool = True,
) -> dict[str, Any]:
    """INT8-quantize a float IR with nncf.quantize from the first `subset_size` calibration samples
    (normalised NCHW float32 batches from the training split).

    keep_float: module-name prefixes kept in float with every op downstream of them (a detector's output
      convs and box decode); None: the prefixes the export recorded (the model's `keep_float`).
    """
    import nncf

    model, meta, fields, xml = _read_float_ir(fp32_xml)
    out_xml = xml_path(out_xml)
    dataset, items, samples = _calibration(model, calib_batches, subset_size)
    sites, scope = _ignored_scope(model, ignored_attention, _scopes(fields, keep_float, xml))
    start = time.perf_counter()
    with _quiet_nncf():
        quantized = nncf.quantize(model, dataset, **_nncf_args(preset, items, fast_bias_correction, scope, nncf))
    seconds = time.perf_counter() - start
    _save_quantized(quantized, meta, fields, samples, out_xml)
    return _record(xml, out_xml, quantized, preset, samples, sites, seconds)


def quantize_openvino_with_accuracy_control(
    fp32_xml: str | Path,
    calib_batches: Sequence[np.ndarray],
    val_batches: Sequence[tuple[np.ndarray, np.ndarray]],
    out_xml: str | Path,
    max_drop: float = 0.01,
    *,
    ignored_attention: bool = True,
    keep_float: Sequence[str] | None = None,
    preset: str = "performance",
    subset_size: int = 300,
    max_reverted: int | None = None,
) -> dict[str, Any]:
    """INT8 with nncf.quantize_with_accuracy_control: reverts the most sensitive layers to float
    until top-1 accuracy on `val_batches` ((images, labels) pairs) drops by at most `max_drop`
    (absolute, as a fraction: 0.01 is one percentage point)."""
    import nncf
    import openvino as ov

    if not 0.0 <= max_drop < 1.0:
        raise UserInputError(f"max_drop is an absolute top-1 drop as a fraction in [0, 1), got {max_drop}")
    model, meta, fields, xml = _read_float_ir(fp32_xml)
    out_xml = xml_path(out_xml)
    dataset, items, samples = _calibration(model, calib_batches, subset_size)
    val_items = _validation_items(model, val_batches)
    sites, scope = _ignored_scope(model, ignored_attention, _scopes(fields, keep_float, xml))
    restorer = {} if max_reverted is None else {"max_num_iterations": max_reverted}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, _quiet_nncf():
        # NNCF saves its first, fully quantized model here: the diff with the result names what it reverted.
        params = nncf.AdvancedAccuracyRestorerParameters(intermediate_model_dir=tmp, **restorer)
        quantized = nncf.quantize_with_accuracy_control(
            model, dataset, nncf.Dataset(val_items, lambda item: item[0]), _top1_accuracy,
            max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE,
            advanced_accuracy_restorer_parameters=params,
            **_nncf_args(preset, items, True, scope, nncf),
        )
        first = ov.Core().read_model(Path(tmp) / "intermediate_model.xml")
        reverted = sorted(quantized_ops(first, agnostic=False) - quantized_ops(quantized, agnostic=False))
    seconds = time.perf_counter() - start
    _save_quantized(quantized, meta, fields, samples, out_xml)
    record = _record(xml, out_xml, quantized, preset, samples, sites, seconds)
    record.update(max_drop=max_drop, validation_samples=int(sum(len(y) for _, y in val_items)),
                  reverted_by_nncf=reverted)
    return record


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs a line for every op an ignored scope leaves in float (hundreds for a detector's decode), and
    draws its own progress bars ("Statistics collection", "Applying Fast Bias correction") on stdout, where
    the CLI's tables go. Both stay out of the user's terminal unless edgeres runs with --verbose (DEBUG)."""
    import io
    import sys

    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    verbose = logging.getLogger("edgeres").isEnabledFor(logging.DEBUG)
    try:
        with contextlib.redirect_stdout(sys.stdout if verbose else io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _gated_multiply(gate: Any) -> tuple[Any, Any]:
    """The Multiply a gate scales, and the node producing the tensor it scales; (None, None) if none."""
    frontier, seen = [gate], set()
    while frontier:
        node = frontier.pop()
        for out in node.outputs():
            for target in out.get_target_inputs():
                user = target.get_node()
                if user.get_type_name() == "Multiply":
                    other = user.input(1 - target.get_index()).get_source_output().get_node()
                    return user, other
                if user.get_type_name() in _LAYOUT and id(user) not in seen:
                    seen.add(id(user))
                    frontier.append(user)
    return None, None


def _gate_math(gate: Any, gated: Any) -> list[Any]:
    """The parameter-free ops computing `gate` from `gated` (SimAM's energy); stops at weighted layers."""
    found, frontier = {}, [gate]
    while frontier:
        node = frontier.pop()
        for inp in node.inputs():
            src = inp.get_source_output().get_node()
            if src is gated or src.get_friendly_name() in found or not _is_gate_math(src):
                continue
            found[src.get_friendly_name()] = src
            frontier.append(src)
            if len(found) > _MAX_GATE_OPS:
                return []
    return list(found.values())


def _is_gate_math(node: Any) -> bool:
    if node.get_type_name() not in _GATE_MATH or not node.get_output_element_type(0).is_real():
        return False
    sources = [i.get_source_output().get_node() for i in node.inputs()]
    # A bias Add belongs to its Convolution/MatMul, which stays quantized.
    return not (node.get_type_name() == "Add" and any(s.get_type_name() in WEIGHTED_OPS for s in sources))


def _ignored_scope(model: Any, attention: bool, keep_float: Sequence[str]) -> tuple[list[dict[str, Any]], Any]:
    """Attention sites (when `attention`) and the `keep_float` scopes as one NNCF ignored scope."""
    import nncf

    sites = find_attention(model) if attention else []
    if keep_float:
        sites.append({"kind": "keep-float", "scopes": list(keep_float),
                      "ignore": find_scope_ops(model, keep_float)})
    names = sorted({n for site in sites for n in site["ignore"]})
    return sites, (nncf.IgnoredScope(names=names) if names else None)


def find_scope_ops(ov_model: Any, prefixes: Sequence[str]) -> list[str]:
    """Ops of the modules `prefixes` names (relative to the model, e.g. "heads") and every op downstream of them.

    OpenVINO names a converted op by the module it was traced in ("__module.model.heads.0/aten::_convolution/
    Convolution"); the ops their outputs reach (a detector's decode and NMS) are kept too. A prefix that names
    no op is refused: the model declared a module the graph lacks.
    """
    seeds = []
    for prefix in prefixes:
        found = [op for op in ov_model.get_ordered_ops() if in_scope(_ov_scope(op.get_friendly_name()), prefix)]
        if not found:
            raise RuntimeError(f"keep_float names {prefix!r}, but no op of the IR comes from it")
        seeds += found
    users = (lambda op: [t.get_node() for out in op.outputs() for t in out.get_target_inputs()])
    return [op.get_friendly_name() for op in downstream(seeds, users, key=lambda op: op.get_friendly_name())
            if op.get_type_name() not in ("Constant", "Parameter", "Result")]


def _ov_scope(name: str) -> str:
    head = name.split("/", 1)[0]
    return head[len("__module."):] if head.startswith("__module.") else ""


def _scopes(fields: dict[str, Any], given: Sequence[str] | None, xml: Path) -> list[str]:
    return list(graph_fields(fields, xml)["keep_float"] if given is None else given)


def _nncf_args(preset: str, items: int, fast_bias_correction: bool, scope: Any, nncf: Any) -> dict[str, Any]:
    if preset not in PRESETS:
        raise UserInputError(f"quantization preset must be one of {PRESETS}, got {preset!r}")
    # NNCF counts subset_size in dataset items, which are single samples unless the IR's batch is static.
    return {"preset": nncf.QuantizationPreset(preset), "subset_size": items,
            "fast_bias_correction": fast_bias_correction, "ignored_scope": scope,
            "target_device": nncf.TargetDevice.CPU}


def _read_float_ir(path: str | Path) -> tuple[Any, Any, dict[str, Any], Path]:
    import openvino as ov

    xml = check_ir_path(path)
    model = ov.Core().read_model(xml)
    meta, fields = read_edgeres_info(model, xml)
    if ir_precision(model)["int8"]:
        raise UserInputError(f"{xml}: already quantized; quantize the float (fp32) IR instead")
    return model, meta, {k: v for k, v in fields.items() if k in ("source_sha256", *GRAPH_FIELDS)}, xml


def _calibration(model: Any, batches: Sequence[np.ndarray], subset_size: int) -> tuple[Any, int, int]:
    """An nncf.Dataset of the first `subset_size` samples, one per item (or the IR's static batch per
    item), with its item and sample counts."""
    import nncf

    if subset_size < 1:
        raise UserInputError(f"subset_size must be positive, got {subset_size}")
    images = _stack(model, batches, "calibration batch")
    n = model.input(0).get_partial_shape()[0]
    step = n.get_length() if n.is_static else 1
    # Per-sample items give per-sample statistics, which NNCF recommends over batchwise ones.
    items = [images[i:i + step] for i in range(0, min(len(images), subset_size) - step + 1, step)]
    if not items:
        raise UserInputError(f"need at least {step} calibration samples for this static-batch IR, got {len(images)}")
    return nncf.Dataset(items), len(items), len(items) * step


def _validation_items(model: Any, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = [(_stack(model, [x], "validation batch"), np.asarray(y).reshape(-1)) for x, y in _pairs(pairs)]
    n = model.input(0).get_partial_shape()[0]
    if n.is_dynamic:
        return pairs
    # A static-batch IR takes exactly its batch size: regroup, dropping the remainder.
    images, labels, step = np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs]), n.get_length()
    return [(images[i:i + step], labels[i:i + step]) for i in range(0, len(images) - step + 1, step)]


def _pairs(pairs: Iterable[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = list(pairs)
    if not pairs or any(not isinstance(p, tuple) or len(p) != 2 or len(p[0]) != len(p[1]) for p in pairs):
        raise UserInputError("validation data must be a non-empty list of (images, labels) pairs of equal length")
    return pairs


def _top1_accuracy(compiled: Any, items: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    correct = total = 0
    for images, labels in items:
        logits = compiled(images)[0]
        correct += int((logits.argmax(1) == labels).sum())
        total += len(labels)
    return correct / max(total, 1)


def _stack(model: Any, batches: Sequence[np.ndarray], what: str) -> np.ndarray:
    expected = tuple(d.get_length() for d in list(model.input(0).get_partial_shape())[1:])
    if not len(batches):
        raise UserInputError(f"no {what}es given")
    for b in batches:
        if not isinstance(b, np.ndarray) or b.ndim != 4 or b.shape[1:] != expected or b.dtype != np.float32:
            raise UserInputError(f"each {what} must be a float32 numpy array of shape (N, {', '.join(map(str, expected))}), "
                                 f"got {getattr(b, 'dtype', type(b).__name__)} {getattr(b, 'shape', '')}")
    return np.ascontiguousarray(np.concatenate(batches))


def _save_quantized(quantized: Any, meta: Any, fields: dict[str, Any], samples: int, out_xml: Path) -> None:
    import nncf
    import openvino as ov

    set_edgeres_info(quantized, meta, {**fields, "precision": "int8", "calibration_samples": samples,
                                       "openvino_version": ov.get_version(), "nncf_version": nncf.__version__})
    # Keep the layers NNCF left in float at fp32: fp16 weights there would blur what "int8" executes.
    save_ir(quantized, out_xml, compress_to_fp16=False)


def _record(xml: Path, out_xml: Path, quantized: Any, preset: str, samples: int,
            sites: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    import nncf
    import openvino as ov

    attention = [site for site in sites if site["kind"] != "keep-float"]
    kept = [site for site in sites if site["kind"] == "keep-float"]
    ignored = sorted({n for site in attention for n in site["ignore"]})
    return {
        "format": "openvino", "precision": "int8", "path": str(out_xml), "bin_path": str(out_xml.with_suffix(".bin")),
        "source_ir": str(xml), "preset": preset, "calibration_samples": samples,
        # What NNCF's presets mean on its CPU target; the weights are scaled per output channel in both.
        "symmetric": {"activations": preset == "performance", "weights": True}, "per_channel": True,
        "method": "minmax weights, mean_minmax activations",
        "attention_sites": len(attention), "ignored_attention": ignored,
        "keep_float": [p for site in kept for p in site["scopes"]],
        "kept_in_float": sorted({n for site in kept for n in site["ignore"]}),
        "float_layers": float_layers(quantized), "seconds": round(seconds, 2),
        "openvino_version": ov.get_version(), "nncf_version": nncf.__version__,
    }
