"""Building blocks shared by the denoiser networks, under their original names.

The noise schedules and ``extract_into_tensor`` that lived here in the original code
(``make_beta_schedule``, ``make_ddim_timesteps``, ...) belong to the diffusion process and live in
``ldm.models.diffusion``; they are imported here under their original names.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

# Original names of the diffusion-process helpers that lived here; they belong to the process.
from ldm.models.diffusion.parameterization import extract as extract_into_tensor
from ldm.models.diffusion.schedule import make_beta_schedule, make_ddim_sampling_parameters, make_ddim_timesteps
from ldm.util import mean_flat

__all__ = [
    "GroupNorm32",
    "SiLU",
    "avg_pool_nd",
    "checkpoint",
    "conv_nd",
    "extract_into_tensor",
    "linear",
    "make_beta_schedule",
    "make_ddim_sampling_parameters",
    "make_ddim_timesteps",
    "mean_flat",
    "noise_like",
    "normalization",
    "scale_module",
    "timestep_embedding",
    "zero_module",
]

# The original shipped its own SiLU for old PyTorch versions; the name stays importable.
SiLU = nn.SiLU


def timestep_embedding(
    timesteps: torch.Tensor,  # (N,) integer or fractional timesteps
    dim: int,                 # embedding width
    max_period: float = 10000,  # lowest frequency is 1 / max_period
    repeat_only: bool = False,  # broadcast the raw timestep instead of the sinusoid
) -> torch.Tensor:
    """Sinusoidal embedding of the timestep t (Transformer positional encoding, [cos | sin]).

    Frequencies are ``max_period ** (-i / half)`` for i < half; an odd ``dim`` is zero-padded.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timestep_embedding: timesteps must be 1-D (N,), got shape {tuple(timesteps.shape)}")
    if repeat_only:
        return timesteps[:, None].expand(-1, dim)
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def checkpoint(
    func: Callable[..., Any],
    inputs: Sequence[Any],
    params: Iterable[torch.Tensor],
    flag: bool,
) -> Any:
    """Evaluate ``func(*inputs)``, recomputing activations in backward when ``flag`` is set.

    Trades compute for memory (gradient checkpointing). The non-reentrant implementation tracks
    every tensor ``func`` uses, so ``params`` (kept for the original signature) need not be
    listed, gradients flow to inputs that do not require grad, and the autocast/RNG state of the
    forward pass is replayed in the recomputation.
    """
    if flag and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero the parameters of ``module`` in place (residual branches start as identity)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def scale_module(module: nn.Module, scale: float) -> nn.Module:
    """Multiply the parameters of ``module`` by ``scale`` in place."""
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics are computed in float32.

    In fp16/bf16 the per-group variance of large activations overflows or loses most of its
    mantissa, which blows up the normalised output; computing in float32 and casting back costs
    little and keeps half-precision UNets stable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The UNet's normalisation layer: 32-group GroupNorm in float32."""
    return GroupNorm32(32, channels)


def _nd(name: str, layers: tuple[type[nn.Module], ...], dims: int) -> type[nn.Module]:
    """The 1D, 2D or 3D variant of a layer."""
    if dims not in (1, 2, 3):
        raise ValueError(f"{name}: unsupported dims={dims!r} (expected 1, 2 or 3)")
    return layers[dims - 1]


def conv_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1D, 2D or 3D convolution."""
    return _nd("conv_nd", (nn.Conv1d, nn.Conv2d, nn.Conv3d), dims)(*args, **kwargs)


def linear(*args: Any, **kwargs: Any) -> nn.Linear:
    return nn.Linear(*args, **kwargs)


def avg_pool_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1D, 2D or 3D average pooling."""
    return _nd("avg_pool_nd", (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), dims)(*args, **kwargs)


def noise_like(shape: Sequence[int], device: torch.device | str, repeat: bool = False) -> torch.Tensor:
    """Standard normal noise of ``shape``; with ``repeat`` one sample is shared across the batch."""
    shape = tuple(shape)
    if repeat:
        return torch.randn((1, *shape[1:]), device=device).expand(shape).contiguous()
    return torch.randn(shape, device=device)
