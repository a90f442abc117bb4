"""In-graph preprocessing: an exported model that takes a camera's uint8 H x W x 3 RGB frames as they come.

The host path (a task's `prepare`: PIL, an antialiased resize, HWC -> CHW, (x / 255 - mean) / std in numpy)
costs about as much as a small model. Here the same steps go in front of the graph:

    uint8 NHWC frame -> float -> [grey: PIL's L weights] -> Pillow's bilinear resize (antialiased when
    shrinking) -> [letterbox: pad with 114 to S x S] -> x / (255 std) - mean / std -> NCHW -> the model

The resize is Pillow's triangle filter on both sides (classification's host path, torch's antialiased
bilinear on floats, computes the same weights; detection's, PIL BILINEAR on uint8, also rounds each pixel to
an integer, which the graph does not: at most half a grey level). The runtimes' own antialiased resizes are
exact but slow at 640x480 (OpenVINO's RESIZE_BILINEAR_PILLOW ~4-15 ms, ONNX Runtime's Resize antialias
~8-14 ms), so for a fixed frame size the weights become strided convolutions (`polyphase`) and, where the
width shrinks by a whole factor, one matrix product over contiguous pixel blocks; those serve any frame size
only through the runtime's resize (`frame=None`). For an INT8 IR with a fixed frame the width pass is instead
one integer matrix product on the uint8 frame as it lies (7-bit weights, within ~0.3 grey level of the float
ones on noise), which OpenVINO's low-precision kernels run without converting the whole frame to floats.

A letterbox's geometry depends on the frame's size, so a detector's graph is built for one frame size. The
dict each builder returns is the `input` block of a bundle's meta.json; the file carries it too (IR rt_info
edgeres/preprocess, ONNX metadata "preprocess"). The Runners take NCHW floats: `FrameSession` runs these files.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeres.artifacts import atomic_path
from edgeres.errors import UserInputError
from edgeres.letterbox import PAD_VALUE, letterbox_geometry
from edgeres.meta import MAX_IMG_SIZE, ModelMeta
from edgeres.runtime.embedded import INPUT_NAME, META_KEY, RT_KEY, check_ir_path, read_edgeres_info, read_meta, xml_path

PREPROCESS_KEY = "preprocess"  # IR rt_info edgeres/preprocess and ONNX metadata_props key: JSON of the input spec
FRAME_LAYOUT, FRAME_DTYPE, FRAME_COLOR = "NHWC", "uint8", "RGB"
# PIL's RGB -> L (ITU-R 601-2 luma) in 16-bit fixed point, rounded: L = (19595 R + 38470 G + 7471 B + 32768) >> 16.
# As floats w / 65536 these weights are exact, every partial sum stays below 256 with 16 fraction bits, so
# floor(sum + 0.5) reproduces PIL in float32 whatever order a runtime adds in.
GREY_WEIGHTS = tuple(w / 65536 for w in (19595, 38470, 7471))
MAX_FRAME = 8 * MAX_IMG_SIZE
RESIZE_PARTS = 1  # int8 resize weights: 7-bit parts per weight (quantize_weights); 2: ~10x closer, ~5% slower
FLOAT_TAIL_MACS = 4_000_000  # int8_resize by default only where the float products after it stay this small
INT8_RESIZE, RESIZED = "edgeres_preprocess/int8_width", "edgeres_preprocess/resized"  # IR node names
ONNX_RESIZE_OPS = ("Conv", "Resize", "MatMul")
_ANTIALIAS_OPSET = 18  # ONNX Resize gained `antialias` in opset 18


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the graph does to a frame: to `resized` (h, w), padded by `pad` (top, left, bottom, right) to S x S."""

    spec: dict[str, Any]  # the meta.json `input` block
    in_chans: int
    size: int
    frame: tuple[int, int] | None
    resized: tuple[int, int]
    pad: tuple[int, int, int, int]
    scale: tuple[float, ...]  # per channel: 1 / (255 std)
    shift: tuple[float, ...]  # per channel: -mean / std

    @property
    def padded(self) -> bool:
        return any(self.pad)


def plan_preprocess(meta: ModelMeta, frame: Sequence[int] | None, output_names: Sequence[str] = ()) -> Plan:
    """The steps for `meta`'s model fed (H, W) frames (None: any size); the task says resize or letterbox."""
    from edgeres.tasks import get_task

    fields = get_task(meta.task).deploy_fields(list(output_names))["input"]
    mode = fields["resize"]
    frame = _check_frame_size(frame)
    s = meta.img_size
    if mode == "letterbox":
        if frame is None:
            raise UserInputError(f"a {meta.task} model letterboxes, and the letterbox's geometry depends on the "
                                 "frame size: give the camera's frame size (frame=(H, W)) to build its graph")
        _, (rw, rh), (px, py) = letterbox_geometry(frame[1], frame[0], s)
        resized, pad = (rh, rw), (py, px, s - rh - py, s - rw - px)
    elif mode == "resize":
        resized, pad = (s, s), (0, 0, 0, 0)
    else:  # a new task's mode: refuse rather than build a graph that prepares differently from its host path
        raise UserInputError(f"in-graph preprocessing knows resize and letterbox, not {mode!r}")
    c = meta.in_chans
    mean, std = (np.broadcast_to(np.asarray(v, np.float64), (c,)) for v in (meta.mean, meta.std))
    spec = {"name": INPUT_NAME, "img_size": s, "in_chans": c, **fields, "mean": list(map(float, meta.mean)),
            "std": list(map(float, meta.std)), "color": FRAME_COLOR, "in_graph_preprocess": True,
            "layout": FRAME_LAYOUT, "dtype": FRAME_DTYPE, "frame": list(frame) if frame else None}
    return Plan(spec, c, s, frame, resized, pad, tuple(float(v) for v in 1 / (255 * std)),
                tuple(float(v) for v in -mean / std))


def check_frames(frames: Any, spec: dict[str, Any]) -> list[np.ndarray]:
    """`frames` (one H x W x 3 uint8 array, a list of them, or an N x H x W x 3 batch) as a list of frames,
    after refusing a wrong dtype, channel count or (for a fixed-frame graph) size."""
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = [frames]
    want = f"{'H x W' if spec['frame'] is None else 'x'.join(map(str, spec['frame']))} x 3 uint8 RGB"
    out = []
    for i, f in enumerate(frames):
        if not isinstance(f, np.ndarray):
            raise UserInputError(f"frame {i} must be a numpy array ({want}), got {type(f).__name__}")
        if f.dtype != np.uint8:
            raise UserInputError(f"frame {i} has dtype {f.dtype}; this model takes {want} frames as the camera "
                                 "gives them (not normalised floats)")
        if f.ndim != 3 or f.shape[2] != 3:
            raise UserInputError(f"frame {i} has shape {tuple(f.shape)}; this model takes {want} (channels last)")
        if spec["frame"] is not None and list(f.shape[:2]) != list(spec["frame"]):
            raise UserInputError(f"frame {i} is {f.shape[0]}x{f.shape[1]}; this model's graph was built for "
                                 f"{want} frames")
        out.append(np.ascontiguousarray(f))
    if not out:
        raise UserInputError("no frames given")
    return out


# ---------------------------------------------------------------- OpenVINO

def add_openvino_preprocess(model_xml: str | Path, out_xml: str | Path, meta: ModelMeta | None = None,
                            frame: Sequence[int] | None = None, *, int8_resize: bool | None = None) -> dict[str, Any]:
    """Write `out_xml`: the IR at `model_xml` behind OpenVINO's PrePostProcessor taking uint8 NHWC RGB frames
    (fixed (H, W), or any size with frame=None); returns the meta.json `input` block the file carries.

    int8_resize (default: for an INT8 IR with a fixed frame at least twice as wide as the model's input, where
    the float products after it stay under FLOAT_TAIL_MACS): the width pass as an integer matrix product on the
    uint8 frame (_openvino_int8_width), within ~0.3 grey level of the exact weights on noise (~0.02 on a
    camera's smooth frames); False keeps the exact float path. An FP32/FP16 IR, with no low-precision kernels
    to run it in, is refused."""
    import openvino as ov
    from openvino.preprocess import ColorFormat, PrePostProcessor, ResizeAlgorithm

    from edgeres.export.openvino.convert import save_ir
    from edgeres.runtime.embedded import graph_fields, ir_precision

    xml, out = check_ir_path(model_xml), xml_path(out_xml)
    model = ov.Core().read_model(xml)
    embedded, fields = read_edgeres_info(model, xml)
    if fields.get(PREPROCESS_KEY):
        raise UserInputError(f"{xml} already takes frames (its graph has preprocessing); give the plain export")
    plan = plan_preprocess(meta or embedded, frame, graph_fields(fields, xml)["output_names"])
    quantized = ir_precision(model)["int8"]
    if int8_resize is None:
        int8_resize = quantized and plan.frame is not None and _int8_resize_suits(plan)
    elif int8_resize and not quantized:
        raise UserInputError(f"int8_resize: {xml} is not an INT8 IR (no FakeQuantize in its graph), so nothing "
                             "would run the integer weights in integers; leave int8_resize unset for the exact path")
    elif int8_resize and plan.frame is None:
        raise UserInputError("int8_resize bakes the resize weights for one frame size: give frame=(H, W)")
    batch = model.input(0).get_partial_shape()[0]
    h, w = plan.frame or (-1, -1)
    ppp = PrePostProcessor(model)
    tensor = ppp.input().tensor()
    tensor.set_element_type(ov.Type.u8).set_layout(ov.Layout(FRAME_LAYOUT)).set_color_format(ColorFormat.RGB)
    tensor.set_shape(ov.PartialShape([batch, ov.Dimension(h), ov.Dimension(w), ov.Dimension(3)]))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    steps = ppp.input().preprocess()
    if int8_resize:  # the frame stays uint8: floats first come out of the width's matrix product
        steps.custom(lambda node: _openvino_int8_width(node, plan)).convert_layout(ov.Layout("NCHW"))
    elif plan.frame is None:  # any size: OpenVINO's own Pillow resize (exact, but ~10x slower than the model)
        steps.convert_element_type(ov.Type.f32)
        if plan.in_chans == 1:
            steps.custom(_openvino_grey)
        steps.resize(ResizeAlgorithm.RESIZE_BILINEAR_PILLOW, *plan.resized)
        steps.convert_layout(ov.Layout("NCHW"))
    elif polyphase(plan.frame[1], plan.resized[1])[0].shape[0] == 1:  # width shrinks by a whole factor
        steps.convert_element_type(ov.Type.f32)
        steps.custom(lambda node: _openvino_blocks(node, plan)).convert_layout(ov.Layout("NCHW"))
        steps.custom(lambda node: _openvino_polyphase(_openvino_shift_sum(node, plan), plan, axes=(2,)))
    else:  # a fixed frame: the same weights as strided convolutions
        steps.convert_element_type(ov.Type.f32).convert_layout(ov.Layout("NCHW"))
        steps.custom(lambda node: _openvino_polyphase(node, plan))
    if plan.padded:
        steps.custom(lambda node: _openvino_pad(node, plan.pad))
    # (x - 255 mean) / (255 std) is (x / 255 - mean) / std in two steps instead of three.
    steps.mean([-s / k for s, k in zip(plan.shift, plan.scale)]).scale([1 / k for k in plan.scale])
    model = ppp.build()
    model.input(0).get_tensor().set_names({INPUT_NAME})
    model.set_rt_info(json.dumps(plan.spec), [RT_KEY, PREPROCESS_KEY])
    # compress_to_fp16=False leaves every constant as read: int8 and fp16 weights stay as they were.
    save_ir(model, out, compress_to_fp16=False)
    return plan.spec


def _openvino_grey(node: Any) -> Any:
    """NHWC RGB floats -> NHWC one-channel PIL L values (see GREY_WEIGHTS)."""
    import openvino.opset13 as ops

    weights = ops.constant(np.asarray(GREY_WEIGHTS, np.float32))
    luma = ops.reduce_sum(ops.multiply(node, weights), ops.constant(np.int64(3)), keep_dims=True)
    return ops.floor(ops.add(luma, ops.constant(np.float32(0.5)))).output(0)


def _openvino_pad(node: Any, pad: tuple[int, int, int, int]) -> Any:
    """NCHW floats padded with the letterbox grey on (top, left, bottom, right)."""
    import openvino.opset13 as ops

    top, left, bottom, right = pad
    return ops.pad(node, [0, 0, top, left], [0, 0, bottom, right], "constant",
                   ops.constant(np.float32(PAD_VALUE))).output(0)


def shares(src: int, dst: int, cost: Any) -> tuple[np.ndarray, np.ndarray]:
    """bilinear_weights(src, dst) as one (S, P) matrix that every block of P consecutive inputs shares, and the
    (src / P, S, dst) matrix that adds each block's S partial outputs into the outputs, with the border gains
    (see polyphase): a block's inputs reach S outputs (those whose triangles overlap it); share s of block b is
    output b Q + s - lead (Q = P q / p outputs per block). P: the number of p-input periods dividing src that
    minimises cost(S, blocks)."""
    kernels, p, begin, _, gain = polyphase(src, dst)
    q, k = kernels.shape

    def block(m: int) -> tuple[np.ndarray, int]:  # (S, m p) weights of block 0's inputs, and its lead
        outputs = np.arange(-q * (k // p + 2), m * q + q * (k // p + 2))
        taps = np.arange(m * p)[None, :] - (outputs // q)[:, None] * p + begin
        dense = np.where((taps >= 0) & (taps < k),
                         np.take_along_axis(kernels[outputs % q], np.clip(taps, 0, k - 1), axis=1), 0.0)
        used = np.flatnonzero(dense.any(axis=1))
        return dense[used[0]:used[-1] + 1], -int(outputs[used[0]])

    periods = src // p
    m = min((m for m in range(1, periods + 1) if periods % m == 0),
            key=lambda m: cost(len(block(m)[0]), periods // m))
    weights, lead = block(m)
    combine = np.zeros((periods // m, len(weights), dst))
    for b in range(periods // m):
        for i in range(len(weights)):
            out = b * m * q + i - lead
            if 0 <= out < dst:
                combine[b, i, out] = gain[out]
    return weights, combine


def width_shares(plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """The width's `shares` for `plan`'s fixed frame, over the frame's RGB values: (block (P, 3, S, in_chans),
    combine (W / P, S, resized width)). P: the most pixels for the fewest groups of 16 columns (S in_chans
    RESIZE_PARTS of them; one AVX-512 register of int32 sums a group). A grey model's RGB -> L folds into the
    block, so L is not rounded as PIL's is (at most half a grey level)."""
    c = plan.in_chans

    def cost(reach: int, blocks: int) -> tuple[int, int]:
        return -(-reach * c * RESIZE_PARTS // 16), blocks

    weights, combine = shares(plan.frame[1], plan.resized[1], cost)
    mix = np.asarray(GREY_WEIGHTS)[None, :] if c == 1 else np.eye(3)  # (output channel, colour)
    return weights.T[:, None, :, None] * mix.T[None, :, None, :], combine


def quantize_weights(weights: np.ndarray, parts: int = 1, bits: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(n, m) float weights as `parts` int8 matrices with per-row scales, (parts, n, m) and (parts, n): part i
    quantizes what parts < i left over, so sum_i q[i] * scale[i, :, None] approaches `weights` ~2^(bits-1)
    times closer per part; the last part's scales keep each row's sum (a flat image resizes exactly). 7 bits:
    a u8 x s8 pair sums below 2^15, so CPUs without VNNI (AVX2's vpmaddubsw saturates int16) compute it exactly."""
    levels = 2 ** (bits - 1) - 1
    rest, ints, scales = np.asarray(weights, np.float64), [], []
    for part in range(parts):
        peak = np.abs(rest).max(axis=1)
        scale = np.where(peak > 0, peak / levels, 1.0)
        q = np.round(rest / scale[:, None])
        if part == parts - 1:
            total = q.sum(axis=1)
            scale = np.where(total != 0, rest.sum(axis=1) / np.where(total != 0, total, 1), scale)
        rest = rest - q * scale[:, None]
        ints.append(q.astype(np.int8))
        scales.append(scale)
    return np.stack(ints), np.stack(scales)


def int8_resize_plan(plan: Plan) -> dict[str, np.ndarray]:
    """The constants of the integer resize (see _openvino_int8_width) for `plan`'s fixed frame: "ints" (3 P,
    columns) int8 and their "scales" (columns,), columns (part, share, channel) per block of P pixels; the
    height's "rows" (S, rows per block) and "row_sums" (h, blocks x S); "sums" (blocks x columns, w x in_chans)."""
    (h, _), (rh, rw), c = plan.frame, plan.resized, plan.in_chans
    block, combine = width_shares(plan)
    pixels, _, reach, _ = block.shape
    ints, scales = quantize_weights(block.reshape(pixels * 3, reach * c).T, RESIZE_PARTS)  # rows (share, channel)
    rows, row_sums = shares(h, rh, lambda s, blocks: h * s + rh * blocks * s)
    sums = np.broadcast_to(combine[:, None, :, None, :, None] * np.eye(c)[None, None, None, :, None, :],
                           (len(combine), RESIZE_PARTS, reach, c, rw, c))
    return {"ints": ints.transpose(2, 0, 1).reshape(pixels * 3, -1), "scales": scales.reshape(-1),
            "rows": rows, "row_sums": row_sums.reshape(-1, rh).T, "sums": sums.reshape(-1, rw * c)}


def _int8_resize_suits(plan: Plan) -> bool:
    """Whether the integer resize is the default for `plan`'s fixed frame: the width shrinks at least 2x (many
    small taps per output, whose 7-bit errors average out; upscaling's few large ones would not) and the float
    products after it (dense: they grow with the frame and the output) stay under FLOAT_TAIL_MACS."""
    if plan.frame[1] < 2 * plan.resized[1]:
        return False
    k = int8_resize_plan(plan)
    columns = k["sums"].shape[0]
    macs = plan.frame[0] * len(k["rows"]) * columns + k["row_sums"].size * columns + k["sums"].size * plan.resized[0]
    return macs <= FLOAT_TAIL_MACS


def _openvino_int8_width(node: Any, plan: Plan) -> Any:
    """uint8 NHWC RGB frame -> NHWC floats (N, resized h, resized w, in_chans). The width pass is one integer
    matrix product over the frame as it lies: a free reshape to (N, H W / P, 3 P) rows of P pixels, times the
    block weights (width_shares) in int8; the uint8 -> f32 Convert with a scalar scale, and int8 weights with a
    Convert and per-column scales, is the dequantization pattern OpenVINO's low-precision transformations run
    as a u8 x s8 product with int32 sums (in an INT8 model: they run when the graph has FakeQuantize), so the
    frame is never converted whole. Small float products finish: each block of rows' height shares (one
    product broadcast over the blocks), their sum into the output rows, then the width's shares into the
    output columns, with the border gains (int8_resize_plan)."""
    import openvino.opset13 as ops

    (h, _), (rh, rw), c = plan.frame, plan.resized, plan.in_chans
    k = int8_resize_plan(plan)
    columns, per_block = k["sums"].shape[0], k["rows"].shape[1]

    def const(value: np.ndarray) -> Any:
        return ops.constant(np.ascontiguousarray(value, np.float32))

    blocks = ops.reshape(node, ops.constant(np.asarray([0, -1, k["ints"].shape[0]], np.int64)), special_zero=True)
    frame = ops.multiply(ops.convert(blocks, "f32"), const(np.float32(1 / 255)))
    weights = ops.multiply(ops.convert(ops.constant(k["ints"]), "f32"), const(k["scales"][None] * 255))
    x = ops.matmul(frame, weights, False, False)
    x.set_friendly_name(INT8_RESIZE)
    x = ops.reshape(x, ops.constant(np.asarray([0, h // per_block, per_block, columns], np.int64)),
                    special_zero=True)  # (N, row blocks, rows, (pixel block, part, share, channel))
    x = ops.matmul(const(k["rows"]), x, False, False)
    x = ops.reshape(x, ops.constant(np.asarray([0, -1, columns], np.int64)), special_zero=True)
    x = ops.matmul(ops.matmul(const(k["row_sums"]), x, False, False), const(k["sums"]), False, False)
    x = ops.reshape(x, ops.constant(np.asarray([0, rh, rw, c], np.int64)), special_zero=True)
    x = ops.transpose(x, ops.constant(np.asarray([0, 3, 1, 2], np.int64)))
    x.set_friendly_name(RESIZED)  # NCHW, as the other paths' (resized_pixels)
    return _nhwc(x)


def _nhwc(node: Any) -> Any:
    """NCHW -> NHWC, for a custom step that made NCHW data where PrePostProcessor still counts the tensor's NHWC
    (its convert_layout then transposes back; OpenVINO fuses the two away)."""
    import openvino.opset13 as ops

    return ops.transpose(node, ops.constant(np.asarray([0, 2, 3, 1], np.int64))).output(0)


def _block_weights(plan: Plan) -> tuple[np.ndarray, list[int], np.ndarray]:
    """For a width that shrinks by a whole factor p: (weights (3 p, shares x in_chans), the block shift each share
    belongs to, gain). Output column j is the sum over shares i of block j + shifts[i]'s share i."""
    w, rw, c = plan.frame[1], plan.resized[1], plan.in_chans
    kernels, p, begin, _, gain = polyphase(w, rw)
    mix = np.asarray(GREY_WEIGHTS)[:, None] if c == 1 else np.eye(3)  # input channel -> output channel
    shifts = sorted({(t - begin) // p for t in range(kernels.shape[1])})
    weights = np.zeros((p, 3, len(shifts), c))
    for t, tap in enumerate(kernels[0]):
        weights[(t - begin) % p, :, shifts.index((t - begin) // p)] += tap * mix
    return weights.reshape(3 * p, -1), shifts, gain


def _openvino_blocks(node: Any, plan: Plan) -> Any:
    """NHWC RGB floats -> NHWC shares (see _block_weights): each block of p pixels x 3 channels is contiguous, so
    one free reshape and one matrix product read the frame once (twice as fast as a strided convolution here);
    a grey model's RGB -> L folds into the matrix, so L is not rounded as PIL's is (at most half a grey level)."""
    import openvino.opset13 as ops

    h, rw = plan.frame[0], plan.resized[1]
    weights, _, _ = _block_weights(plan)
    blocks = ops.reshape(node, ops.constant(np.asarray([0, h, rw, weights.shape[0]], np.int64)), special_zero=True)
    return ops.matmul(blocks, ops.constant(weights.astype(np.float32)), False, False).output(0)


def _openvino_shift_sum(node: Any, plan: Plan) -> Any:
    """NCHW shares -> NCHW in_chans x H x resized width: each share shifted by its block and summed (a
    convolution along the width), times the border gain."""
    import openvino.opset13 as ops

    c, rw = plan.in_chans, plan.resized[1]
    _, shifts, gain = _block_weights(plan)
    kernel = np.zeros((c, len(shifts) * c, 1, shifts[-1] - shifts[0] + 1), np.float32)
    for i, d in enumerate(shifts):
        kernel[np.arange(c), i * c + np.arange(c), 0, d - shifts[0]] = 1.0
    x = ops.convolution(node, ops.constant(kernel), [1, 1], [0, -shifts[0]], [0, shifts[-1]], [1, 1])
    return ops.multiply(x, ops.constant(gain.reshape(1, 1, 1, rw).astype(np.float32)))


def _openvino_polyphase(node: Any, plan: Plan, axes: tuple[int, ...] = (3, 2)) -> Any:
    """NCHW RGB floats of the fixed frame -> NCHW in_chans x resized, Pillow's bilinear weights as one strided
    grouped convolution per axis (see polyphase). A grey model's RGB -> L weights fold into the first one, so L
    is not rounded to an integer as PIL's is (at most half a grey level)."""
    import openvino.opset13 as ops

    (h, w), (rh, rw) = plan.frame, plan.resized
    x = node
    for axis, (n, m) in ((a, (w, rw) if a == 3 else (h, rh)) for a in axes):
        kernels, stride, begin, end, gain = polyphase(n, m)
        q, k = kernels.shape
        shape = (q, 1, 1, k) if axis == 3 else (q, 1, k, 1)
        strides, pads_begin, pads_end = ([1, stride], [0, begin], [0, end]) if axis == 3 else (
            [stride, 1], [begin, 0], [end, 0])
        chans = 3 if axis == 3 else plan.in_chans
        if axis == 3 and plan.in_chans == 1:  # [q, 3, 1, k]: RGB -> L and the resize in one convolution
            weights = np.asarray(GREY_WEIGHTS)[None, :, None, None] * kernels.reshape(shape)
            x = ops.convolution(x, ops.constant(weights.astype(np.float32)), strides, pads_begin, pads_end, [1, 1])
            chans = 1
        else:
            weights = np.broadcast_to(kernels.reshape(1, *shape), (chans, *shape)).astype(np.float32)
            x = ops.group_convolution(x, ops.constant(weights), strides, pads_begin, pads_end, [1, 1])
        # [N, C * q, ...] with the q phases of each output block side by side -> [N, C, ..., m] in order
        other = h if axis == 3 else rw
        if q > 1:
            blocks = m // q
            split = (0, chans, q, other, blocks) if axis == 3 else (0, chans, q, blocks, other)
            x = ops.reshape(x, ops.constant(np.asarray(split, np.int64)), special_zero=True)
            x = ops.transpose(x, ops.constant(np.asarray([0, 1, 3, 4, 2] if axis == 3 else [0, 1, 3, 2, 4])))
            size = (0, chans, other, m) if axis == 3 else (0, chans, m, other)
            x = ops.reshape(x, ops.constant(np.asarray(size, np.int64)), special_zero=True)
        gain_shape = (1, 1, 1, m) if axis == 3 else (1, 1, m, 1)
        x = ops.multiply(x, ops.constant(gain.reshape(gain_shape).astype(np.float32)))
    x.set_friendly_name(RESIZED)
    return x.output(0)


# ---------------------------------------------------------------- ONNX

def add_onnx_preprocess(onnx_in: str | Path, onnx_out: str | Path, meta: ModelMeta | None = None,
                        frame: Sequence[int] | None = None, *, resize_op: str | None = None) -> dict[str, Any]:
    """Write `onnx_out`: the model at `onnx_in` behind ONNX ops taking uint8 NHWC RGB frames; returns the
    meta.json `input` block the file carries.

    resize_op (default: "Conv" for a fixed frame, "Resize" for any size):
      "Conv": Pillow's weights as one grouped strided Conv per axis (fixed frame; any opset; what TensorRT
        needs, and the fastest here);
      "Resize": ONNX Resize with antialias=1, any frame size (opset 18: an older model is converted up with
        onnx.version_converter). ONNX Runtime implements it, slowly (~14 ms for 640x480 on one core);
        TensorRT's parser does not (8.6 ignores the attribute, 10.x refuses the node);
      "MatMul": the weights as two dense constant matrices (fixed frame; any opset; ~3 ms at 640x480).
    """
    import onnx
    from onnx import compose, helper

    src = Path(onnx_in)
    if not src.is_file():
        raise UserInputError(f"{src}: no such ONNX file")
    resize_op = resize_op or ("Resize" if frame is None else "Conv")
    if resize_op not in ONNX_RESIZE_OPS:
        raise UserInputError(f"resize_op must be one of {list(ONNX_RESIZE_OPS)}, got {resize_op!r}")
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    embedded = read_meta(props, src)
    if props.get(PREPROCESS_KEY):
        raise UserInputError(f"{src} already takes frames (its graph has preprocessing); give the plain export")
    plan = plan_preprocess(meta or embedded, frame, json.loads(props.get("output_names") or "[]"))
    if resize_op != "Resize" and plan.frame is None:
        raise UserInputError(f"resize_op {resize_op!r} bakes the resize weights for one frame size: give "
                             "frame=(H, W), or resize_op='Resize' for any size")
    opset = _opset(model)
    if resize_op == "Resize" and opset < _ANTIALIAS_OPSET:
        model = _upgrade(model, _ANTIALIAS_OPSET, src)
        opset = _ANTIALIAS_OPSET
    model_input = next(i for i in model.graph.input if i.name == INPUT_NAME)
    batch = model_input.type.tensor_type.shape.dim[0]
    pre = helper.make_model(_onnx_graph(plan, batch, resize_op), opset_imports=[helper.make_opsetid("", opset)],
                            ir_version=model.ir_version)
    merged = compose.merge_models(pre, model, io_map=[("preprocess/out", INPUT_NAME)],
                                  producer_name=model.producer_name, producer_version=model.producer_version)
    del merged.opset_import[:]  # merge_models lists the shared default domain twice
    merged.opset_import.extend(model.opset_import)
    helper.set_model_props(merged, {**props, PREPROCESS_KEY: json.dumps(plan.spec)})
    onnx.checker.check_model(merged)
    with atomic_path(onnx_out) as tmp:
        onnx.save(merged, str(tmp))
    return plan.spec


def _onnx_graph(plan: Plan, batch: Any, resize_op: str) -> Any:
    """uint8 NHWC `input` -> float NCHW `preprocess/out`, as `plan` says."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, f"preprocess/{name}"))
        return f"preprocess/{name}"

    def op(kind: str, inputs: list[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(kind, inputs, [f"preprocess/{name}"], name=f"preprocess/{name}", **attrs))
        return f"preprocess/{name}"

    c = plan.in_chans
    # Channels first while still uint8: a quarter of the bytes to move.
    x = op("Cast", [op("Transpose", [INPUT_NAME], "nchw_u8", perm=[0, 3, 1, 2])], "float", to=TensorProto.FLOAT)
    if c == 1:
        weights = np.asarray(GREY_WEIGHTS, np.float32).reshape(1, 3, 1, 1)
        luma = op("ReduceSum", [op("Mul", [x, const("grey_weights", weights)], "weighted"),
                                const("channel_axis", np.asarray([1], np.int64))], "luma", keepdims=1)
        x = op("Floor", [op("Add", [luma, const("half", np.asarray(0.5, np.float32))], "luma_half")], "grey")
    if resize_op == "Conv":
        x = _onnx_polyphase(x, plan, op, const)
    elif resize_op == "MatMul":
        (h, w), (rh, rw) = plan.frame, plan.resized
        x = op("MatMul", [x, const("resize_w", bilinear_weights(w, rw).T.astype(np.float32))], "resized_w")
        x = op("MatMul", [const("resize_h", bilinear_weights(h, rh).astype(np.float32)), x], "resized")
    else:
        # exclude_outside: taps past the border get no weight and the rest are renormalised, as Pillow does
        # (without it the border rows and columns differ by up to ~10 grey levels when shrinking).
        # Full N, C, h, w sizes: ONNX Runtime's layout transformer mishandles Resize's `axes` in QDQ models.
        sizes = op("Concat", [op("Shape", [x], "batch_channels", start=0, end=2),
                              const("hw", np.asarray(plan.resized, np.int64))], "sizes", axis=0)
        x = op("Resize", [x, "", "", sizes], "resized", mode="linear", antialias=1, exclude_outside=1,
               coordinate_transformation_mode="half_pixel")
    if plan.padded:
        top, left, bottom, right = plan.pad
        x = op("Pad", [x, const("pads", np.asarray([0, 0, top, left, 0, 0, bottom, right], np.int64)),
                       const("pad_value", np.asarray(PAD_VALUE, np.float32))], "letterboxed", mode="constant")
    x = op("Mul", [x, const("scale", np.asarray(plan.scale, np.float32).reshape(1, c, 1, 1))], "scaled")
    op("Add", [x, const("shift", np.asarray(plan.shift, np.float32).reshape(1, c, 1, 1))], "out")
    h, w = plan.frame or ("height", "width")
    dims = [batch.dim_value if batch.HasField("dim_value") else (batch.dim_param or "batch"), h, w, 3]
    s = plan.size
    return helper.make_graph(
        nodes, "edgeres_preprocess",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, dims)],
        [helper.make_tensor_value_info("preprocess/out", TensorProto.FLOAT, [dims[0], c, s, s])], inits)


def _onnx_polyphase(x: str, plan: Plan, op: Any, const: Any) -> str:
    """NCHW floats of the fixed frame -> in_chans x resized, one grouped strided Conv per axis (see polyphase);
    grey models have already been converted to L."""
    (h, w), (rh, rw), c = plan.frame, plan.resized, plan.in_chans
    for axis, n, m, other in ((3, w, rw, h), (2, h, rh, rw)):
        kernels, stride, begin, end, gain = polyphase(n, m)
        q, k = kernels.shape
        shape = (q, 1, 1, k) if axis == 3 else (q, 1, k, 1)
        weights = np.broadcast_to(kernels.reshape(1, *shape), (c, *shape)).reshape(c * q, *shape[1:])
        x = op("Conv", [x, const(f"kernels{axis}", weights.astype(np.float32))], f"conv{axis}", group=c,
               strides=[1, stride] if axis == 3 else [stride, 1],
               pads=[0, begin, 0, end] if axis == 3 else [begin, 0, end, 0])
        if q > 1:  # [N, C q, ...] with each output block's q phases side by side -> [N, C, ..., m] in order
            split = (0, c, q, other, m // q) if axis == 3 else (0, c, q, m // q, other)
            x = op("Reshape", [x, const(f"split{axis}_shape", np.asarray(split, np.int64))], f"split{axis}")
            x = op("Transpose", [x], f"phases{axis}", perm=[0, 1, 3, 4, 2] if axis == 3 else [0, 1, 3, 2, 4])
            size = (0, c, other, m) if axis == 3 else (0, c, m, other)
            x = op("Reshape", [x, const(f"size{axis}_shape", np.asarray(size, np.int64))], f"interleaved{axis}")
        gain_shape = (1, 1, 1, m) if axis == 3 else (1, 1, m, 1)
        x = op("Mul", [x, const(f"gain{axis}", gain.reshape(gain_shape).astype(np.float32))], f"resized{axis}")
    return x


def _opset(model: Any) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _upgrade(model: Any, opset: int, path: Path) -> Any:
    """`model` converted to `opset` (ops whose signature changed are rewritten by onnx's version converter)."""
    from onnx import version_converter

    props = list(model.metadata_props)
    try:
        upgraded = version_converter.convert_version(model, opset)
    except Exception as e:  # the converter raises RuntimeError / its own types for an op it cannot adapt
        raise UserInputError(f"{path}: cannot convert it to opset {opset} for Resize's antialias ({e}); "
                             "use resize_op='MatMul' with a fixed frame instead") from e
    if not upgraded.metadata_props:
        upgraded.metadata_props.extend(props)
    return upgraded


def bilinear_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) matrix of Pillow's bilinear resize along one axis: a triangle filter widened by the
    shrink factor (antialiasing), sampled at pixel centres, each row normalised to sum 1."""
    scale = src / dst
    support = max(scale, 1.0)
    out = np.zeros((dst, src), np.float64)
    for i in range(dst):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), src)
        taps = np.clip(1.0 - np.abs((np.arange(lo, hi) - centre + 0.5) / support), 0.0, None)
        out[i, lo:hi] = taps / taps.sum()
    return out


def polyphase(src: int, dst: int) -> tuple[np.ndarray, int, int, int, np.ndarray]:
    """bilinear_weights(src, dst) as a strided convolution: (kernels (q, k), stride p, padding before and after,
    gain (dst,)). With src/dst = p/q in lowest terms the weights repeat every q outputs and p inputs, so output
    block j's q outputs are the q kernels over padded inputs [j p, j p + k); near the borders Pillow drops the
    taps outside the image and renormalises the rest, which is the zero-padded result times `gain`."""
    g = math.gcd(src, dst)
    p, q = src // g, dst // g
    scale = src / dst
    support = max(scale, 1.0)
    taps = []
    for r in range(q):
        centre = (r + 0.5) * scale
        lo, hi = math.floor(centre - support + 0.5), math.floor(centre + support + 0.5)
        w = np.clip(1.0 - np.abs((np.arange(lo, hi) - centre + 0.5) / support), 0.0, None)
        taps.append((lo, w / w.sum()))
    begin = -min(lo for lo, _ in taps)
    k = max(lo + len(w) for lo, w in taps) + begin
    kernels = np.zeros((q, k))
    for r, (lo, w) in enumerate(taps):
        kernels[r, lo + begin:lo + begin + len(w)] = w
    gain = np.empty(dst)
    for j in range(g):
        inside = (np.arange(k) + j * p - begin >= 0) & (np.arange(k) + j * p - begin < src)
        gain[j * q:(j + 1) * q] = 1.0 / kernels[:, inside].sum(axis=1)
    return kernels, p, begin, max(0, (g - 1) * p + k - begin - src), gain


def _check_frame_size(frame: Sequence[int] | None) -> tuple[int, int] | None:
    if frame is None:
        return None
    dims = tuple(frame)
    if len(dims) != 2 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and 1 <= d <= MAX_FRAME
                                 for d in dims):
        raise UserInputError(f"frame must be (height, width) in pixels, each 1 to {MAX_FRAME}, got {frame!r}")
    return int(dims[0]), int(dims[1])


# ---------------------------------------------------------------- verification

def read_preprocess(path: str | Path) -> dict[str, Any] | None:
    """The `input` block a preprocessed .xml or .onnx carries, or None for a file that takes NCHW floats."""
    path = Path(path)
    if path.suffix == ".xml":
        import openvino as ov

        model = ov.Core().read_model(check_ir_path(path))
        raw = model.get_rt_info([RT_KEY, PREPROCESS_KEY]).astype(str) if model.has_rt_info(
            [RT_KEY, PREPROCESS_KEY]) else ""
    else:
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if META_KEY not in props:
            raise UserInputError(f"{path}: not an edgeres ONNX export")
        raw = props.get(PREPROCESS_KEY, "")
    return json.loads(raw) if raw else None


class FrameSession:
    """A preprocessed file under its plain runtime (the Runners take NCHW floats): frames in, outputs by name."""

    def __init__(self, path: str | Path, threads: int | None = None, openvino_hint: str | None = None):
        path = Path(path)
        self.spec = read_preprocess(path)
        if self.spec is None:
            raise UserInputError(f"{path} takes NCHW float tensors, not frames: add preprocessing to it first")
        if path.suffix == ".xml":
            import openvino as ov

            from edgeres.runtime.openvino import infer_shared

            config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            if openvino_hint:
                config["INFERENCE_PRECISION_HINT"] = openvino_hint
            compiled = ov.Core().compile_model(str(path), "CPU", config)
            request = compiled.create_infer_request()
            self.names = [o.get_any_name() for o in compiled.outputs]
            outputs = range(len(compiled.outputs))

            def run(x: np.ndarray) -> list[np.ndarray]:
                infer_shared(request, x)  # the frame read in place where OpenVINO can, as the Runner does
                # The request's output buffers are reused by the next call: keep copies.
                return [request.get_output_tensor(i).data.copy() for i in outputs]
            self._run = run
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            if threads:
                options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.names = [o.name for o in session.get_outputs()]
            self._run = lambda x: session.run(None, {INPUT_NAME: x})

    def __call__(self, frames: Any) -> dict[str, np.ndarray]:
        """Outputs for every frame (run one at a time: frames may differ in size, batches may be fixed at 1)."""
        per_frame = [self._run(f[None]) for f in check_frames(frames, self.spec)]
        return {name: np.concatenate([np.asarray(outs[i]) for outs in per_frame])
                for i, name in enumerate(self.names)}


def resized_pixels(path: str | Path, frames: Any, openvino_hint: str | None = None) -> np.ndarray:
    """What a fixed-frame preprocessed IR makes of `frames` before padding and normalisation, (N, in_chans,
    h, w) in grey levels: to hold its resize against Pillow's (the host path's) pixel by pixel."""
    import openvino as ov

    xml = check_ir_path(path)
    core = ov.Core()
    model = core.read_model(xml)
    spec = read_preprocess(xml)
    node = next((op for op in model.get_ops() if op.get_friendly_name() == RESIZED), None)
    if spec is None or node is None:
        raise UserInputError(f"{xml} has no fixed-frame resize in its graph (add_openvino_preprocess with frame=)")
    model.add_outputs([node.output(0)])
    config = {"INFERENCE_PRECISION_HINT": openvino_hint} if openvino_hint else {}
    compiled = core.compile_model(model, "CPU", config)
    request, added = compiled.create_infer_request(), len(compiled.outputs) - 1
    pixels = []
    for f in check_frames(frames, spec):
        request.infer({0: f[None]})
        pixels.append(np.array(request.get_output_tensor(added).data))
    return np.concatenate(pixels)


def verify_preprocess(original: str | Path, preprocessed: str | Path, meta: ModelMeta | None = None,
                      frames: Any = None, tolerance: Any = None, *, precision: str | None = None) -> dict[str, Any]:
    """Compare the preprocessed file on raw frames with the original on the task's host preprocessing (the
    task's comparator; tolerance: default the task's for the precision the original runs in); UserInputError
    beyond it. precision: what the original's Runner is asked for (the preprocessed file gets the same)."""
    from PIL import Image

    from edgeres import runtime
    from edgeres.runtime.base import run_any_batch
    from edgeres.tasks import get_task

    reference = runtime.load(original, precision=precision)
    meta = meta or reference.meta
    task = get_task(meta.task)
    session = FrameSession(preprocessed, openvino_hint=reference.info.extra.get("inference_precision_hint"))
    frames = check_frames(frames, session.spec)
    prepared = np.stack([task.prepare(Image.fromarray(f), meta)[0] for f in frames])
    expected = run_any_batch(reference, prepared)
    got = session(frames)
    if list(got) != list(expected):
        raise UserInputError(f"{preprocessed} names its outputs {list(got)}, {original} {list(expected)}")
    precision = _tolerance_precision(reference.info.precision)
    tolerance = tolerance if tolerance is not None else task.tolerance(precision)
    stats = task.compare(expected, got)
    failures = task.judge(stats, tolerance)
    result = {**stats, "frames": len(frames), "precision": precision, "tolerance": dataclasses.asdict(tolerance),
              "failures": failures}
    if failures:
        raise UserInputError(f"{preprocessed} does not match {original} with host preprocessing: "
                             f"{'; '.join(failures)}")
    return result


def _tolerance_precision(executed: str) -> str:
    """The export tolerance for what a Runner executes: "int8/bf16" is int8, "fp16-weights/fp32" fp16, bf16 fp16."""
    head = executed.split("/")[0]
    if head.startswith("int8"):
        return "int8"
    return "fp32" if head == "fp32" else "fp16"
