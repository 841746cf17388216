"""Callbacks that inject faults into a training run at exact steps (not at times), for the tests.

Configs name them under ``lightning.callbacks`` (with ``--trust-config-targets``). A fault that
must fire once per test (a kill) leaves a marker file, so the resumed run, which rebuilds the same
callbacks from the run's saved config, passes the step without firing again.
"""
from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch


class SignalAt(pl.Callback):
    """Sends ``signal`` to this process when batch ``step + 1`` starts (after ``step`` optimizer steps)."""

    def __init__(self, steps: Sequence[int], marker_dir: str, signal: str = "SIGKILL"):
        super().__init__()
        self.steps = sorted(int(s) for s in steps)
        self.marker_dir = Path(marker_dir)
        self.signal = signal

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        for step in self.steps:
            marker = self.marker_dir / f"{self.signal}-at-{step}"
            if trainer.global_step >= step and not marker.exists():
                marker.touch()
                os.kill(os.getpid(), getattr(signal, self.signal))
                return


class PoisonBatches(pl.Callback):
    """Makes the training loss NaN at the given steps by writing NaN into the batch's images."""

    def __init__(self, steps: Sequence[int], key: str = "image"):
        super().__init__()
        self.steps, self.key = {int(s) for s in steps}, key
        self.poisoned: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step in self.steps:
            batch[self.key].fill_(math.nan)
            self.poisoned.append(trainer.global_step)


class InfGradient(pl.Callback):
    """Writes inf into one gradient after the backward pass at the given steps (the loss stays finite)."""

    def __init__(self, steps: Sequence[int]):
        super().__init__()
        self.steps = {int(s) for s in steps}

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step in self.steps:
            p = next(p for p in pl_module.parameters() if p.grad is not None)
            p.grad.view(-1)[0] = math.inf


def training_state(trainer: pl.Trainer) -> dict[str, torch.Tensor]:
    """Every tensor an update may change: weights, buffers (EMA included) and optimizer moments."""
    state = {f"model.{k}": v.detach().clone() for k, v in trainer.lightning_module.state_dict().items()}
    for i, opt in enumerate(trainer.optimizers):
        for pid, s in opt.state_dict()["state"].items():
            for k, v in s.items():
                if torch.is_tensor(v):
                    state[f"opt{i}.{pid}.{k}"] = v.detach().clone()
    return state


class RecordAround(pl.Callback):
    """Records ``training_state`` before the batches at the given steps and before the batch after each.

    "After" is taken when the next batch starts: the model's own batch-end hook (the EMA update)
    runs after the callbacks' batch-end hooks.
    """

    instances: list["RecordAround"] = []  # built inside main.py's run: the test finds them here

    def __init__(self, steps: Sequence[int]):
        super().__init__()
        self.steps = {int(s) for s in steps}
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}
        self._current: int | None = None
        RecordAround.instances.append(self)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._current is not None:
            self.after[self._current] = training_state(trainer)
        self._current = trainer.global_step if trainer.global_step in self.steps else None
        if self._current is not None:
            self.before[self._current] = training_state(trainer)
