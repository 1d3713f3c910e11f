"""torchrun / DDP helpers: one code path for a single process and for ``torchrun --nproc-per-node N``.

With ``WORLD_SIZE > 1`` in the environment the process group is initialised
from it (NCCL on GPU, Gloo on CPU); otherwise every collective is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def default_device(device: str | None = None) -> torch.device:
    """``device``, or by default ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def init_distributed(device: str | None = None) -> DistContext:
    """Join the torchrun process group when there is one and pick this rank's device.

    ``device`` overrides the choice (default: ``cuda:LOCAL_RANK`` when CUDA is
    available, else CPU).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = default_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistContext(rank=rank, world_size=world_size, device=dev)


def wrap_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``model`` in DDP when the job has several ranks, else unchanged."""
    if ctx.world_size == 1:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (and return it)."""
    if ctx.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj: object, ctx: DistContext) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if ctx.world_size == 1:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
