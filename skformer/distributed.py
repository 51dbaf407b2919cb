"""Data-parallel training under ``torchrun``: the process group, each rank's rows, reductions.

When ``fit`` runs in processes started by ``torchrun`` (``python -m torch.distributed.run``),
every rank passes the same ``X``; :func:`current` finds (or starts) the process group, and the
training loop gives each rank an equal share of the training and validation rows, averages
gradients with :class:`torch.nn.parallel.DistributedDataParallel`, and averages losses across
ranks, so that early stopping decides the same on every rank and all ranks end with identical
weights. gloo on CPUs, NCCL on GPUs. Outside torchrun nothing here is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from skformer._utils import int_seed

__all__ = ["Group", "current"]


@dataclass(frozen=True)
class Group:
    """This process's place in the data-parallel group."""

    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        """Rank 0 speaks for the group (progress bars, warnings)."""
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """A seed of this rank's own, derived from a seed shared by all ranks."""
        return int_seed(np.random.SeedSequence([int(seed), self.rank]))

    def share(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's equal share of ``rows`` (every rank the same count; a remainder of fewer
        than ``world`` rows is left out, so that every rank takes as many steps)."""
        n = rows.shape[0] // self.world
        return rows[self.rank * n : (self.rank + 1) * n]

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over the ranks."""
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def wrap(self, network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``network`` with gradients averaged over the ranks at every backward pass."""
        ids = [device.index] if device.type == "cuda" and device.index is not None else None
        return torch.nn.parallel.DistributedDataParallel(network, device_ids=ids)


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def current(device: torch.device) -> Group | None:
    """The data-parallel group this process belongs to, or None when it runs alone.

    A process group already initialised by the caller is used as it is; otherwise, under
    torchrun (``WORLD_SIZE`` > 1 and ``RANK`` set), one is started: NCCL when ``device`` is a
    GPU, gloo otherwise.
    """
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if not _launched():
            return None
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() == 1:
        return None
    return Group(dist.get_rank(), dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, each rank's own GPU (``LOCAL_RANK``) when ``device`` is a GPU."""
    if device.type == "cuda" and _launched() and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
