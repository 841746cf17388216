"""Discretisations: which noise levels a sampler visits, as descending ``sigmas`` tensors.

Every function returns float32 noise levels ``sigma = sqrt((1 - abar) / abar)`` from the most
noisy to the last level; samplers integrate from ``sigmas[0]`` to ``sigmas[-1]``.
CompVis-style schedules end at sigma(t=0) > 0 (the original's final abar_prev = abar_0,
diffusers' ``set_alpha_to_one=False``); Karras schedules end at 0.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ldm.models.diffusion.schedule import make_ddim_timesteps

from .denoiser import precise_dtype, sigmas_from_alphas_cumprod

__all__ = [
    "ddim_timesteps",
    "timestep_sigmas",
    "ddim_sigmas",
    "ddpm_sigmas",
    "dpm_solver_sigmas",
    "karras_sigmas",
    "append_zero",
]

DISCRETIZATIONS = ("uniform", "quad")
DPM_SKIP_TYPES = ("time_uniform", "logSNR", "time_quadratic")


def _check_steps(num_steps: int, num_train_timesteps: int) -> None:
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if num_steps > num_train_timesteps:
        raise ValueError(f"num_steps={num_steps} exceeds the {num_train_timesteps} training timesteps")


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000, discretize: str = "uniform") -> torch.Tensor:
    """The training steps the samplers of this package visit: exactly ``num_steps``, ascending.

    The first ``num_steps`` entries of the original grid ``schedule.make_ddim_timesteps`` (the one
    place the grid is defined; the original sampler classes use it whole). When ``num_steps``
    divides T the two are equal. Otherwise the original ``range(0, T, T // num_steps) + 1`` held
    ``ceil(T / c)`` steps (31 for 30 requested, T=1000); the prefix is also diffusers'
    ``timestep_spacing="leading"`` with ``steps_offset=1``. ``num_steps = T`` raises, as its last
    step would be T (the original indexed past the table). ``quad`` raises when it collapses onto
    repeated steps (num_steps >= 30 for T=1000), which would run fewer distinct steps than asked.
    """
    _check_steps(num_steps, num_train_timesteps)
    if discretize not in DISCRETIZATIONS:
        raise ValueError(f"discretize must be one of {DISCRETIZATIONS}, got {discretize!r}")
    steps = make_ddim_timesteps(discretize, num_steps, num_train_timesteps, verbose=False)[:num_steps]
    distinct = len(np.unique(steps))
    if distinct != num_steps:
        raise ValueError(f"discretize={discretize!r} gives only {distinct} distinct timesteps for num_steps="
                         f"{num_steps} (T={num_train_timesteps}); use fewer steps or 'uniform'")
    if steps[-1] >= num_train_timesteps:
        raise ValueError(f"num_steps={num_steps} with the +1 offset needs timestep {steps[-1]}, beyond the "
                         f"last training step {num_train_timesteps - 1}; use at most "
                         f"{num_train_timesteps - 1} steps, or ddpm_sigmas for the full chain")
    return torch.from_numpy(steps.astype(np.int64))


def timestep_sigmas(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """sigma at (possibly fractional) training steps t in [0, T-1]; log sqrt(abar) is interpolated
    linearly in t between steps (DPM-Solver's discrete-time schedule)."""
    ac = alphas_cumprod.detach().to(precise_dtype(alphas_cumprod.device))
    n = ac.numel()
    t = t.detach().to(ac.device, ac.dtype)
    if bool(((t < 0) | (t > n - 1)).any()):
        raise ValueError(f"timesteps must lie in [0, {n - 1}], got {t.tolist()}")
    neg_log_alpha = -0.5 * ac.log()
    lo = t.floor().long().clamp(max=n - 2)
    w = t - lo
    q = neg_log_alpha[lo] * (1 - w) + neg_log_alpha[lo + 1] * w
    return torch.expm1(2 * q).sqrt()


def ddim_sigmas(alphas_cumprod: torch.Tensor, num_steps: int, discretize: str = "uniform") -> torch.Tensor:
    """``num_steps + 1`` levels: the DDIM timesteps, descending, then sigma(t=0) as in the original
    (its last step goes to abar_prev = abar_0, not to clean data)."""
    sig = sigmas_from_alphas_cumprod(alphas_cumprod)
    steps = ddim_timesteps(num_steps, sig.numel(), discretize).to(sig.device)
    return torch.cat([sig[steps.flip(0)], sig[:1]]).float()


def ddpm_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The full ancestral chain t = T-1, ..., 0 and then 0 (the last step returns the x0 estimate,
    Ho et al. 2020, Alg. 2)."""
    sig = sigmas_from_alphas_cumprod(alphas_cumprod)
    return append_zero(sig.flip(0)).float()


def dpm_solver_sigmas(alphas_cumprod: torch.Tensor, num_steps: int, skip_type: str = "time_uniform") -> torch.Tensor:
    """``num_steps + 1`` levels from t = T-1 down to t = 0 as the original DPMSolverSampler chooses them
    (Lu et al. 2022): continuous time s in [1/T, 1] (training step s*T - 1) spaced uniformly
    (``time_uniform``), quadratically (``time_quadratic``) or uniformly in log-SNR (``logSNR``).
    Intermediate levels are generally fractional timesteps; for ``time_uniform`` they are training
    steps exactly when ``num_steps`` divides T - 1 (e.g. 9 or 27 for T = 1000)."""
    n = alphas_cumprod.numel()
    _check_steps(num_steps, n)
    dtype = precise_dtype(alphas_cumprod.device)
    if skip_type == "logSNR":
        sig = sigmas_from_alphas_cumprod(alphas_cumprod)
        log_sig = torch.linspace(math.log(float(sig[-1])), math.log(float(sig[0])), num_steps + 1,
                                 dtype=dtype, device=sig.device)
        out = log_sig.exp()
        out[0], out[-1] = sig[-1], sig[0]  # the end points exactly, free of exp/log round-off
        return out.float()
    if skip_type == "time_uniform":
        s = torch.linspace(1.0, 1.0 / n, num_steps + 1, dtype=dtype)
    elif skip_type == "time_quadratic":
        s = torch.linspace(1.0, (1.0 / n) ** 0.5, num_steps + 1, dtype=dtype) ** 2
    else:
        raise ValueError(f"skip_type must be one of {DPM_SKIP_TYPES}, got {skip_type!r}")
    t = (s * n - 1).clamp(0, n - 1)
    t_round = t.round()
    t = torch.where((t - t_round).abs() < 1e-9, t_round, t)  # land exactly on training steps
    return timestep_sigmas(alphas_cumprod, t.to(alphas_cumprod.device)).float()


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Karras et al. 2022, Eq. 5: ``num_steps`` levels spaced uniformly in sigma^(1/rho), then 0."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    sig[0] = sigma_max
    if num_steps > 1:
        sig[-1] = sigma_min
    return append_zero(sig).float().to(device)


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """Add a final level 0 (sampling ends with the clean x0 estimate)."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])
