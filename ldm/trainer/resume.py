"""Exact resume: the random number generators' states travel with the checkpoint.

Lightning restores weights, optimizers, schedulers, the grad scaler, the step counters and (for a
loader with ``state_dict``, see ``ldm.data.resumable``) the data position. What it does not
restore is the stream of random numbers: diffusion timesteps and noise, posterior samples,
dropout. ``RNGState`` saves the ``random``, ``numpy``, ``torch`` and accelerator generators with
every checkpoint and puts them back right before the first training batch after a resume, so the
resumed run draws exactly the numbers the uninterrupted run drew. Validation runs inside a saved
and restored RNG scope, so it never shifts the training stream (whether a resumed run repeats a
validation or not, training sees the same numbers).

Under DDP each rank draws its own noise (``ldm.trainer.distributed.RankSeeds``): the checkpoint,
written by rank 0, holds every rank's states (gathered when it is saved: Lightning dumps a
checkpoint on all ranks) and each rank takes its own back.

States are stored as tensors, strings and numbers only: checkpoints stay loadable with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import random
import warnings
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch

__all__ = ["RNGState", "capture_rng", "restore_rng"]


def capture_rng() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


class RNGState(pl.Callback):
    """Saves the RNG states in every checkpoint and restores them when training resumes."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: Optional[dict[str, Any]] = None     # loaded from a checkpoint, not yet applied
        self._outside_validation: Optional[dict[str, Any]] = None

    def state_dict(self) -> dict[str, Any]:
        # A checkpoint written during validation records the training stream, not validation's.
        state = self._outside_validation or capture_rng()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)  # every rank dumps the checkpoint: a collective is safe
            return {"rng_per_rank": states}
        return {"rng": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng_per_rank") or state_dict.get("rng")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # Applied here rather than on load: between loading and the first batch Lightning builds
        # iterators, may run sanity validation, etc.; the saved state is the one right before the
        # next batch of the interrupted run.
        if self._pending is not None:
            pending, self._pending = self._pending, None
            if isinstance(pending, list):  # one state per rank of the saving run
                if len(pending) != trainer.world_size:
                    warnings.warn(f"the checkpoint holds the random states of {len(pending)} process(es), this run "
                                  f"has {trainer.world_size}: the generators keep their fresh per-rank seeds")
                    return
                pending = pending[trainer.global_rank]
            restore_rng(pending)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._outside_validation = capture_rng()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._outside_validation is not None:
            restore_rng(self._outside_validation)
            self._outside_validation = None
