"""Ancestral DDPM sampling (Ho et al. 2020, Alg. 2) on any descending noise-level sequence.

Each step draws from the posterior q(x_next | x, x0_hat) (Ho et al. 2020, Eq. 6-7); in
x = x0 + sigma*n coordinates with r = sigma_next^2 / sigma^2 its mean is x0_hat + r (x - x0_hat)
and its standard deviation sigma_next * sqrt(1 - r). On the full chain ``ddpm_sigmas`` this is
the original ``p_sample_loop`` with the fixed-small variance; the last step to sigma = 0 returns
the x0 estimate.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ._common import Callback, Denoiser, NoiseSampler, denoise_known, keep_known, prepare, progress, report

__all__ = ["sample_ddpm"]


@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: Optional[dict] = None,
    callback: Optional[Callback] = None,
    disable: Optional[bool] = None,
    generator: Optional[torch.Generator] = None,
    noise_sampler: Optional[NoiseSampler] = None,
    mask: Optional[torch.Tensor] = None,
    x0: Optional[torch.Tensor] = None,
    clip_denoised: bool = False,
    x0_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    v_posterior: float = 0.0,
) -> torch.Tensor:
    """Ancestral sampling from ``sigmas[0]`` to ``sigmas[-1]``.

    clip_denoised: clamp the x0 estimate to [-1, 1] before forming the posterior mean (the
        original ``clip_denoised``; meant for pixel-space models).
    x0_transform: applied to the (clamped) x0 estimate before the posterior (the original
        ``quantize_denoised``).
    v_posterior: the original DDPM option: the step variance is (1 - v) beta_tilde + v beta with
        beta = 1 - abar_next / abar of the step (Ho et al. 2020, Sec. 3.2: sigma_t^2 = beta_tilde_t
        or beta_t); the mean is the posterior mean either way.
    noise_sampler / mask / x0: as in ``sample_ddim`` (re-noising draw first, then the step noise,
        which is skipped when sigma_next = 0).
    """
    levels, extra_args, noise_sampler = prepare(sigmas, x, extra_args, noise_sampler, generator, mask, x0)
    for i in progress(len(levels) - 1, disable, "DDPM"):
        sigma, sigma_next = levels[i], levels[i + 1]
        x, denoised = denoise_known(denoiser, x, sigma, sigma_next, extra_args, noise_sampler, mask, x0)
        if clip_denoised:
            denoised = denoised.clamp(-1.0, 1.0)
        if x0_transform is not None:
            denoised = x0_transform(denoised)
        ratio = (sigma_next / sigma) ** 2
        x_next = denoised + ratio * (x - denoised)
        if sigma_next > 0.0:
            var = sigma_next ** 2 * (1.0 - ratio)  # beta_tilde, in x0 + sigma*n units
            if v_posterior:
                beta = (sigma ** 2 - sigma_next ** 2) * (1.0 + sigma_next ** 2) / (1.0 + sigma ** 2)
                var = (1.0 - v_posterior) * var + v_posterior * beta
            x_next = x_next + var ** 0.5 * noise_sampler(sigma, sigma_next)
        report(callback, i, sigma, sigma_next, x, denoised, x_next)
        x = x_next
    return keep_known(x, mask, x0)
