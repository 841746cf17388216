"""Adapter from a CompVis-style diffusion model to a plain denoiser D(x; sigma).

Samplers only ever see ``D(x, sigma, cond=...) -> x0``, with ``x = x0 + sigma * n`` (Karras et
al. 2022, Eq. 1). A discrete VP model with cumulative products ``abar_t`` is the same process with
``sigma_t = sqrt((1 - abar_t) / abar_t)`` and its input scaled by ``sqrt(abar_t) = 1/sqrt(1+sigma^2)``.

Between the T training steps the timestep is found by piecewise-linear interpolation of
``log sqrt(abar_t)`` in t, which is how the original DPM-Solver ``NoiseScheduleVP('discrete')``
defines continuous time; at the training steps themselves t is an exact integer.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ldm.models.diffusion.parameterization import PREDICTIONS

__all__ = ["CompVisDenoiser", "sample_vp", "vp_to_ve", "ve_to_vp", "sigmas_from_alphas_cumprod"]

_SNAP = 1e-4  # |t - round(t)| below this is float round-off of a training step, not a fraction


def precise_dtype(device: torch.device) -> torch.dtype:
    """float64 for schedule look-ups, except where the backend has none (Apple MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for every training step, in float64 where available."""
    ac = alphas_cumprod.detach().to(precise_dtype(alphas_cumprod.device))
    return ((1.0 - ac) / ac).sqrt()


def _as_level(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    return s.reshape(-1, *([1] * (x.ndim - 1))) if s.ndim else s


def vp_to_ve(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """A VP latent z_t (unit-variance prior) in the samplers' x0 + sigma*n coordinates."""
    s = _as_level(sigma, x)
    return x * (1.0 + s * s).sqrt()


def ve_to_vp(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Inverse of ``vp_to_ve``: the CompVis latent z_t = sqrt(abar_t) * x."""
    s = _as_level(sigma, x)
    return x / (1.0 + s * s).sqrt()


def sample_vp(fn: Callable[..., torch.Tensor], denoiser: Callable[..., torch.Tensor], z: torch.Tensor,
              sigmas: torch.Tensor, *, cond: Any = None, mask: Optional[torch.Tensor] = None,
              x0: Optional[torch.Tensor] = None, **options: Any) -> torch.Tensor:
    """Sampler ``fn`` on a VP latent ``z`` at level ``sigmas[0]``: the VP latent at ``sigmas[-1]``.

    With ``mask``/``x0`` the result equals ``x0`` exactly where mask = 1, also when the last level
    is above zero (CompVis grids end at sigma(t=0)).
    """
    if mask is not None or x0 is not None:  # the sampler rejects one without the other
        options.update(mask=mask, x0=x0)
    x = fn(denoiser, vp_to_ve(z, sigmas[0]), sigmas, extra_args={"cond": cond}, **options)
    out = ve_to_vp(x, sigmas[-1])
    return out if mask is None else mask * x0 + (1.0 - mask) * out


class CompVisDenoiser:
    """D(x; sigma) for a model with ``apply_model``, ``alphas_cumprod``, ``parameterization``.

    The model's output is converted to the x0 estimate exactly by the ``denoised`` column of
    ``parameterization.PREDICTIONS`` (eps: x - sigma eps; x0: as is; v: x / (1 + sigma^2) -
    sigma / sqrt(1 + sigma^2) v).

    ``quantize=True`` feeds the model the nearest training step instead of fractional ones
    (only matters for continuous schedules such as Karras sigmas); the solver still uses the
    exact sigma.
    """

    def __init__(
        self,
        model: Any,             # DDPM / LatentDiffusion (or anything with the same attributes)
        quantize: bool = False,  # round fractional timesteps to the nearest training step
    ):
        for attr in ("apply_model", "alphas_cumprod", "parameterization"):
            if not hasattr(model, attr):
                raise TypeError(f"CompVisDenoiser needs a model with `{attr}`; got {type(model).__name__}")
        if model.parameterization not in PREDICTIONS:
            raise ValueError(f"model.parameterization must be one of {tuple(PREDICTIONS)}, "
                             f"got {model.parameterization!r}")
        ac = model.alphas_cumprod
        if not isinstance(ac, torch.Tensor) or ac.ndim != 1 or ac.numel() < 2:
            raise ValueError("model.alphas_cumprod must be a 1-D tensor of length T >= 2")
        if not bool(((ac > 0) & (ac < 1)).all()):
            raise ValueError("model.alphas_cumprod must lie in (0, 1) at every step")
        self.model = model
        self.quantize = quantize
        self.parameterization = model.parameterization
        self._denoised = PREDICTIONS[model.parameterization].denoised
        self.num_timesteps = ac.numel()
        dtype = precise_dtype(ac.device)
        # decreasing in t; kept as its negation so that searchsorted sees an increasing table
        self._neg_log_alpha = -0.5 * ac.detach().to(dtype).log()
        self._neg_log_alpha_host = self._neg_log_alpha.cpu()  # for host-side levels: no device sync
        self.sigmas = sigmas_from_alphas_cumprod(ac)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Training timestep of each noise level: LongTensor when all are training steps
        (or ``quantize``), otherwise float. Levels outside [sigma(0), sigma(T-1)] raise."""
        table = self._neg_log_alpha_host if sigma.device.type == "cpu" else self._neg_log_alpha
        s = sigma.detach().to(table.device, table.dtype)
        q = 0.5 * torch.log1p(s * s)  # -log sqrt(abar) of these levels
        lo_ok = q >= table[0] * (1 - 1e-5) - 1e-12
        hi_ok = q <= table[-1] * (1 + 1e-5)
        if not bool((lo_ok & hi_ok).all()):
            raise ValueError(f"noise levels {sigma.tolist()} lie outside the model's range "
                             f"[{self.sigma_min:.6g}, {self.sigma_max:.6g}] (sigma=0 is never evaluated)")
        idx = torch.searchsorted(table, q).clamp(1, self.num_timesteps - 1)
        lo, hi = table[idx - 1], table[idx]
        t = (idx - 1).to(table.dtype) + (q - lo) / (hi - lo)
        t = t.clamp(0, self.num_timesteps - 1)
        rounded = t.round()
        if self.quantize or bool(((t - rounded).abs() < _SNAP).all()):
            return rounded.long().to(sigma.device)
        return t.to(device=sigma.device, dtype=torch.float32)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level at (possibly fractional) timesteps, with the same interpolation."""
        table = self._neg_log_alpha
        t = t.detach().to(table.device, table.dtype).clamp(0, self.num_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_timesteps - 2)
        w = t - lo
        q = table[lo] * (1 - w) + table[lo + 1] * w
        return torch.expm1(2 * q).sqrt()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        t = self.sigma_to_t(sigma).to(x.device)
        s = sigma.to(x.device, x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        c_in = (1.0 + s * s).rsqrt()  # sqrt(abar_t): back to the model's VP input scale
        return self._denoised(x, s, self.model.apply_model(x * c_in, t, cond))
