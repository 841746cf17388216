"""The diffusion training objective: L_simple (paper Eq. (1)-(3)) plus an optional VLB term.

    loss = l_simple_weight * mean_b[ w_t L_simple(b) / exp(logvar_t) + logvar_t ]
           + original_elbo_weight * mean_b[ λ_t L_simple(b) ]

with per-timestep log-variances ``logvar`` (fixed at ``logvar_init`` unless learned, in which case
this is the heteroscedastic weighting of Kendall & Gal 2017), VLB weights λ_t (Ho et al. Eq. (5))
and timestep weights w_t: 1 (the paper), or Min-SNR-γ, optionally with a floor (:func:`min_snr_weights`). The training noise
ε is N(0, I), optionally with offset noise (:func:`training_noise`).
"""
from __future__ import annotations

import math
import typing
from collections.abc import Sequence
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ldm.models.diffusion.parameterization import prediction
from ldm.models.diffusion.schedule import buffer_device

__all__ = ["LOSS_TYPES", "DiffusionLoss", "LossType", "check_loss_type", "get_loss", "lvlb_weights",
           "check_noise_offset", "check_timestep_range", "min_snr_weights", "training_noise"]

LossType = Literal["l1", "l2"]  # a typo fails config validation
LOSS_TYPES = typing.get_args(LossType)


def check_loss_type(loss_type: str) -> str:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r} unknown; expected one of {LOSS_TYPES}")
    return loss_type


def get_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str, mean: bool = True) -> torch.Tensor:
    """Elementwise L1 or squared L2 error; averaged over everything when ``mean``."""
    if check_loss_type(loss_type) == "l1":
        loss = (target - pred).abs()
    else:
        loss = F.mse_loss(target, pred, reduction="none")
    return loss.mean() if mean else loss


def lvlb_weights(arrays: dict[str, np.ndarray], parameterization: str) -> torch.Tensor:
    """λ_t turning the per-sample regression error into the VLB term L_{t-1} (Ho et al. Eq. (5)).

    L_{t-1} = ||μ̃_t - μ_θ||² / (2σ_t²) and μ̃_t - μ_θ = coef1_t (x_0 - x̂_0), so λ_t is
    coef1_t² / (2σ_t²) times the factor converting the parameterisation's error into an x_0 error:
    (1 - ᾱ_t)/ᾱ_t for ε (which gives β_t² / (2σ_t² α_t (1 - ᾱ_t)), Ho et al. Eq. (12)), 1 for x_0 and
    (1 - ᾱ_t) for v. At t=0 the posterior variance is 0, so λ_0 copies λ_1 as in the original.
    The original code's x0 weight had an operator-precedence slip and its v weight was constant 1;
    both only matter for original_elbo_weight > 0, which no released config uses.
    """
    factor = prediction(parameterization).vlb_factor(arrays["alphas_cumprod"])
    with np.errstate(divide="ignore", invalid="ignore"):  # t=0 is replaced below
        weights = arrays["posterior_mean_coef1"] ** 2 / (2 * arrays["posterior_variance"]) * factor
    if len(weights) > 1:
        weights[0] = weights[1]
    weights = torch.tensor(weights, dtype=torch.float32, device=buffer_device())
    if not torch.isfinite(weights).all():
        raise ValueError("VLB weights are not finite: check the beta schedule (given_betas / v_posterior)")
    return weights


def check_noise_offset(offset: float) -> float:
    if isinstance(offset, bool) or not (isinstance(offset, (int, float)) and math.isfinite(offset) and offset >= 0):
        raise ValueError(f"noise_offset must be a number >= 0, got {offset!r}")
    return float(offset)


def check_timestep_range(timestep_range: Optional[Sequence[int]], num_timesteps: int) -> tuple[int, int]:
    """[lo, hi) of the training timesteps; None: all of them. A model trained on part of the chain
    is an expert of those noise levels (Balaji et al. 2022, eDiff-I) and samples only together with
    others (``sampling.NoiseLevelExperts``)."""
    if timestep_range is None:
        return 0, int(num_timesteps)
    values = list(timestep_range) if isinstance(timestep_range, Sequence) and not isinstance(timestep_range, str) \
        else None
    if values is None or len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in values) \
            or not 0 <= values[0] < values[1] <= num_timesteps:
        raise ValueError(f"timestep_range must be [lo, hi) with integers 0 <= lo < hi <= {num_timesteps} "
                         f"(the number of timesteps), got {timestep_range!r}")
    return int(values[0]), int(values[1])


def training_noise(x_start: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    """ε of a training step: N(0, I), plus ``offset`` times one N(0, 1) value per sample and channel,
    constant over the image (offset noise, Guttenberg 2023).

    Why: the forward process destroys an image's mean colour last, since it is an average over
    every pixel; with i.i.d. noise the denoiser reads it off x_t at all but the noisiest timesteps,
    where the loss (ε error = SNR · x_0 error) hardly weights it, so conditioning on colour is
    learned slowly and samples take their colours from the starting noise. The offset destroys the
    mean at moderate noise, where the condition has to supply it.
    """
    noise = torch.randn_like(x_start)
    if offset:
        noise = noise + offset * torch.randn(*x_start.shape[:2], *(1,) * (x_start.ndim - 2),
                                             device=x_start.device, dtype=x_start.dtype)
    return noise


def min_snr_weights(alphas_cumprod: np.ndarray, parameterization: str, gamma: Optional[float],
                    floor: Optional[float] = None) -> torch.Tensor:
    """w_t of Min-SNR-γ (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting").

    The x_0 error is weighted by min(SNR_t, γ), SNR_t = ᾱ_t / (1 - ᾱ_t): nearly clean timesteps, whose
    targets are hardest to fit and say little about global structure, stop dominating the gradient.
    Converted to the parameterisation's own error with its x_0 factor: min(SNR, γ) / SNR for ε,
    min(SNR, γ) / (SNR + 1) for v, min(SNR, γ) for x_0. The paper trains 3.4x faster with γ = 5.

    ``floor`` (ours, not in the paper) raises the x_0 weight to at least ``floor``: max(min(SNR, γ),
    floor). Min-SNR, like the ε loss, weighs the noisiest timesteps by SNR ~ 1e-3, and those are where
    an image's mean colour is decided, so a conditional model learns it last; uniform x_0 weights
    (floor ≥ γ) keep it but give up the emphasis on moderate noise. ``gamma=None`` with a floor: no
    upper clip.
    """
    if gamma is not None and (isinstance(gamma, bool) or not (
            isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0)):
        raise ValueError(f"snr_gamma must be a positive number, got {gamma!r}")
    if floor is not None:
        if isinstance(floor, bool) or not (isinstance(floor, (int, float)) and math.isfinite(floor) and floor > 0):
            raise ValueError(f"snr_floor must be a positive number, got {floor!r}")
        if gamma is not None and floor >= gamma:
            raise ValueError(f"snr_floor ({floor}) must be below snr_gamma ({gamma}): max(min(SNR, γ), floor) "
                             "would be the constant floor; use parameterization x0 without either for that")
    if gamma is None and floor is None:
        raise ValueError("min_snr_weights needs snr_gamma, snr_floor or both")
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    snr = ac / (1.0 - ac)
    x0_weight = snr if gamma is None else np.minimum(snr, float(gamma))
    if floor is not None:
        x0_weight = np.maximum(x0_weight, float(floor))
    weights = x0_weight * prediction(parameterization).vlb_factor(ac)
    return torch.tensor(weights, dtype=torch.float32, device=buffer_device())


class DiffusionLoss:
    """Combines L_simple, the learned/fixed log-variance weighting and the VLB term.

    Stateless apart from its weights; the tensors it reads (``logvar``, ``lvlb_weights``) live on
    the model so they move with it between devices.
    """

    def __init__(
        self,
        loss_type: str = "l2",              # l1 | l2 elementwise error
        l_simple_weight: float = 1.0,       # weight of L_simple (paper Eq. (1))
        original_elbo_weight: float = 0.0,  # weight of the VLB term L_vlb
        learn_logvar: bool = False,         # report the logvar statistics when they are learned
    ):
        self.loss_type = check_loss_type(loss_type)
        self.l_simple_weight = l_simple_weight
        self.original_elbo_weight = original_elbo_weight
        self.learn_logvar = learn_logvar

    def __call__(
        self,
        model_output: torch.Tensor,
        target: torch.Tensor,
        t: torch.Tensor,
        logvar: torch.Tensor,
        lvlb_weights: torch.Tensor,
        prefix: str = "train",
        timestep_weights: Optional[torch.Tensor] = None,  # w_t, e.g. min_snr_weights; None: 1
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        per_sample = get_loss(model_output, target, self.loss_type, mean=False).mean(dim=list(range(1, target.ndim)))
        log = {f"{prefix}/loss_simple": per_sample.mean()}  # unweighted: comparable across weightings
        logvar_t = logvar.to(per_sample.device)[t]
        simple = per_sample if timestep_weights is None else timestep_weights.to(per_sample.device)[t] * per_sample
        weighted = simple / torch.exp(logvar_t) + logvar_t
        if self.learn_logvar:
            log[f"{prefix}/loss_gamma"] = weighted.mean()
            log["logvar"] = logvar.detach().mean()
        loss = self.l_simple_weight * weighted.mean()
        loss_vlb = (lvlb_weights.to(per_sample.device)[t] * per_sample).mean()
        log[f"{prefix}/loss_vlb"] = loss_vlb
        loss = loss + self.original_elbo_weight * loss_vlb
        log[f"{prefix}/loss"] = loss
        return loss, log
