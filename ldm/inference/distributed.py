"""Sampling scripts under ``torchrun``: each process draws a share of the samples, rank 0 collects them.

    torchrun --nproc_per_node 2 scripts/sample_diffusion.py -r RUN -n 10 --seed 7

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them a script is one process
drawing everything. Sample i depends only on (seed, i) (``ldm.eval.shards``), so how the indices
are split between processes, and into batches, does not change any image. Processes talk over
gloo: what they exchange (the output folder's name, the finished uint8 samples) lives on the CPU,
and gloo needs no GPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Share", "join_processes"]


@dataclass(frozen=True)
class Share:
    rank: int         # global rank of this process
    world_size: int   # processes drawing samples together
    local_rank: int   # rank on this machine: picks the GPU

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def indices(self, n: int) -> np.ndarray:
        """This process's samples: a contiguous block of [0, n), so file numbers stay consecutive."""
        per = -(-n // self.world_size)
        return np.arange(min(n, self.rank * per), min(n, (self.rank + 1) * per))

    def device(self, requested: Optional[str]) -> Optional[str]:
        """``--device`` as given; by default each process of a GPU machine takes its own GPU."""
        if requested is None and self.distributed and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return requested

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> Optional[list[Any]]:
        """Every process's ``obj``, in rank order, on rank 0 (None elsewhere)."""
        if not self.distributed:
            return [obj]
        out: Optional[list[Any]] = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def join_processes() -> Share:
    """This process's share, joining the others (gloo) when launched by torchrun."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise SystemExit(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (as torchrun sets them): {exc}") from None
    if not 0 <= rank < world_size:
        raise SystemExit(f"RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    share = Share(rank, world_size, local_rank)
    if share.distributed and not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank, world_size=world_size)  # MASTER_ADDR/PORT from torchrun
    return share
