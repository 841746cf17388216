"""PLMS: pseudo linear multi-step sampling (Liu et al. 2022, PNDM, Eq. 12 with Eq. 9 as transfer).

The transfer part is the deterministic DDIM step, in x = x0 + sigma*n coordinates simply
x_next = x + (sigma_next - sigma) * eps'. eps' combines the current and up to three previous eps
estimates with the Adams-Bashforth weights; the first step has no history and uses the
pseudo improved Euler (Heun) average of eps at both ends, which costs one extra evaluation.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ._common import (Callback, Denoiser, NoiseSampler, call_denoiser, denoise_known, keep_known, prepare,
                      progress, report)

__all__ = ["sample_plms"]


def _adams_bashforth(eps: torch.Tensor, history: list[torch.Tensor]) -> torch.Tensor:
    if len(history) == 1:
        return (3 * eps - history[-1]) / 2
    if len(history) == 2:
        return (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
    return (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24


@torch.no_grad()
def sample_plms(
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
    x0_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    old_eps: Optional[list[torch.Tensor]] = None,
) -> torch.Tensor:
    """PLMS from ``sigmas[0]`` to ``sigmas[-1]``: len(sigmas) denoiser calls (one extra at step 0).

    Deterministic; ``generator``/``noise_sampler`` only feed the re-noising of x0 in masked
    sampling. mask, x0, x0_transform: as in ``sample_ddim``. For a single step ending at sigma = 0
    the Heun correction is skipped (there is no eps at sigma = 0).
    old_eps: eps estimates of earlier steps (oldest first) to continue from instead of the Heun
        start; the list is updated in place and holds the last three eps after the run (the
        original ``old_eps`` of ``p_sample_plms``).
    """
    levels, extra_args, noise_sampler = prepare(sigmas, x, extra_args, noise_sampler, generator, mask, x0)
    history = [] if old_eps is None else old_eps
    del history[:-3]
    for i in progress(len(levels) - 1, disable, "PLMS"):
        sigma, sigma_next = levels[i], levels[i + 1]
        x, denoised = denoise_known(denoiser, x, sigma, sigma_next, extra_args, noise_sampler, mask, x0)
        eps = (x - denoised) / sigma
        if history:
            eps_prime = _adams_bashforth(eps, history)
        elif sigma_next > 0.0:
            x_euler = x + (sigma_next - sigma) * eps
            eps_next = (x_euler - call_denoiser(denoiser, x_euler, sigma_next, extra_args)) / sigma_next
            eps_prime = (eps + eps_next) / 2
        else:
            eps_prime = eps
        denoised = x - sigma * eps_prime
        if x0_transform is not None:
            denoised = x0_transform(denoised)
        x_next = denoised + sigma_next * eps_prime
        report(callback, i, sigma, sigma_next, x, denoised, x_next)
        history.append(eps)
        del history[:-3]
        x = x_next
    return keep_known(x, mask, x0)
