"""Preemption: SIGTERM or SIGUSR1 saves `last.ckpt` at the end of the current batch, then the run stops.

Clusters announce preemption with SIGTERM (most schedulers) or SIGUSR1 (SLURM's ``--signal``).
The handler only records the signal; the checkpoint is written between batches, where the state
is consistent, by ``trainer.save_checkpoint`` (atomic through the run's checkpoint plugin). The
run then ends cleanly and ``main.py`` exits with status 0; ``main.py --resume <run dir>``
continues from that batch.

The handlers are installed when training starts, over Lightning's own, and the previous ones
are put back when training ends or fails. Lightning's SIGTERM handler would instead end the run
with an exception after the batch (no checkpoint, "failed" logs). Under SLURM with auto-requeue
Lightning owns SIGUSR1 (it saves its own checkpoint and requeues the job): this callback then
leaves SIGUSR1 to it.
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Optional, Sequence

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment

from ldm.trainer.callbacks import save_last_checkpoint

__all__ = ["PreemptionCheckpoint"]


class PreemptionCheckpoint(pl.Callback):
    """Installs signal handlers while fitting; on a signal, saves `last.ckpt` and stops."""

    def __init__(self,
                 ckptdir: str,                                      # where last.ckpt is written
                 signals: Sequence[str] = ("SIGTERM", "SIGUSR1")):  # names of the signals to catch
        super().__init__()
        self.path = Path(ckptdir) / "last.ckpt"
        self.signals: list[signal.Signals] = []
        for name in signals:
            sig = getattr(signal, str(name), None)
            if not isinstance(sig, signal.Signals):
                raise ValueError(f"PreemptionCheckpoint.signals: {name!r} is not a signal name on this platform")
            self.signals.append(sig)
        self.received: Optional[signal.Signals] = None
        self.saved_at: Optional[Path] = None  # set once the preemption checkpoint is written
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self.received = signal.Signals(signum)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.received, self.saved_at = None, None
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        env = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
        slurm_owned = {env.requeue_signal} if isinstance(env, SLURMEnvironment) and env.auto_requeue else set()
        for sig in self.signals:
            if sig in slurm_owned:
                continue
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.saved_at is not None:
            return
        received = self.received is not None
        if trainer.world_size > 1:  # all ranks must save (a collective) and stop at the same batch
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received or _accumulating(trainer):  # gradients are not checkpointed: wait for the step
            return
        self.saved_at = save_last_checkpoint(trainer, self.path.parent)
        trainer.should_stop = True
        if trainer.is_global_zero:
            what = self.received.name if self.received is not None else "a preemption signal on another rank"
            print(f"Received {what}: saved the state after step {trainer.global_step} to {self.saved_at}; "
                  f"continue with `main.py --resume {self.saved_at.parent.parent}`", file=sys.stderr, flush=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


def _accumulating(trainer: pl.Trainer) -> bool:
    """True after a batch whose gradients wait for more (trainer-level accumulate_grad_batches)."""
    should_accumulate = getattr(trainer.fit_loop.epoch_loop, "_should_accumulate", None)
    return bool(trainer.lightning_module.automatic_optimization and callable(should_accumulate)
                and should_accumulate())
