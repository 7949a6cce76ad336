"""Data-parallel ranks: one process, or each process of a torchrun job, and the collectives the loop uses."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def device_kind(device: str) -> str:
    """"cuda" or "cpu" for a config's device ("auto": CUDA where torch sees a GPU)."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def start_ranks(device: str) -> Ranks:
    """One rank, or this process's rank of a torchrun job (it sets WORLD_SIZE, RANK, LOCAL_RANK)."""
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_kind(device) == "cuda"
    where = torch.device(f"cuda:{local}" if cuda else "cpu")
    if world > 1:
        if cuda:
            torch.cuda.set_device(where)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Ranks(int(os.environ.get("RANK", "0")), world, where)


def all_sum(tensor: Tensor, ranks: Ranks) -> Tensor:
    if ranks.world > 1:
        dist.all_reduce(tensor)
    return tensor


def same_on_all(value: object, ranks: Ranks) -> object:
    """Rank 0's `value` on every rank."""
    if ranks.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
