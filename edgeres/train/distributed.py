"""Distributed data parallel under torchrun: gloo on CPU, NCCL on GPUs. One process = a world of one."""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
from torch import nn


@dataclasses.dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP-wrap `model` when distributed; frozen parameters make unused-parameter detection necessary."""
        if not self.enabled:
            return model
        frozen = any(not p.requires_grad for p in model.parameters())
        return nn.parallel.DistributedDataParallel(model, find_unused_parameters=frozen)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size


def init_distributed() -> DistContext:
    """Join the process group torchrun describes in the environment; a no-op when run directly."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
