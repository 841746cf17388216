"""Experiment loggers: TensorBoard (default), CSV, Weights & Biases (online or offline)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl

from ldm.config.errors import ConfigError


def build_logger(kind: str, logdir: Path, name: str, project: Optional[str] = None,
                 offline: bool = False) -> Optional[Any]:
    if kind == "none":
        return None
    if kind == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("--logger", "tensorboard is not installed; pip install tensorboard or use --logger csv") from None
        return pl.loggers.TensorBoardLogger(save_dir=str(logdir), name="tensorboard", version="")
    if kind == "csv":
        return pl.loggers.CSVLogger(save_dir=str(logdir), name="csv", version="")
    if kind == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("--logger", "wandb is not installed; pip install 'ldm[wandb]'") from None
        return pl.loggers.WandbLogger(name=name, id=name, save_dir=str(logdir), project=project or "ldm",
                                      offline=offline)
    raise ConfigError("--logger", f"unknown logger {kind!r}; choose tensorboard, csv, wandb or none")
