"""Ancestral sampling p_θ(x_{t-1} | x_t) with the full T-step chain (Ho et al. 2020, Alg. 2).

The original method names of DDPM and LatentDiffusion: ``p_mean_variance``/``p_sample`` (one
step at per-sample timesteps, from the posterior of ``parameterization``) and the loops
``p_sample_loop``/``progressive_denoising``/``sample``, which run ``sampling.sample_ddpm`` on the
full chain. ``model`` is a DDPM: it supplies ``apply_model``, the schedule and ``parameterization``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from ldm.models.diffusion import parameterization as P
from ldm.models.diffusion.sampling import CompVisDenoiser, ddpm_sigmas, sample_ddpm, sample_vp, ve_to_vp
from ldm.models.diffusion.sampling.legacy import build_denoiser, quantizer, scaled_noise

__all__ = ["LatentSamplingMethods", "PixelSamplingMethods",
           "p_mean_variance", "p_sample", "p_sample_loop", "slice_conditioning"]


def p_mean_variance(
    model: Any,
    x: torch.Tensor,
    cond: Any,
    t: torch.Tensor,
    clip_denoised: bool,
    quantize_denoised: bool = False,
    score_corrector: Any = None,
    corrector_kwargs: Optional[dict] = None,
):
    """Mean, variance, log-variance of p_θ(x_{t-1} | x_t) = q(x_{t-1} | x_t, x̂_0(x_t)), and x̂_0."""
    out = model.apply_model(x, t, cond)
    if score_corrector is not None:
        if model.parameterization != "eps":
            raise ValueError("score_corrector needs an eps-parameterised model")
        out = score_corrector.modify_score(model, out, x, t, cond, **(corrector_kwargs or {}))
    x0 = P.model_output_to_x0(model, model.parameterization, x, t, out)
    if clip_denoised:
        x0 = x0.clamp(-1.0, 1.0)
    if quantize_denoised:  # snap x̂_0 onto the VQ codebook of the first stage
        x0 = model.first_stage_model.quantize(x0)[0]
    mean, variance, log_variance = P.q_posterior(model, x0, x, t)
    return mean, variance, log_variance, x0


def p_sample(
    model: Any,
    x: torch.Tensor,
    cond: Any,
    t: torch.Tensor,
    clip_denoised: bool = False,
    quantize_denoised: bool = False,
    temperature: float = 1.0,
    noise_dropout: float = 0.0,
    repeat_noise: bool = False,
    score_corrector: Any = None,
    corrector_kwargs: Optional[dict] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step x_t -> x_{t-1}; no noise is added at t = 0. Returns (x_{t-1}, x̂_0)."""
    mean, _, log_variance, x0 = p_mean_variance(model, x, cond, t, clip_denoised, quantize_denoised,
                                             score_corrector, corrector_kwargs)
    if repeat_noise:
        noise = torch.randn((1, *x.shape[1:]), device=x.device, dtype=x.dtype).expand_as(x)
    else:
        noise = torch.randn_like(x)
    noise = noise * temperature
    if noise_dropout > 0.0:
        noise = torch.nn.functional.dropout(noise, p=noise_dropout)
    nonzero = (t != 0).to(x.dtype).reshape(x.shape[0], *((1,) * (x.ndim - 1)))
    return mean + nonzero * (0.5 * log_variance).exp() * noise, x0


def slice_conditioning(cond: Any, batch_size: int) -> Any:
    """The first ``batch_size`` entries of a condition (tensor, list of tensors or dict of those)."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: slice_conditioning(v, batch_size) for k, v in cond.items()}
    if isinstance(cond, list):
        return [c[:batch_size] for c in cond]
    return cond[:batch_size]


class NoisedCondition:
    """The legacy ``num_timesteps_cond > 1`` option: the condition is itself diffused to step
    ``model.cond_ids[t]`` before each denoiser call."""

    def __init__(self, denoiser: Callable, model: Any):
        self.denoiser, self.model, self.adapter = denoiser, model, CompVisDenoiser(model)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        tc = self.model.cond_ids.to(x.device)[self.adapter.sigma_to_t(sigma).to(x.device)]
        cond = self.model.q_sample(x_start=cond, t=tc, noise=torch.randn_like(cond))
        return self.denoiser(x, sigma, cond=cond)


@torch.no_grad()
def p_sample_loop(
    model: Any,
    cond: Any,
    shape: tuple[int, ...],
    x_T: Optional[torch.Tensor] = None,
    timesteps: Optional[int] = None,
    start_T: Optional[int] = None,
    log_every_t: Optional[int] = None,
    mask: Optional[torch.Tensor] = None,
    x0: Optional[torch.Tensor] = None,
    quantize_denoised: bool = False,
    progressive: bool = False,
    verbose: bool = True,
    callback: Optional[Callable[[int], None]] = None,
    img_callback: Optional[Callable[[torch.Tensor, int], None]] = None,
    temperature: float = 1.0,
    noise_dropout: float = 0.0,
    score_corrector: Any = None,
    corrector_kwargs: Optional[dict] = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the chain t = steps-1, ..., 0 from x_T ~ N(0, I) with ``sampling.sample_ddpm`` (the
    one ancestral sampler). Intermediates are x_t (or x̂_0 when ``progressive``) every
    ``log_every_t`` steps. With ``mask``, the region where mask = 1 is set to q(x_t | x0) before
    each step (the samplers' one mask rule) and to x0 itself at the end."""
    log_every_t = log_every_t or model.log_every_t
    device = model.betas.device
    img = torch.randn(shape, device=device) if x_T is None else x_T.to(device)
    if mask is not None and x0 is None:
        raise ValueError("mask given without x0: masked sampling needs the known latent x0")
    steps = min(timesteps or model.num_timesteps, start_T or model.num_timesteps)
    sigmas = ddpm_sigmas(model.alphas_cumprod)[-(steps + 1):].to(device)  # steps-1, ..., 0, then 0
    denoiser = build_denoiser(model, score_corrector=score_corrector, corrector_kwargs=corrector_kwargs)
    if getattr(model, "shorten_cond_schedule", False):
        denoiser = NoisedCondition(denoiser, model)
    intermediates = [] if progressive else [img]

    def record(step: dict) -> None:
        t = steps - 1 - step["i"]
        x_prev = ve_to_vp(step["x_next"], step["sigma_next"])
        if t % log_every_t == 0 or t == steps - 1:
            intermediates.append(step["denoised"] if progressive else x_prev)
        if callback is not None:
            callback(t)
        if img_callback is not None:
            img_callback(x_prev, t)

    x = sample_vp(sample_ddpm, denoiser, img, sigmas, cond=cond, mask=mask, x0=x0, callback=record,
                  disable=not verbose, noise_sampler=scaled_noise(img, temperature, noise_dropout),
                  clip_denoised=model.clip_denoised, x0_transform=quantizer(model, quantize_denoised),
                  v_posterior=getattr(model, "v_posterior", 0.0))
    return x, intermediates


class PixelSamplingMethods:
    """The original sampling methods of the unconditional pixel-space DDPM."""

    def p_mean_variance(self, x, t, clip_denoised: bool):
        return p_mean_variance(self, x, None, t, clip_denoised)[:3]

    @torch.no_grad()
    def p_sample(self, x, t, clip_denoised=True, repeat_noise=False):
        return p_sample(self, x, None, t, clip_denoised=clip_denoised, repeat_noise=repeat_noise)[0]

    @torch.no_grad()
    def p_sample_loop(self, shape, return_intermediates=False):
        img, intermediates = p_sample_loop(self, None, shape)
        return (img, intermediates) if return_intermediates else img

    @torch.no_grad()
    def sample(self, batch_size=16, return_intermediates=False):
        shape = (batch_size, self.channels, self.image_size, self.image_size)
        return self.p_sample_loop(shape, return_intermediates=return_intermediates)


class LatentSamplingMethods:
    """The original sampling methods of LatentDiffusion (conditioned: ``c`` after ``x``)."""

    def p_mean_variance(self, x, c, t, clip_denoised: bool, quantize_denoised=False, return_x0=False,
                        score_corrector=None, corrector_kwargs=None):
        mean, var, log_var, x0 = p_mean_variance(self, x, c, t, clip_denoised, quantize_denoised,
                                                 score_corrector, corrector_kwargs)
        return (mean, var, log_var, x0) if return_x0 else (mean, var, log_var)

    @torch.no_grad()
    def p_sample(self, x, c, t, clip_denoised=False, repeat_noise=False, quantize_denoised=False,
                 return_x0=False, temperature=1.0, noise_dropout=0.0, score_corrector=None, corrector_kwargs=None):
        x_prev, x0 = p_sample(self, x, c, t, clip_denoised, quantize_denoised, temperature,
                              noise_dropout, repeat_noise, score_corrector, corrector_kwargs)
        return (x_prev, x0) if return_x0 else x_prev

    @torch.no_grad()
    def progressive_denoising(self, cond, shape, verbose=True, callback=None, quantize_denoised=False,
                              img_callback=None, mask=None, x0=None, temperature=1.0, noise_dropout=0.0,
                              score_corrector=None, corrector_kwargs=None, batch_size=None, x_T=None,
                              start_T=None, log_every_t=None):
        """Ancestral sampling that records the x̂_0 predictions along the chain."""
        if batch_size is not None:
            shape = (batch_size, *shape)
            cond = slice_conditioning(cond, batch_size)
        return p_sample_loop(
            self, cond, shape, x_T=x_T, start_T=start_T, log_every_t=log_every_t, mask=mask, x0=x0,
            quantize_denoised=quantize_denoised, progressive=True, verbose=verbose, callback=callback,
            img_callback=img_callback, temperature=temperature, noise_dropout=noise_dropout,
            score_corrector=score_corrector, corrector_kwargs=corrector_kwargs)

    @torch.no_grad()
    def p_sample_loop(self, cond, shape, return_intermediates=False, x_T=None, verbose=True, callback=None,
                      timesteps=None, quantize_denoised=False, mask=None, x0=None, img_callback=None,
                      start_T=None, log_every_t=None):
        img, intermediates = p_sample_loop(
            self, cond, shape, x_T=x_T, timesteps=timesteps, start_T=start_T, log_every_t=log_every_t,
            mask=mask, x0=x0, quantize_denoised=quantize_denoised, verbose=verbose, callback=callback,
            img_callback=img_callback)
        return (img, intermediates) if return_intermediates else img

    @torch.no_grad()
    def sample(self, cond, batch_size=16, return_intermediates=False, x_T=None, verbose=True, timesteps=None,
               quantize_denoised=False, mask=None, x0=None, shape=None, **kwargs):
        shape = shape or (batch_size, self.channels, self.image_size, self.image_size)
        return self.p_sample_loop(slice_conditioning(cond, batch_size), shape,
                                  return_intermediates=return_intermediates, x_T=x_T, verbose=verbose,
                                  timesteps=timesteps, quantize_denoised=quantize_denoised, mask=mask, x0=x0)
