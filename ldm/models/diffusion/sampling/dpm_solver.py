"""DPM-Solver++(2M): multistep second-order solver in data prediction (Lu et al. 2022b, Alg. 2).

With lambda = -log sigma and h = lambda_next - lambda, one step in x = x0 + sigma*n coordinates is
    x_next = (sigma_next / sigma) x - expm1(-h) * (D + (D - D_prev) / (2 r)),   r = h_prev / h,
the "midpoint" form of the original DPM-Solver code (``solver_type='dpm_solver'``). The first step
is first order (DDIM). As the original DPMSolverSampler (``lower_order_final=True``) the final step
is first order too when there are fewer than 15 steps; a step to sigma = 0 always is.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ._common import Callback, Denoiser, call_denoiser, check_sigmas, progress, report

__all__ = ["sample_dpmpp_2m"]


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: Optional[dict] = None,
    callback: Optional[Callback] = None,
    disable: Optional[bool] = None,
    generator: Optional[torch.Generator] = None,
    lower_order_final: bool = True,
) -> torch.Tensor:
    """DPM-Solver++(2M) from ``sigmas[0]`` to ``sigmas[-1]``, one denoiser call per step.

    Deterministic; ``generator`` is accepted for the common sampler signature.
    With the original's schedule use ``dpm_solver_sigmas(alphas_cumprod, steps)``; with
    ``karras_sigmas`` this is "DPM++ 2M Karras".
    """
    levels = check_sigmas(sigmas)
    extra_args = {} if extra_args is None else extra_args
    n = len(levels) - 1
    old_denoised: Optional[torch.Tensor] = None
    h_last = 0.0
    for i in progress(n, disable, "DPM-Solver++(2M)"):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = call_denoiser(denoiser, x, sigma, extra_args)
        if sigma_next == 0.0:
            x_next = denoised
        else:
            h = math.log(sigma / sigma_next)
            first_order = old_denoised is None or (lower_order_final and i == n - 1 and n < 15)
            if first_order:
                d = denoised
            else:
                r = h_last / h
                d = denoised + (denoised - old_denoised) / (2 * r)
            x_next = (sigma_next / sigma) * x - math.expm1(-h) * d
            h_last = h
        report(callback, i, sigma, sigma_next, x, denoised, x_next)
        old_denoised = denoised
        x = x_next
    return x
