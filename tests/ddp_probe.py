"""A callback that records, on every rank of a distributed test run, what the tests compare.

Given to ``main.py`` through the config (``lightning.callbacks.ddp_probe``, with
``--trust-config-targets``): each rank writes ``<out>/rank<r>.pt`` when training ends.
"""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch


class DDPProbe(pl.Callback):
    def __init__(self, out: str):
        super().__init__()
        self.out = Path(out)
        self.record: dict = {"losses": [], "logged": [], "images": []}

    def setup(self, trainer, pl_module, stage):
        # Setup hooks run before the model is wrapped (and rank 0's weights broadcast): this is what
        # each rank built by itself. RankSeeds is the last callback, so the noise seed is read later.
        self.record["initial"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_start(self, trainer, pl_module):
        sampler = trainer.train_dataloader.sampler
        self.record.update(rank=trainer.global_rank, world_size=trainer.world_size,
                           noise_seed=torch.initial_seed(), sampler=(type(sampler).__name__,
                                                                     sampler.num_replicas, sampler.rank))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # After RNGState (an earlier callback) has put a resumed run's saved generator state back.
        self.record.setdefault("rng_at_first_batch", torch.get_rng_state())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.record["losses"].append(float(loss))
        logged = trainer.callback_metrics.get("train/loss_step")  # diffusion models' step loss
        self.record["logged"].append(None if logged is None else float(logged))
        self.record["images"].append(batch["image"].detach().clone())

    def on_train_end(self, trainer, pl_module):
        self.record["final"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.record["global_step"] = trainer.global_step
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(self.record, self.out / f"rank{trainer.global_rank}.pt")
