"""Where training runs: the device a `--device` string names here, and the mixed precision `--amp` uses on it.

`--amp` on a GPU autocasts to bf16 where the GPU computes it natively (Ampere and later: fp32's exponent
range, so no loss scaling), else to fp16 with a GradScaler. On a CPU it autocasts to bf16 only when the
CPU has native bf16 instructions (AVX512-BF16 or AMX): there a ResNet-18 step at 64 px ran in 0.70x the
fp32 time (benchmarks/amp_step.py); without them oneDNN emulates bf16 and is slower than fp32, so `--amp` is
refused rather than silently making training slower and less precise. Without `--amp` nothing is cast,
and CPU training stays bit-for-bit what it was (seeded runs and `--resume` are exact).
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import Any, Iterator

import torch
from torch import nn

from edgeres.errors import UserInputError

DEVICES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_AMP_NAMES = {None: None, torch.float16: "fp16", torch.bfloat16: "bf16"}


def check_device(value: Any, field: str = "device") -> None:
    """Refuse a device string that is not auto, cpu, cuda or cuda:N; asks no hardware (configs may travel)."""
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise UserInputError(f"{field} must be one of {DEVICES}, got {value!r}")


def resolve_device(spec: str, local_rank: int | None = None) -> torch.device:
    """The device `spec` names on this machine; under torchrun (`local_rank` given) CUDA means cuda:LOCAL_RANK."""
    check_device(spec)
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        built = "" if torch.version.cuda else " (this torch is built without CUDA)"
        raise UserInputError(f"--device {spec}: no CUDA device is available on this machine{built}; "
                             "use --device cpu, or auto to take a GPU only when there is one")
    count = torch.cuda.device_count()
    if local_rank is None:
        index, asked = int(spec.partition(":")[2] or 0), f"--device {spec}"
    elif ":" in spec:
        # Every process would open the same GPU, which NCCL refuses: each takes its own instead.
        raise UserInputError(f"--device {spec}: under torchrun each process trains on cuda:LOCAL_RANK; "
                             "pass --device cuda and choose the GPUs with CUDA_VISIBLE_DEVICES")
    else:
        index, asked = local_rank, f"torchrun's LOCAL_RANK {local_rank}"
    if index >= count:
        hint = f"; run at most {count} process(es) per machine" if local_rank is not None else ""
        raise UserInputError(f"{asked}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}{hint}")
    return torch.device("cuda", index)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU executes bf16 matrix instructions (AVX512-BF16 or AMX) rather than emulating them."""
    # torch has no public query for this; these two are what its own CPU bf16 dispatch checks.
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def amp_dtype(device: torch.device, amp: bool | str) -> torch.dtype | None:
    """The autocast dtype `--amp` means on `device` (None: fp32); refuses a CPU without native bf16.

    amp "auto" (recipes) is mixed precision where it is native and plain fp32 on a CPU without bf16."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if cpu_has_native_bf16():
        return torch.bfloat16
    if amp == "auto":
        return None
    raise UserInputError("--amp on the CPU needs native bf16 (AVX512-BF16 or AMX), which this CPU lacks: emulated "
                         "bf16 trains slower than fp32; train without --amp, or on a GPU with --device cuda")


@dataclasses.dataclass(frozen=True)
class Execution:
    """A resolved device and the autocast dtype used on it (None: plain fp32)."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype | None = None

    @property
    def pin_memory(self) -> bool:
        """Page-locked batches copy to a GPU asynchronously; on the CPU pinning only costs time."""
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forward and loss; a no-op without --amp, so fp32 results do not change."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16, whose 5-bit exponent flushes small gradients to zero; disabled otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def move(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on this device; from pinned memory the copy overlaps the GPU's work."""
        return tensor.to(self.device, non_blocking=self.pin_memory)

    def to_dict(self) -> dict[str, Any]:
        return {"device": str(self.device), "amp": _AMP_NAMES[self.dtype]}


def resolve_execution(device: str, amp: bool, local_rank: int | None = None) -> Execution:
    """Device and mixed precision for a run, refusing what this machine cannot do before any work starts."""
    resolved = resolve_device(device, local_rank)
    return Execution(resolved, amp_dtype(resolved, amp))


@contextlib.contextmanager
def placed(execution: Execution, *modules: nn.Module | None) -> Iterator[None]:
    """Move `modules` to the execution device for the block, then back to the CPU, where saving, pruning
    and export work; an optimizer must be built inside the block, on the moved parameters."""
    present = [m for m in modules if m is not None]
    for m in present:
        m.to(execution.device)
    try:
        yield
    finally:
        for m in present:
            m.cpu()
