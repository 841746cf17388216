"""Checkpoint writing that a crash cannot corrupt."""
from __future__ import annotations

from typing import Any, Optional

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ldm.checkpoint import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the target directory, then renames it into place.

    Lightning's default truncates the target before writing; a crash or a full disk mid-write
    would leave a broken `last.ckpt` in place of the previous good one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
