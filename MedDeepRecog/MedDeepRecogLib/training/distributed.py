"""Distributed data parallel (DDP) for ``torchrun --nproc_per_node=N meddeeprecog finetune|train ...``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``; :func:`init_distributed` reads
them and joins the process group (NCCL on CUDA, gloo on CPU). Without them everything here is a no-op, so the same
code runs in one process. Conventions: rank 0 alone writes files and prints progress; every rank holds the full
cached data set and draws its share of each epoch through ``DistributedSampler``; the global batch is split over
ranks so one process and N processes see the same number of samples per optimiser step.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", backend: str | None = None, timeout_s: int = 1800) -> DistContext:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1); else a single-process context.

    Args:
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (:func:`..devices.resolve_device`);
            with several processes on CUDA each takes the GPU of its local rank.
        backend: ``"gloo"`` / ``"nccl"``; default NCCL for CUDA, gloo for CPU.
    """
    from ..devices import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, setting="training/device")
    use_cuda = resolved.type == "cuda"
    dev = f"cuda:{local}" if use_cuda and world > 1 else str(resolved)
    if world > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"),
                                timeout=_dt.timedelta(seconds=timeout_s))
    return DistContext(rank, world, local, dev)


def shutdown(ctx: DistContext, *, synchronise: bool = True) -> None:
    """Leave the process group (safe to call in a single process).

    ``destroy_process_group`` is meant to be called by every rank together. With ``synchronise`` the ranks meet at a
    barrier first, so none tears down its connections while another is still writing (rank 0 saves the package after
    the others have finished). Then the ``DistributedDataParallel`` wrappers left in reference cycles are collected
    while the interpreter is fully alive: gloo work they hold, freed during interpreter shutdown instead, aborts the
    process (SIGABRT, "terminate called without an active exception"). ``synchronise=False`` after an error, where
    the barrier could wait for a rank that has already failed.
    """
    if ctx.enabled and dist.is_initialized():
        if synchronise:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()


@contextlib.contextmanager
def leaving_together(ctx: DistContext, owned: bool = True) -> Iterator[DistContext]:
    """Run a job in the process group of ``ctx`` and leave it at the end: :func:`shutdown` after the job (every rank
    waits for the others, e.g. for rank 0 to write the package), ``shutdown(synchronise=False)`` after an error.
    ``owned=False``: the caller set the group up and leaves it itself."""
    try:
        yield ctx
    except BaseException:
        if owned:
            shutdown(ctx, synchronise=False)
        raise
    if owned:
        shutdown(ctx)


def wrap_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` in a multi-process run (parameters broadcast from rank 0), else ``model``."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(ctx.device).index] if ctx.device.startswith("cuda") else None
    # frozen parameters (requires_grad=False) are left out of DDP's gradient buckets by DDP itself
    return DistributedDataParallel(model, device_ids=ids)


def make_sampler(dataset: Any, ctx: DistContext, *, shuffle: bool, seed: int):
    """``DistributedSampler`` over ``dataset`` in a multi-process run, else ``None`` (the loader shuffles itself)."""
    if not ctx.enabled:
        return None
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed,
                              drop_last=False)


def per_rank_batch(batch_size: int, ctx: DistContext) -> int:
    """Share of the global ``batch_size`` each rank loads (at least 1)."""
    return max(1, batch_size // ctx.world_size)


def all_reduce_mean(value: float, ctx: DistContext, weight: float = 1.0) -> float:
    """Weighted mean of ``value`` over ranks (``weight``: e.g. the samples it was computed on)."""
    if not ctx.enabled:
        return float(value)
    # NCCL (the backend on CUDA) reduces only tensors on the process's GPU
    t = torch.tensor([float(value) * weight, float(weight)], dtype=torch.float64,
                     device=ctx.device if ctx.device.startswith("cuda") else "cpu")
    dist.all_reduce(t)
    return float(t[0] / t[1]) if t[1] > 0 else 0.0


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in one process)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shard(items: Sequence[Any], ctx: DistContext) -> list[Any]:
    """This rank's share of ``items`` (round robin), e.g. validation cases."""
    return list(items[ctx.rank::ctx.world_size])
