"""UniPC: unified predictor-corrector multistep solver (Zhao et al. 2023), data prediction.

Per step (lambda = -log sigma, h = lambda_next - lambda) the order-p predictor UniP extrapolates
from the last p x0 estimates; the model is then evaluated at the prediction, and the corrector UniC
reuses that evaluation to raise the accuracy by one order at no extra cost (the evaluation is also
the next step's history). ``variant`` picks B(h) (Zhao et al. 2023, Sec. 3.3): "bh1" B(h) = h,
"bh2" B(h) = e^h - 1, the latter recommended for guided sampling with few steps.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ._common import Callback, Denoiser, call_denoiser, check_sigmas, progress, report

__all__ = ["sample_unipc"]

VARIANTS = ("bh1", "bh2")


def _unipc_weights(rks: list[float], h: float, order: int, variant: str):
    """R, b of the linear systems for the rho coefficients (Zhao et al. 2023, Alg. 2), and B(h)."""
    hh = -h  # data prediction integrates in -lambda
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    b = []
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R = torch.tensor([[rk ** (i - 1) for rk in rks] for i in range(1, order + 1)], dtype=torch.float64)
    return R, torch.tensor(b, dtype=torch.float64), h_phi_1, b_h


def _combine(weights: list[float], tensors: list[torch.Tensor]):
    return sum(w * t for w, t in zip(weights, tensors))


def _unipc_step(x: torch.Tensor, sigma: float, sigma_next: float, history: list[torch.Tensor],
                lambdas: list[float], order: int, variant: str, evaluate: Optional[Callable]):
    """One UniP step of ``order`` from ``sigma`` to ``sigma_next``, then UniC when ``evaluate``."""
    m0, lam0 = history[-1], lambdas[-1]
    h = -math.log(sigma_next) - lam0
    rks = [(lambdas[-(k + 1)] - lam0) / h for k in range(1, order)] + [1.0]
    d1s = [(history[-(k + 1)] - m0) / rks[k - 1] for k in range(1, order)]
    R, b, h_phi_1, b_h = _unipc_weights(rks, h, order, variant)
    x_lin = (sigma_next / sigma) * x - h_phi_1 * m0  # the first-order (DDIM) part
    if order == 1:
        x_pred = x_lin
    else:
        rhos_p = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        x_pred = x_lin - b_h * _combine(rhos_p, d1s)
    if evaluate is None:
        return x_pred, None
    m_next = evaluate(x_pred)
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()
    correction = _combine(rhos_c[:-1], d1s) + rhos_c[-1] * (m_next - m0)
    return x_lin - b_h * correction, m_next


@torch.no_grad()
def sample_unipc(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: Optional[dict] = None,
    callback: Optional[Callback] = None,
    disable: Optional[bool] = None,
    generator: Optional[torch.Generator] = None,
    order: int = 2,
    variant: str = "bh2",
    lower_order_final: bool = True,
) -> torch.Tensor:
    """UniPC-``variant`` of ``order`` (1-3) from ``sigmas[0]`` to ``sigmas[-1]``, one call per step.

    Warm-up steps use the orders the history allows; ``lower_order_final`` lowers the order of the
    last steps so that it never exceeds the number of remaining steps, and the final step (which
    has no later evaluation to correct with) is predictor only. Deterministic; ``generator`` is
    accepted for the common sampler signature.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    levels = check_sigmas(sigmas)
    extra_args = {} if extra_args is None else extra_args
    n = len(levels) - 1
    history = [call_denoiser(denoiser, x, levels[0], extra_args)]
    lambdas = [-math.log(levels[0])]
    for i in progress(n, disable, f"UniPC-{variant}"):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = history[-1]
        last = i == n - 1
        if sigma_next == 0.0:  # lambda = inf: only the first-order step is defined, it returns D
            x_next, m_next = denoised, None
        else:
            step_order = min(order, i + 1, n - i) if lower_order_final else min(order, i + 1)
            evaluate = None if last else (lambda z: call_denoiser(denoiser, z, sigma_next, extra_args))
            x_next, m_next = _unipc_step(x, sigma, sigma_next, history, lambdas, step_order, variant, evaluate)
        report(callback, i, sigma, sigma_next, x, denoised, x_next)
        if not last:
            if m_next is None:
                m_next = call_denoiser(denoiser, x_next, sigma_next, extra_args)
            history = (history + [m_next])[-order:]
            lambdas = (lambdas + [-math.log(sigma_next)])[-order:]
        x = x_next
    return x
