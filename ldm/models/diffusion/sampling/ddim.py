"""DDIM (Song et al. 2021): sampling with eta, masked in-/out-painting, and deterministic inversion.

In x = x0 + sigma*n coordinates the DDIM update (Song et al. 2021, Eq. 12) reads
    x_next = x0_hat + sigma_down * eps_hat + sigma_up * z,   eps_hat = (x - x0_hat) / sigma,
    sigma_up = eta * sigma_next * sqrt(sigma^2 - sigma_next^2) / sigma,
    sigma_down = sqrt(sigma_next^2 - sigma_up^2),
which is Eq. 12 divided by sqrt(abar_next); eta = 0 is the probability-flow ODE with Euler steps,
eta = 1 the DDPM posterior (Ho et al. 2020, Eq. 7).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ._common import (Callback, Denoiser, NoiseSampler, call_denoiser, check_sigmas, denoise_known, keep_known,
                      prepare, progress, report)

__all__ = ["sample_ddim", "invert_ddim", "ddim_noise_levels"]


def ddim_noise_levels(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of one DDIM step from ``sigma`` to ``sigma_next`` (module docstring)."""
    if sigma_next == 0.0 or eta == 0.0:
        return sigma_next, 0.0
    sigma_up = eta * sigma_next * math.sqrt(sigma ** 2 - sigma_next ** 2) / sigma
    return math.sqrt(sigma_next ** 2 - sigma_up ** 2), sigma_up


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: Optional[dict] = None,
    callback: Optional[Callback] = None,
    disable: Optional[bool] = None,
    generator: Optional[torch.Generator] = None,
    eta: float = 0.0,
    noise_sampler: Optional[NoiseSampler] = None,
    mask: Optional[torch.Tensor] = None,
    x0: Optional[torch.Tensor] = None,
    x0_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """DDIM from ``sigmas[0]`` to ``sigmas[-1]``, one denoiser call per step.

    x: start at level ``sigmas[0]`` (e.g. ``vp_to_ve(randn, sigmas[0])``).
    eta: 0 deterministic ... 1 ancestral; must lie in [0, 1].
    noise_sampler: ``(sigma, sigma_next) -> N(0, I)`` draws; default from ``generator``. Each step
        draws first the re-noising of x0 (masked sampling only), then the eta noise (eta > 0 and
        sigma_next > 0 only).
    mask, x0: in-/out-painting: where ``mask`` is 1 the state is replaced by x0 re-noised to the
        current level before every step, and the returned sample equals x0 there exactly.
    x0_transform: applied to the x0 estimate before the update while the direction term keeps the
        model's own eps (as the original ``quantize_x0``).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    levels, extra_args, noise_sampler = prepare(sigmas, x, extra_args, noise_sampler, generator, mask, x0)
    for i in progress(len(levels) - 1, disable, "DDIM"):
        sigma, sigma_next = levels[i], levels[i + 1]
        x, denoised = denoise_known(denoiser, x, sigma, sigma_next, extra_args, noise_sampler, mask, x0)
        eps = (x - denoised) / sigma
        if x0_transform is not None:
            denoised = x0_transform(denoised)
        sigma_down, sigma_up = ddim_noise_levels(sigma, sigma_next, eta)
        x_next = denoised + sigma_down * eps
        if sigma_up > 0.0:
            x_next = x_next + sigma_up * noise_sampler(sigma, sigma_next)
        report(callback, i, sigma, sigma_next, x, denoised, x_next)
        x = x_next
    return keep_known(x, mask, x0)


@torch.no_grad()
def invert_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: Optional[dict] = None,
    callback: Optional[Callback] = None,
    disable: Optional[bool] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """DDIM inversion: the eta = 0 update run towards noise along increasing ``sigmas``.

    ``x`` is a latent at level ``sigmas[0] > 0`` (for CompVis schedules: a clean latent treated as
    being at sigma(t=0), ``vp_to_ve(z, sigmas[0])``). Sampling with ``sigmas.flip(0)`` from the
    result approximately returns ``x``; the error shrinks with the step size. ``generator`` is
    accepted for the common signature; inversion draws no noise.
    """
    levels = check_sigmas(sigmas, increasing=True)
    extra_args = {} if extra_args is None else extra_args
    for i in progress(len(levels) - 1, disable, "DDIM inversion"):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = call_denoiser(denoiser, x, sigma, extra_args)
        x_next = denoised + sigma_next * (x - denoised) / sigma
        report(callback, i, sigma, sigma_next, x, denoised, x_next)
        x = x_next
    return x
