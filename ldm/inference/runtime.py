"""Where and how sampling runs: device selection, precision (autocast), seeding.

One place for these switches (STYLE "habits we keep", 7). Nothing here names a specific
accelerator except the selection order itself: CUDA, then Apple MPS, then CPU.
"""
from __future__ import annotations

import contextlib
import random
from typing import ContextManager, Optional, Union

import numpy as np
import torch

__all__ = ["PRECISIONS", "autocast", "make_generator", "precision_dtype", "seed_everything", "select_device"]

# fp32: exact, the default. fp16: ~2x faster on GPUs with tensor cores, halves activation memory.
# bf16: fp32's range with fp16's speed on recent GPUs and CPUs; the safer reduced precision.
PRECISIONS = ("fp32", "fp16", "bf16")
_ALIASES = {"full": "fp32", "float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}


def select_device(requested: Union[str, torch.device, None] = None) -> torch.device:
    """``requested`` if given (validated), else CUDA if available, else MPS, else CPU."""
    if requested is not None and str(requested) != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: CUDA is not available on this machine")
        if device.type == "mps" and not _mps_available():
            raise ValueError(f"--device {requested}: Apple MPS is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def precision_dtype(precision: str) -> torch.dtype:
    """torch dtype of a precision name (``fp32|fp16|bf16``; ``full``/``half`` accepted)."""
    name = _ALIASES.get(precision, precision)
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def autocast(device: Union[str, torch.device], precision: str = "fp32") -> ContextManager:
    """Mixed precision for the network evaluations on ``device``; fp32 is a no-op.

    The weights stay fp32 and samplers keep their state in fp32 (autocast only lowers the matmuls
    and convolutions inside), so the sampler arithmetic is unaffected by the choice.
    """
    dtype = precision_dtype(precision)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def seed_everything(seed: Optional[int]) -> torch.Generator:
    """Seed Python, numpy and torch, and return a CPU generator for the initial noise.

    Noise drawn from this CPU generator (then moved to the device) is the same on every
    accelerator, so a seed reproduces the same starting latents everywhere. ``None`` picks a
    random seed (recorded in the generator's ``initial_seed()``).
    """
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must lie in [0, 2**63), got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    return make_generator(seed)


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))
