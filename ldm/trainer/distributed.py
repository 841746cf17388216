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
import torch
from pytorch_lightning.utilities import rank_zero_info

__all__ = ["RUN_NOW_ENV", "BatchNormStats", "RankSeeds", "shared_now"]

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


class BatchNormStats(pl.Callback):
    """Averages BatchNorm running statistics over the ranks after every training batch.

    DDP keeps parameters identical by averaging gradients, but a BatchNorm layer (the GAN
    discriminator of the first-stage losses has some) updates its running mean and variance from
    its own rank's batch: the ranks drift apart until DDP copies rank 0's buffers over the others
    at the next forward pass. Averaging them makes every rank hold the same statistics, those of
    the global batch for the mean (and close to them for the variance). ``sync_batchnorm: true``
    in ``lightning.trainer`` (GPUs only) goes further: it normalises with global-batch statistics.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if trainer.world_size < 2 or not torch.distributed.is_initialized():
            return
        stats = [buf for m in pl_module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                 for buf in (m.running_mean, m.running_var) if buf is not None]
        if not stats:
            return
        flat = torch.cat([b.flatten() for b in stats])
        torch.distributed.all_reduce(flat)
        flat /= trainer.world_size
        for buf, new in zip(stats, flat.split([b.numel() for b in stats])):
            buf.copy_(new.view_as(buf))
