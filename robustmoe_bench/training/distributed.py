"""Data-parallel training under ``torchrun``: process group, device, model wrapping, rank checks.

``torchrun --nproc_per_node=P -m robustmoe_bench train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` then joins the process group (gloo on CPU, nccl on CUDA). Without those
variables everything here is a no-op for a single process. Only rank 0 writes files.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError


@dataclass
class DistContext:
    """Where this process runs. ``owns_group``: this module created the process group (and ends it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def _pick_device(pref: str, local_rank: int, distributed: bool) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {pref!r} asked for, but CUDA is not available")
        return torch.device("cuda", local_rank) if distributed or pref == "cuda" else torch.device(pref)
    return torch.device("cpu")


def setup(device: str = "auto") -> DistContext:
    """Read torchrun's environment, join the process group if there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local, world > 1)
    if world <= 1:
        return DistContext(0, 1, 0, dev, False)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend)
        owns = True
    return DistContext(rank, world, local, dev, owns)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def wrap(net: nn.Module, ctx: DistContext, find_unused: bool) -> nn.Module:
    """The module the loss is computed with: ``net`` itself, or a DistributedDataParallel around it.

    Gradients are averaged across ranks; batch-norm buffers are broadcast from rank 0 at each forward
    (and explicitly at each epoch end, :func:`sync_buffers`), so every rank holds the same model.
    """
    if not ctx.active:
        return net
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=ids, find_unused_parameters=find_unused)


@torch.no_grad()
def sync_buffers(net: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BN running statistics, masks) to every rank."""
    if ctx.active:
        for b in net.buffers():
            dist.broadcast(b, src=0)


def state_digest(net: nn.Module) -> bytes:
    """SHA-256 of every parameter and buffer, bit for bit."""
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.digest()


def ranks_identical(net: nn.Module, ctx: DistContext) -> bool:
    """True when every rank's parameters and buffers are bitwise equal to rank 0's (all ranks call it)."""
    if not ctx.active:
        return True
    mine = torch.frombuffer(bytearray(state_digest(net)), dtype=torch.uint8).to(torch.int64).to(
        ctx.device if ctx.device.type == "cuda" else "cpu")
    got = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(got, mine)
    return all(bool(torch.equal(g, got[0])) for g in got)


def shard(batch_indices: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's share ``[B / world]`` of one global batch of indices ``[B]`` (contiguous slices)."""
    if not ctx.active:
        return batch_indices
    per = batch_indices.numel() // ctx.world_size
    return batch_indices[ctx.rank * per:(ctx.rank + 1) * per]


__all__ = ["DistContext", "setup", "teardown", "barrier", "wrap", "sync_buffers", "ranks_identical",
           "state_digest", "shard"]
