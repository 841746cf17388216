"""Checkpoint writing that a crash cannot corrupt, and loading that cannot run code."""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Optional

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ldm.checkpoint import atomic_path, load_training_checkpoint

# `last.ckpt` is rotated here before each overwrite, so a damaged newest checkpoint (a disk that
# failed, a copy cut short) still leaves the one before it to resume from.
PREVIOUS_SUFFIX = "-previous"


def previous_path(path: str | os.PathLike) -> str:
    """``<dir>/last.ckpt`` -> ``<dir>/last-previous.ckpt``."""
    stem, ext = os.path.splitext(os.fspath(path))
    return f"{stem}{PREVIOUS_SUFFIX}{ext}"


def plain_containers(obj: Any) -> Any:
    """``obj`` with OmegaConf nodes and dict subclasses (Lightning's AttributeDict) turned into plain
    dicts and lists, so the checkpoint loads back with ``weights_only=True``. Tensors, numbers,
    strings, numpy values and OrderedDicts (state dicts) are kept as they are."""
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, plain_containers(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: plain_containers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain_containers(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(plain_containers(v) for v in obj)
    return obj


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the target directory, then renames it into place; loads only
    tensors and plain data (:func:`ldm.checkpoint.load_training_checkpoint`).

    Lightning's default truncates the target before writing, so a crash or a full disk mid-write
    would leave a broken `last.ckpt` in place of the previous good one; and it loads with
    ``weights_only=False``, so resuming a downloaded run directory could execute code.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        path = os.fspath(path)
        with atomic_path(path) as tmp:
            torch.save(plain_containers(checkpoint), tmp)
            if os.path.basename(path) == "last.ckpt" and os.path.isfile(path):
                _keep_previous(path)

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        # `weights_only` is ignored on purpose: a training checkpoint is never unpickled in full.
        return load_training_checkpoint(path, map_location=map_location if map_location is not None else "cpu")


def _keep_previous(path: str) -> None:
    """Make ``last-previous.ckpt`` the current ``last.ckpt`` (the new one is already written to
    its temporary file), atomically: a hard link under a temporary name, renamed into place."""
    previous = previous_path(path)
    with atomic_path(previous) as tmp:
        os.remove(tmp)
        try:
            os.link(path, tmp)
        except OSError:  # no hard links on this file system: a copy costs time, not safety
            import shutil

            shutil.copyfile(path, tmp)
