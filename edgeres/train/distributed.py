"""Distributed data parallel under torchrun: gloo on CPU, NCCL on GPUs (one each). One process = a world of one."""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
from torch import nn

from edgeres.train.device import resolve_device


@dataclasses.dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # this process's own: cuda:LOCAL_RANK under torchrun on GPUs

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP-wrap `model` (already on `self.device`) when distributed; frozen parameters make
        unused-parameter detection necessary."""
        if not self.enabled:
            return model
        frozen = any(not p.requires_grad for p in model.parameters())
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=frozen)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)  # NCCL reduces GPU tensors only
        dist.all_reduce(t)
        return float(t.item()) / self.world_size


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment, on this process's device.

    device: auto, cpu, cuda or cuda:N; under torchrun CUDA means cuda:LOCAL_RANK, with NCCL, and the
    CPU means gloo. Run directly, a world of one on the device `device` names.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=resolve_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    own = resolve_device(device, local_rank)
    if own.type == "cuda":
        torch.cuda.set_device(own)  # NCCL's communicator and DDP's buckets live on the current device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if own.type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=own)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
