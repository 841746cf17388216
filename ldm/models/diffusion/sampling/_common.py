"""Pieces every sampler shares: argument checks, noise sources, in-painting masks, progress bars.

All samplers work in the noise-level form of Karras et al. 2022 (Eq. 1): ``x = x0 + sigma * n``.
A CompVis (variance-preserving) latent ``z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n`` is the same
point scaled by ``sqrt(abar_t) = 1 / sqrt(1 + sigma^2)`` (see ``denoiser.vp_to_ve``).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

Denoiser = Callable[..., torch.Tensor]            # D(x, sigma[B], **extra_args) -> x0 estimate
NoiseSampler = Callable[[float, float], torch.Tensor]  # (sigma, sigma_next) -> standard normal like x
Callback = Callable[[dict], Any]


def check_sigmas(sigmas: torch.Tensor, *, increasing: bool = False, name: str = "sigmas") -> list[float]:
    """Validate a noise-level sequence and return it as Python floats (one host sync per run)."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"{name} must be a 1-D tensor with at least 2 noise levels, got "
                         f"{getattr(sigmas, 'shape', type(sigmas))}")
    values = sigmas.detach().double().cpu().tolist()
    if any(not (s >= 0.0 and s < float("inf")) for s in values):
        raise ValueError(f"{name} must be finite and non-negative, got {values}")
    pairs = list(zip(values[:-1], values[1:]))
    if increasing and any(b <= a for a, b in pairs):
        raise ValueError(f"{name} must be strictly increasing for inversion, got {values}")
    if not increasing and any(b >= a for a, b in pairs):
        raise ValueError(f"{name} must be strictly decreasing (from noise to data), got {values}")
    if increasing and values[0] == 0.0:
        raise ValueError(f"{name}[0] must be > 0: the noise direction is undefined at sigma = 0")
    return values


def default_noise_sampler(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> NoiseSampler:
    """Fresh N(0, I) draws shaped like ``x``.

    With a generator the draws are made on the generator's device and moved to ``x``'s device, so
    a seeded CPU generator gives the same samples on every accelerator.
    """
    def sample(sigma: float, sigma_next: float) -> torch.Tensor:
        if generator is None:
            return torch.randn_like(x)
        noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
        return noise.to(x.device)
    return sample


def call_denoiser(denoiser: Denoiser, x: torch.Tensor, sigma: float, extra_args: dict) -> torch.Tensor:
    """D(x; sigma) with sigma broadcast to one level per batch element.

    The levels stay on the host: adapters such as CompVisDenoiser map them to timesteps there, so
    the sampling loop never waits on the accelerator to read a value back (no sync per step)."""
    return denoiser(x, torch.full((x.shape[0],), sigma, dtype=x.dtype), **extra_args)


def check_mask(mask: Optional[torch.Tensor], x0: Optional[torch.Tensor], x: torch.Tensor) -> None:
    if mask is None and x0 is None:
        return
    if mask is None or x0 is None:
        raise ValueError("masked sampling needs both `mask` and `x0` (got only "
                         f"{'mask' if x0 is None else 'x0'})")
    for name, t in (("mask", mask), ("x0", x0)):
        try:
            torch.broadcast_shapes(t.shape, x.shape)
        except RuntimeError:
            raise ValueError(f"`{name}` of shape {tuple(t.shape)} does not broadcast to the latent "
                             f"shape {tuple(x.shape)}") from None


def prepare(sigmas: torch.Tensor, x: torch.Tensor, extra_args: Optional[dict], noise_sampler: Optional[NoiseSampler],
            generator: Optional[torch.Generator], mask: Optional[torch.Tensor] = None,
            x0: Optional[torch.Tensor] = None) -> tuple[list[float], dict, NoiseSampler]:
    """The checks and defaults of a masked-capable sampler: (levels, extra_args, noise_sampler)."""
    levels = check_sigmas(sigmas)
    check_mask(mask, x0, x)
    noise_sampler = default_noise_sampler(x, generator) if noise_sampler is None else noise_sampler
    return levels, {} if extra_args is None else extra_args, noise_sampler


def keep_known(x: torch.Tensor, mask: Optional[torch.Tensor], x0: Optional[torch.Tensor]) -> torch.Tensor:
    """The final sample: exactly x0 where mask = 1 (no-op without a mask)."""
    return x if mask is None else mask * x0 + (1.0 - mask) * x


def paste_known(x: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor, sigma: float,
                noise: torch.Tensor) -> torch.Tensor:
    """Replace the known region (mask = 1) by x0 re-noised to the current level, q(x_t | x0)."""
    return mask * (x0 + sigma * noise) + (1.0 - mask) * x


def denoise_known(denoiser: Denoiser, x: torch.Tensor, sigma: float, sigma_next: float, extra_args: dict,
                  noise_sampler: NoiseSampler, mask: Optional[torch.Tensor] = None,
                  x0: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, D(x; sigma)) under the samplers' one mask rule: before each step the known region
    (mask = 1) is replaced by x0 re-noised to the current level (one fresh draw), so the denoiser
    sees a consistent state; ``keep_known`` makes the final sample exact there."""
    if mask is not None:
        x = paste_known(x, x0, mask, sigma, noise_sampler(sigma, sigma_next))
    return x, call_denoiser(denoiser, x, sigma, extra_args)


def progress(n: int, disable: Optional[bool], desc: str):
    return tqdm(range(n), total=n, disable=disable, desc=desc)


def report(callback: Optional[Callback], i: int, sigma: float, sigma_next: float, x: torch.Tensor,
           denoised: torch.Tensor, x_next: torch.Tensor) -> None:
    """Per-step callback: ``x`` is the state the denoiser saw, ``x_next`` the state after the step."""
    if callback is not None:
        callback({"i": i, "sigma": sigma, "sigma_next": sigma_next, "x": x,
                  "denoised": denoised, "x_next": x_next})
