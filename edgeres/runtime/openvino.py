"""OpenVINO backend: runs an edgeres OpenVINO IR (.xml + .bin) on the CPU plugin."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.artifacts import check_recorded_sha256
from edgeres.errors import UserInputError
from edgeres.runtime.embedded import check_ir_path, ir_precision, read_edgeres_info
from edgeres.runtime.base import Outputs, Runner, RunnerInfo

log = logging.getLogger("edgeres")

# edgeres precision name -> the CPU plugin's INFERENCE_PRECISION_HINT value.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_HINT_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


class OpenVinoRunner(Runner):
    """An IR compiled for CPU with a LATENCY hint; one InferRequest reused across calls.

    `precision`: None runs the plugin's default (bf16 on CPUs with native bf16/AMX, else fp32);
    "fp32", "bf16" or "fp16" set INFERENCE_PRECISION_HINT; "int8" accepts only a quantized IR.
    `info.precision` says what executes, as reported by the compiled model, not what was asked:
      "fp32" / "bf16" / "fp16"      float IR, computed in that precision;
      "fp16-weights/fp32" (or /bf16) weights stored in fp16 (compress_to_fp16), computed in fp32 (bf16);
      "int8"                        quantized IR (FakeQuantize), the layers left in float run fp32;
      "int8/bf16" (or /fp16)        quantized IR, the layers left in float run bf16 (fp16);
      "int8-weights/fp32" (...)     weights compressed to int8/int4 only, activations in float.
    """

    def __init__(self, path: str | Path, precision: str | None = None, threads: int | None = None):
        import openvino as ov

        xml = check_ir_path(path)
        check_recorded_sha256(xml, xml.with_suffix(".bin"))
        core = ov.Core()
        try:
            model = core.read_model(xml)
        except RuntimeError as e:
            # OpenVINO prefixes its message with source locations ("Exception from src/..."): keep the reason.
            reason = [line for line in str(e).splitlines() if line.strip() and not line.startswith("Exception from")]
            raise UserInputError(f"{xml}: OpenVINO cannot read this IR: {' '.join(reason).strip()[:300]}") from e
        self.meta, fields = read_edgeres_info(model, xml)
        graph = ir_precision(model)
        config = _compile_config(xml, precision, threads, graph["int8"])
        compiled = core.compile_model(model, "CPU", config)
        hint = str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
        if precision in PRECISION_HINTS and PRECISION_HINTS[precision] != hint:
            log.warning("%s: asked for %s, this CPU runs %s", xml, precision, _HINT_NAMES.get(hint, hint))
        self._compiled = compiled
        # One request for the Runner's life: no per-call allocation, and inputs are shared, not copied.
        self._request = compiled.create_infer_request()
        self._output_names = [o.get_any_name() for o in compiled.outputs]
        self.info = RunnerInfo(
            backend="openvino",
            precision=execution_precision(hint, int8=graph["int8"], fp16_weights=graph["fp16_weights"],
                                          int8_weights=graph["int8_weights"]),
            device="CPU: " + str(core.get_property("CPU", "FULL_DEVICE_NAME")),
            threads=int(compiled.get_property("INFERENCE_NUM_THREADS")),
            input_shape=_input_shape(model, xml),
            path=str(xml),
            versions={"openvino": ov.get_version()},
            extra={
                "requested_precision": precision,
                "inference_precision_hint": hint,
                "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
                **graph,
                **{f"export_{k}": v for k, v in fields.items()},
            },
        )

    def run(self, batch: np.ndarray) -> Outputs:
        infer_shared(self._request, batch)
        # The request's output buffers are overwritten by the next call: hand out copies.
        return {name: self._request.get_output_tensor(i).data.copy() for i, name in enumerate(self._output_names)}


def infer_shared(request: Any, x: np.ndarray) -> None:
    """Run `request` on `x` read in place: a writeable C-contiguous array is bound as a shared Tensor, ~4% faster
    per call than infer({0: x}, share_inputs=True) for the demo model, with or without a 640x480 frame in front
    (benchmarks/preprocess.py). OpenVINO cannot share a read-only array (np.asarray of a PIL image): it copies it."""
    import openvino as ov

    if x.flags.writeable and x.flags.c_contiguous:
        request.set_input_tensor(ov.Tensor(x, shared_memory=True))
        request.infer()
    else:
        request.infer({0: x}, share_inputs=True)


def execution_precision(hint: str, *, int8: bool, fp16_weights: bool, int8_weights: bool = False) -> str:
    """The label for what executes (see OpenVinoRunner) from the compiled hint and the IR's contents."""
    compute = _HINT_NAMES.get(hint, hint)
    if int8:
        return "int8" if compute == "fp32" else f"int8/{compute}"
    if int8_weights:
        return f"int8-weights/{compute}"
    if fp16_weights and compute != "fp16":
        return f"fp16-weights/{compute}"
    return compute


def _compile_config(xml: Path, precision: str | None, threads: int | None, int8: bool) -> dict[str, Any]:
    choices = (None, "int8", *PRECISION_HINTS)
    if precision not in choices:
        raise UserInputError(f"OpenVINO precision must be one of {choices}, got {precision!r}")
    if precision == "int8" and not int8:
        raise UserInputError(f"{xml}: precision 'int8' needs a quantized IR (edgeres.export.openvino.quantize); "
                             "this one holds no FakeQuantize")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UserInputError(f"threads must be a positive integer, got {threads!r}")
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    if precision in PRECISION_HINTS:
        config["INFERENCE_PRECISION_HINT"] = PRECISION_HINTS[precision]
    return config


def _input_shape(model: Any, xml: Path) -> tuple[int | None, int, int, int]:
    if len(model.inputs) != 1:
        raise UserInputError(f"{xml}: expected one input, the IR has {len(model.inputs)}")
    shape = model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() != 4 or any(d.is_dynamic for d in list(shape)[1:]):
        raise UserInputError(f"{xml}: expected an NCHW input with static C, H, W, got {shape}")
    n, c, h, w = (d.get_length() if d.is_static else None for d in shape)
    return n, c, h, w
