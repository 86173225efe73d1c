"""torch.distributed plumbing for ``fit`` under ``torchrun``: process group, sharded loader, DDP wrap."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def init() -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun describes in the environment, if any."""
    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(loader: DataLoader, rank: int, world: int, seed: int) -> DataLoader:
    """The same loader, but each process sees its own 1/world of every epoch."""
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=rank, seed=seed,
                                 shuffle=isinstance(loader.sampler, RandomSampler), drop_last=loader.drop_last)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      persistent_workers=loader.persistent_workers)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def summed(value):
    """Under torchrun, ``value`` (a tensor, summed in place, or a number) summed over the processes;
    else ``value`` itself."""
    if init()[1] == 1:
        return value
    empty = torch.tensor(float(value is None), dtype=torch.float64)
    dist.all_reduce(empty)   # every process learns whether any saw no batch, so all of them stop here
    if empty.item():
        raise ValueError(f"under torchrun every process must see at least one batch ({int(empty.item())} saw none): "
                         "give the loader at least as many batches as there are processes")
    if torch.is_tensor(value):
        dist.all_reduce(value)
        return value
    total = torch.tensor(float(value), dtype=torch.float64)
    dist.all_reduce(total)
    return type(value)(total.item())


def all_sum(obj, names: tuple[str, ...]) -> None:
    """Replace each named attribute of ``obj`` (a running sum one process kept over its share of the
    data) by :func:`summed` of it."""
    for name in names:
        setattr(obj, name, summed(getattr(obj, name)))
