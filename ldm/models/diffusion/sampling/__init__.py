"""Samplers as plain functions of a denoiser callable (one signature for all).

    sample_<name>(denoiser, x, sigmas, *, extra_args=None, callback=None, disable=None,
                  generator=None, **sampler_options) -> x at sigmas[-1]

``denoiser(x, sigma[B], **extra_args)`` returns the x0 estimate for ``x = x0 + sigma * n``;
``CompVisDenoiser`` adapts a DDPM/LatentDiffusion model, ``ClassifierFreeGuidance`` wraps any
denoiser, and the functions in ``schedules`` choose the noise levels. Typical use::

    d = ClassifierFreeGuidance(CompVisDenoiser(model), scale=7.5, uncond=uc)
    sigmas = ddim_sigmas(model.alphas_cumprod, 50)
    x = vp_to_ve(torch.randn(shape, generator=g), sigmas[0])
    z = ve_to_vp(sample_ddim(d, x, sigmas, extra_args={"cond": c}), sigmas[-1])
"""
from .ddim import ddim_noise_levels, invert_ddim, sample_ddim
from .ddpm import sample_ddpm
from .denoiser import CompVisDenoiser, sample_vp, sigmas_from_alphas_cumprod, ve_to_vp, vp_to_ve
from .dpm_solver import sample_dpmpp_2m
from .experts import NoiseLevelExperts
from .guidance import AutoGuidance, ClassifierFreeGuidance, ComposedGuidance, cat_conditioning
from .plms import sample_plms
from .schedules import (append_zero, ddim_sigmas, ddim_timesteps, ddpm_sigmas, dpm_solver_sigmas,
                        karras_sigmas, timestep_sigmas)
from .unipc import sample_unipc

SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "plms": sample_plms,
    "dpmpp_2m": sample_dpmpp_2m,
    "unipc": sample_unipc,
}

__all__ = [
    "SAMPLERS",
    "sample_ddpm", "sample_ddim", "invert_ddim", "sample_plms", "sample_dpmpp_2m", "sample_unipc",
    "ddim_noise_levels",
    "CompVisDenoiser", "sample_vp", "vp_to_ve", "ve_to_vp", "sigmas_from_alphas_cumprod",
    "AutoGuidance", "ClassifierFreeGuidance", "ComposedGuidance", "cat_conditioning", "NoiseLevelExperts",
    "ddim_timesteps", "timestep_sigmas", "ddim_sigmas", "ddpm_sigmas", "dpm_solver_sigmas",
    "karras_sigmas", "append_zero",
]
