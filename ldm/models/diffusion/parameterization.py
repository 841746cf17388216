"""The forward process, its posterior, and the three network parameterisations (eps, x0, v).

Functions take ``s``, any object holding the schedule buffers of
:mod:`ldm.models.diffusion.schedule` under their original names (a ``DDPM`` is one), so samplers
and tests can use them without a model. Notation follows Ho et al. 2020 (DDPM): ᾱ_t is
``alphas_cumprod[t]``; v-prediction follows Salimans & Ho 2022 (progressive distillation), Sec. 4.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Callable, Literal, Protocol

import numpy as np
import torch

__all__ = [
    "ForwardProcessMethods",
    "PARAMETERIZATIONS",
    "PREDICTIONS",
    "Parameterization",
    "Prediction",
    "Schedule",
    "check_parameterization",
    "extract",
    "get_v",
    "model_output_to_eps",
    "model_output_to_x0",
    "predict_eps_from_z_and_v",
    "predict_noise_from_start",
    "predict_start_from_noise",
    "predict_start_from_z_and_v",
    "prediction",
    "q_mean_variance",
    "q_posterior",
    "q_sample",
    "training_target",
]

Parameterization = Literal["eps", "x0", "v"]  # what the network predicts (a typo fails config validation)


class Schedule(Protocol):
    alphas_cumprod: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    log_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor


def extract(a: torch.Tensor, t: torch.Tensor, x_shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """``a[t]`` per sample, shaped (B, 1, ..., 1) to broadcast against an x of ``x_shape``."""
    out = a.to(t.device).gather(-1, t.long())
    return out.reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


def check_parameterization(parameterization: str) -> str:
    if parameterization not in typing.get_args(Parameterization):
        raise ValueError(f"parameterization {parameterization!r} unknown; expected one of "
                         f"{typing.get_args(Parameterization)}")
    return parameterization


# ---- forward process q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I)   (Ho et al. Eq. (4)) ----

def q_mean_variance(s: Schedule, x_start: torch.Tensor, t: torch.Tensor):
    """Mean, variance and log-variance of q(x_t | x_0)."""
    mean = extract(s.sqrt_alphas_cumprod, t, x_start.shape) * x_start
    variance = extract(1.0 - s.alphas_cumprod, t, x_start.shape)
    log_variance = extract(s.log_one_minus_alphas_cumprod, t, x_start.shape)
    return mean, variance, log_variance


def q_sample(s: Schedule, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε (reparameterised Eq. (4))."""
    return (extract(s.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + extract(s.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)


# ---- conversions between the parameterisations, all exact inversions of q_sample ----

def predict_start_from_noise(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)   (Ho et al. Eq. (15))."""
    return (extract(s.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - extract(s.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * noise)


def predict_noise_from_start(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """ε = (x_t / sqrt(ᾱ_t) - x_0) / sqrt(1/ᾱ_t - 1)."""
    return ((extract(s.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x0)
            / extract(s.sqrt_recipm1_alphas_cumprod, t, x_t.shape))


def get_v(s: Schedule, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0   (Salimans & Ho 2022)."""
    return (extract(s.sqrt_alphas_cumprod, t, x.shape) * noise
            - extract(s.sqrt_one_minus_alphas_cumprod, t, x.shape) * x)


def predict_start_from_z_and_v(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x_0 = sqrt(ᾱ_t) x_t - sqrt(1 - ᾱ_t) v."""
    return (extract(s.sqrt_alphas_cumprod, t, x_t.shape) * x_t
            - extract(s.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * v)


def predict_eps_from_z_and_v(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ε = sqrt(1 - ᾱ_t) x_t + sqrt(ᾱ_t) v."""
    return (extract(s.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * x_t
            + extract(s.sqrt_alphas_cumprod, t, x_t.shape) * v)


# ---- the one table of parameterisations ----

def _x0_in_sigma_space(x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return out


def _x0_from_eps_in_sigma_space(x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return x - sigma * out


def _x0_from_v_in_sigma_space(x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    c_in = (1.0 + sigma * sigma).rsqrt()  # sqrt(ᾱ)
    return x * c_in * c_in - sigma * c_in * out


def _noise_target(s: Schedule, x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return noise


def _start_target(s: Schedule, x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return x_start


def _as_is(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
    return model_output


@dataclass(frozen=True)
class Prediction:
    """What the network predicts, in every form the model needs it."""

    target: Callable[..., torch.Tensor]    # (s, x_0, ε, t) -> training target
    to_x0: Callable[..., torch.Tensor]     # (s, x_t, t, output) -> x̂_0
    to_eps: Callable[..., torch.Tensor]    # (s, x_t, t, output) -> ε̂
    vlb_factor: Callable[[np.ndarray], np.ndarray]  # ᾱ_t -> ||x_0 - x̂_0||² per unit output error²
    denoised: Callable[..., torch.Tensor]  # (x, σ, output) -> x̂_0 for x = x_0 + σ n, the model fed
                                           # sqrt(ᾱ) x (Karras et al. 2022, Eq. 1; samplers' form)


PREDICTIONS: dict[str, Prediction] = {
    # ε (Ho et al. 2020): x̂_0 = x - σ ε̂
    "eps": Prediction(_noise_target, predict_start_from_noise, _as_is, lambda ac: (1 - ac) / ac,
                      _x0_from_eps_in_sigma_space),
    "x0": Prediction(_start_target, _as_is, predict_noise_from_start, np.ones_like, _x0_in_sigma_space),
    # v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) x_0 (Salimans & Ho 2022, Sec. 4): x̂_0 = ᾱ x - σ sqrt(ᾱ) v̂
    "v": Prediction(get_v, predict_start_from_z_and_v, predict_eps_from_z_and_v, lambda ac: 1 - ac,
                    _x0_from_v_in_sigma_space),
}
PARAMETERIZATIONS = tuple(PREDICTIONS)


def prediction(parameterization: str) -> Prediction:
    """The table row of ``parameterization``; unknown names raise."""
    check_parameterization(parameterization)
    return PREDICTIONS[parameterization]


def training_target(
    s: Schedule,
    parameterization: str,
    x_start: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
) -> torch.Tensor:
    """What the network regresses: ε (Eq. (1)/(2) of the paper), x_0, or v."""
    return prediction(parameterization).target(s, x_start, noise, t)


def model_output_to_x0(s: Schedule, parameterization: str, x_t: torch.Tensor, t: torch.Tensor,
                       model_output: torch.Tensor) -> torch.Tensor:
    """The x_0 estimate implied by a network output under ``parameterization``."""
    return prediction(parameterization).to_x0(s, x_t, t, model_output)


def model_output_to_eps(s: Schedule, parameterization: str, x_t: torch.Tensor, t: torch.Tensor,
                        model_output: torch.Tensor) -> torch.Tensor:
    """The ε estimate implied by a network output under ``parameterization``."""
    return prediction(parameterization).to_eps(s, x_t, t, model_output)


# ---- posterior q(x_{t-1} | x_t, x_0)   (Ho et al. Eq. (6)-(7)) ----

def q_posterior(s: Schedule, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Mean μ̃_t(x_t, x_0), variance β̃_t and clipped log-variance of the posterior."""
    mean = (extract(s.posterior_mean_coef1, t, x_t.shape) * x_start
            + extract(s.posterior_mean_coef2, t, x_t.shape) * x_t)
    variance = extract(s.posterior_variance, t, x_t.shape)
    log_variance = extract(s.posterior_log_variance_clipped, t, x_t.shape)
    return mean, variance, log_variance


class ForwardProcessMethods:
    """The functions above as methods of a module holding the schedule (original method names)."""

    def q_mean_variance(self, x_start, t):
        return q_mean_variance(self, x_start, t)

    def q_sample(self, x_start, t, noise=None):
        return q_sample(self, x_start, t, noise if noise is not None else torch.randn_like(x_start))

    def q_posterior(self, x_start, x_t, t):
        return q_posterior(self, x_start, x_t, t)

    def predict_start_from_noise(self, x_t, t, noise):
        return predict_start_from_noise(self, x_t, t, noise)

    def predict_start_from_z_and_v(self, x_t, t, v):
        return predict_start_from_z_and_v(self, x_t, t, v)

    def predict_eps_from_z_and_v(self, x_t, t, v):
        return predict_eps_from_z_and_v(self, x_t, t, v)

    def get_v(self, x, noise, t):
        return get_v(self, x, noise, t)
