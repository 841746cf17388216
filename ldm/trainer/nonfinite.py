"""Non-finite steps: a NaN/inf loss or gradient skips the update instead of poisoning the weights.

``NonFiniteGuard`` watches every backward pass (the loss) and every optimizer step (the
gradients) of automatic and manual optimisation alike. When either is not finite, the gradients
of all optimizers are dropped for that batch, so no parameter, optimizer moment, EMA
(``update_was_skipped``) or batch-norm statistic changes; the step counter and the LR schedule
still advance, as with a mixed-precision grad scaler's skipped steps. Skipped batches are counted
in the logged metric ``train/nonfinite_skipped``. After ``max_consecutive`` skipped batches in a row the run saves
``last.ckpt`` (the last good state: skipped batches changed nothing), says so, and stops.

With a mixed-precision grad scaler, overflowing gradients are the scaler's business (it skips
those steps and lowers its scale); the guard then watches the loss only.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

__all__ = ["NonFiniteGuard", "update_was_skipped"]


def _finite(tensors: list[torch.Tensor]) -> bool:
    if not tensors:
        return True
    norms = torch._foreach_norm(tensors)  # one reduction per tensor, one host sync overall
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


def update_was_skipped(trainer: Optional[pl.Trainer]) -> bool:
    """True while the current batch's update is being skipped (models skip their EMA update)."""
    for cb in getattr(trainer, "callbacks", None) or []:
        if isinstance(cb, NonFiniteGuard) and cb.skipping:
            return True
    return False


class NonFiniteGuard(pl.Callback):
    """Skips updates with a non-finite loss or gradients; stops after ``max_consecutive`` in a row."""

    def __init__(self,
                 ckptdir: str,              # where last.ckpt goes when the run stops
                 max_consecutive: int = 10):  # skipped batches in a row before stopping (0: never stop)
        super().__init__()
        if max_consecutive < 0:
            raise ValueError(f"max_consecutive must be >= 0, got {max_consecutive}")
        self.path = Path(ckptdir) / "last.ckpt"
        self.max_consecutive = max_consecutive
        self.skipping = False     # the current batch's update is skipped
        self.consecutive = 0      # skipped batches in a row
        self.total = 0            # skipped batches in this run (logged)
        self.stopped_at: Optional[Path] = None  # set when the guard stopped the run
        self._norm_stats: list[tuple[torch.nn.Module, dict[str, torch.Tensor]]] = []

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.consecutive = int(state_dict.get("consecutive", 0))
        self.total = int(state_dict.get("total", 0))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.skipping = False
        # Batch norm updates its running statistics in the forward pass, before any check can run:
        # keep them (small) so that a skipped batch leaves them as they were.
        self._norm_stats = [(m, {k: v.clone() for k, v in m._buffers.items() if v is not None})
                            for m in pl_module.modules()
                            if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats]

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if trainer.training and not _finite([loss.detach()]):
            self.skipping = True

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if not self.skipping and not _uses_grad_scaler(trainer):
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            self.skipping = not _finite(grads)
        if trainer.world_size > 1:  # all ranks skip together (a rank's own loss may be the only bad one)
            self.skipping = bool(trainer.strategy.reduce_boolean_decision(self.skipping, all=False))
        if self.skipping:
            # Without gradients torch optimizers leave parameters and moments untouched.
            for opt in trainer.optimizers:
                opt.zero_grad(set_to_none=True)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.skipping:
            self.consecutive += 1
            self.total += 1
            with torch.no_grad():
                for module, buffers in self._norm_stats:
                    for k, v in buffers.items():
                        module._buffers[k].copy_(v)
        else:
            self.consecutive = 0
        pl_module.log("train/nonfinite_skipped", float(self.total), on_step=True, on_epoch=False, logger=True)
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            self._stop(trainer)

    def _stop(self, trainer: pl.Trainer) -> None:
        from ldm.trainer.callbacks import save_last_checkpoint  # models import this module: keep it light
        self.stopped_at = save_last_checkpoint(trainer, self.path.parent)
        trainer.should_stop = True
        print(f"Stopping at step {trainer.global_step}: {self.consecutive} consecutive batches had a non-finite "
              f"loss or gradients (max_consecutive={self.max_consecutive}, set with "
              f"lightning.callbacks.nonfinite_guard.params.max_consecutive). The last good state is saved in "
              f"{self.stopped_at}", file=sys.stderr, flush=True)


def _uses_grad_scaler(trainer: pl.Trainer) -> bool:
    return getattr(trainer.precision_plugin, "scaler", None) is not None
