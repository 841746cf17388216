"""Noise schedules of the forward process q(x_t | x_{t-1}) (Ho et al. 2020, Sec. 2; paper Sec. 3.2).

Everything is computed in float64 with numpy and only stored as float32, as the original code did,
so the buffers of a model built here equal those in released checkpoints bit for bit.
"""
from __future__ import annotations

import logging
import typing
from collections.abc import Sequence
from typing import Literal, Optional

import numpy as np
import torch
from torch import nn

__all__ = [
    "BETA_SCHEDULES",
    "BetaSchedule",
    "SCHEDULE_BUFFERS",
    "make_beta_schedule",
    "make_ddim_sampling_parameters",
    "make_ddim_timesteps",
    "buffer_device",
    "register_schedule_buffers",
    "schedule_arrays",
]

log = logging.getLogger(__name__)

BetaSchedule = Literal["linear", "cosine", "sqrt_linear", "sqrt"]  # a typo fails config validation
BETA_SCHEDULES = typing.get_args(BetaSchedule)

# Persistent buffers under their original names: released checkpoints contain exactly these.
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def make_beta_schedule(
    schedule: str,
    n_timestep: int,
    linear_start: float = 1e-4,
    linear_end: float = 2e-2,
    cosine_s: float = 8e-3,
) -> np.ndarray:
    """β_1..β_T as a float64 array.

    linear: linear in sqrt(β) (the "scaled linear" schedule of the LDM configs); sqrt_linear:
    linear in β (Ho et al.); sqrt: sqrt of linear; cosine: Nichol & Dhariwal 2021, Eq. (17), with
    β clipped to 0.999.
    """
    # explicit CPU: the schedule is data, also when the model is built under torch.device("meta")
    if n_timestep < 1:
        raise ValueError(f"n_timestep must be >= 1, got {n_timestep}")
    if schedule == "linear":
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep, dtype=torch.float64, device="cpu") ** 2
    elif schedule == "cosine":
        steps = torch.arange(n_timestep + 1, dtype=torch.float64, device="cpu") / n_timestep + cosine_s
        f = torch.cos(steps / (1 + cosine_s) * np.pi / 2).pow(2)
        alphas_bar = f / f[0]
        betas = (1 - alphas_bar[1:] / alphas_bar[:-1]).clamp(0, 0.999)
    elif schedule == "sqrt_linear":
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64, device="cpu")
    elif schedule == "sqrt":
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64, device="cpu") ** 0.5
    else:
        raise ValueError(f"beta_schedule {schedule!r} unknown; expected one of {BETA_SCHEDULES}")
    return betas.cpu().numpy()


def schedule_arrays(betas: Sequence[float] | np.ndarray, v_posterior: float = 0.0) -> dict[str, np.ndarray]:
    """All per-timestep quantities of the forward process and its posterior, in float64.

    Posterior q(x_{t-1} | x_t, x_0) of Ho et al. Eq. (6)-(7); its variance interpolates between
    β̃_t (v_posterior=0) and β_t (v_posterior=1).
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
        raise ValueError("betas must be a 1-D sequence of values in (0, 1)")
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = (1 - v_posterior) * betas * (1.0 - ac_prev) / (1.0 - ac) + v_posterior * betas
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        # posterior variance is 0 at t=0: clip before the log
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }


def buffer_device() -> Optional[torch.device]:
    """Device for freshly computed constants: CPU while the default device is ``meta``.

    A model built under ``with torch.device("meta")`` keeps real schedule values, so the
    non-persistent ones (absent from checkpoints) stay valid after ``load_state_dict(assign=True)``.
    """
    return torch.device("cpu") if torch.get_default_device().type == "meta" else None


def register_schedule_buffers(module: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Register every entry of ``arrays`` as a persistent float32 buffer of ``module``."""
    device = buffer_device()
    for name in SCHEDULE_BUFFERS:
        tensor = torch.tensor(arrays[name], dtype=torch.float32, device=device)
        if name in module._buffers:
            module._buffers[name] = tensor
        else:
            module.register_buffer(name, tensor)


# ---- DDIM discretisation (Song et al. 2021), kept here under the original names ----

def make_ddim_timesteps(
    ddim_discr_method: str,
    num_ddim_timesteps: int,
    num_ddpm_timesteps: int,
    verbose: bool = True,
) -> np.ndarray:
    """The DDPM steps the original DDIM/PLMS classes visit, +1 as in the original (t=1 first).

    The one definition of the DDIM grid (Song et al. 2021, Sec. 4.2). ``uniform``: stride
    ``c = T // S`` and ``range(0, T, c) + 1``, which holds ``ceil(T / c)`` steps: S when S divides
    T, more otherwise (S = 30, T = 1000: 31 steps 1, 34, ..., 991). ``quad``: squares of
    ``linspace(0, sqrt(0.8 T), S)``. ``sampling.ddim_timesteps`` takes the first S of this grid.
    """
    if not 0 < num_ddim_timesteps <= num_ddpm_timesteps:
        raise ValueError(f"num_ddim_timesteps must be in [1, {num_ddpm_timesteps}], got {num_ddim_timesteps}")
    if ddim_discr_method == "uniform":
        stride = num_ddpm_timesteps // num_ddim_timesteps
        steps = np.asarray(list(range(0, num_ddpm_timesteps, stride)))
    elif ddim_discr_method == "quad":
        steps = ((np.linspace(0, np.sqrt(num_ddpm_timesteps * 0.8), num_ddim_timesteps)) ** 2).astype(int)
    else:
        raise ValueError(f"ddim_discr_method {ddim_discr_method!r} unknown; expected 'uniform' or 'quad'")
    out = steps + 1
    if verbose:
        log.info("Selected timesteps for ddim sampler: %s", out)
    return out


def make_ddim_sampling_parameters(
    alphacums: np.ndarray,
    ddim_timesteps: np.ndarray,
    eta: float,
    verbose: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """σ_t, ᾱ_t and ᾱ_{t-1} on the DDIM sub-sequence (Song et al. 2021, Eq. (16))."""
    alphacums = np.asarray(alphacums)
    alphas = alphacums[ddim_timesteps]
    alphas_prev = np.asarray([alphacums[0]] + alphacums[ddim_timesteps[:-1]].tolist())
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    if verbose:
        log.info("Selected alphas for ddim sampler: a_t: %s; a_(t-1): %s", alphas, alphas_prev)
        log.info("For eta=%s this gives the sigma_t schedule %s", eta, sigmas)
    return sigmas, alphas, alphas_prev
