"""What a distributed run (DDP/FSDP over several processes, one or many nodes) needs from the glue.

Lightning launches and connects the processes (its subprocess launcher for ``--devices N`` on one
machine, or the environment torchrun and SLURM set up) and reduces what is logged with
``sync_dist=True``. This module adds the two things that must agree across ranks before Lightning
has connected them:

* one run directory: rank 0 names it; the processes Lightning's subprocess launcher starts inherit
  the name through ``LDM_RUN_NOW`` (torchrun and SLURM start every rank at once: they read it
  from the environment too, see docs/distributed.md);
* seeds: every rank builds the model from ``--seed`` (identical initial weights, EMA and buffers;
  DDP also broadcasts rank 0's at start), the data order derives from ``--seed`` on every rank
  (one permutation, split between ranks by ``ldm.data.resumable.EpochSampler``), and once the
  processes are connected each rank reseeds its generators with ``--seed + global rank``, so the
  diffusion timesteps and noise differ between ranks instead of repeating on each.
"""
from __future__ import annotations

import os
from typing import Optional

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

__all__ = ["RUN_NOW_ENV", "RankSeeds", "shared_now"]

# The run directory's timestamp, shared by all processes of one launch.
RUN_NOW_ENV = "LDM_RUN_NOW"


def shared_now() -> Optional[str]:
    """The timestamp rank 0 chose for this launch, when this process is one of its ranks."""
    return os.environ.get(RUN_NOW_ENV) or None


class RankSeeds(pl.Callback):
    """Reseeds each rank with ``seed + global_rank`` once the processes are connected (see module doc).

    Runs at ``setup``, after Lightning has built the process group and set up the data module,
    before the first batch; a resumed run then restores the saved generator states on top
    (``ldm.trainer.resume.RNGState``), so resuming stays exact on every rank.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = int(seed)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        pl.seed_everything(self.seed + trainer.global_rank, workers=True, verbose=False)
        if trainer.world_size > 1:
            rank_zero_info(f"Seeds: weights and data order {self.seed} on all {trainer.world_size} ranks; "
                           f"noise {self.seed} + global rank (rank 0: {self.seed}, rank {trainer.world_size - 1}: "
                           f"{self.seed + trainer.world_size - 1})")
