"""Drawing latents from a trained model with any sampler of ``ldm.models.diffusion.sampling``.

    z = sample_latents(model, (B, C, h, w), cond=c, uncond=uc, scale=5.0, sampler="ddim", steps=50)

The model is wrapped once into the samplers' denoiser interface (``CompVisDenoiser``), classifier-
free guidance is a wrapper around that (Ho & Salimans 2021), and the noise-level grid is the one
the original implementation of each sampler uses. Latents enter and leave in the model's own
(variance-preserving) coordinates.

Convolutional sampling (paper Sec. 4.3.2): nothing here ties ``shape`` to the training
resolution. The UNet is convolutional, so a latent larger than ``model.image_size`` is sampled
as is; for spatially conditioned models (semantic maps, super-resolution, inpainting) the
condition fixes the layout and the model generalises to larger sizes, up to the megapixel regime.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ldm.models.diffusion.sampling import (SAMPLERS, AutoGuidance, ClassifierFreeGuidance, CompVisDenoiser,
                                           ComposedGuidance, NoiseLevelExperts, ddim_sigmas, ddpm_sigmas,
                                           dpm_solver_sigmas, sample_vp, sigmas_from_alphas_cumprod, ve_to_vp)

__all__ = ["SAMPLER_NAMES", "ComposedModel", "GuideModel", "HighNoiseExpert", "check_experts", "initial_noise",
           "noise_levels", "noise_to_level", "sample_latents"]

# user-facing name -> sampler function key; "dpm" is DPM-Solver++(2M) as the original DPMSolverSampler
SAMPLER_NAMES = {"ddim": "ddim", "plms": "plms", "dpm": "dpmpp_2m", "unipc": "unipc", "ddpm": "ddpm"}
MASKED_SAMPLERS = ("ddim", "plms", "ddpm")  # those with in-/out-painting (mask, x0)


def noise_levels(model: Any, sampler: str, steps: int) -> torch.Tensor:
    """Descending sigmas for ``sampler`` with ``steps`` steps on the model's training schedule.

    ddim/plms: the original DDIM grid (uniform, +1 offset). dpm/unipc: DPM-Solver's time-uniform
    grid from t = T-1 to 0. ddpm: the full ancestral chain when ``steps >= T``, otherwise the
    DDIM grid walked with ancestral (eta = 1) steps.
    """
    if sampler not in SAMPLER_NAMES:
        raise ValueError(f"sampler must be one of {tuple(SAMPLER_NAMES)}, got {sampler!r}")
    ac = model.alphas_cumprod
    if sampler in ("ddim", "plms"):
        return ddim_sigmas(ac, steps)
    if sampler in ("dpm", "unipc"):
        return dpm_solver_sigmas(ac, steps, "time_uniform")
    return ddpm_sigmas(ac) if steps >= model.num_timesteps else ddim_sigmas(ac, steps)


@dataclass
class HighNoiseExpert:
    """A second model that denoises the noisiest levels (eDiff-I's expert denoisers, Balaji et al.
    2022): it answers above timestep ``switch_t``'s noise level, the sampled model at and below it.
    It brings its own conditioning, since experts trained apart have their own encoders, and is
    guided with the same scale."""
    model: Any
    switch_t: int          # 0 <= switch_t < T; T - 1: the expert never answers, 0: it answers all but t = 0
    cond: Any = None
    uncond: Any = None
    # how often each model answered, added up by every sampling call: shows where the switch fell
    calls: dict = field(default_factory=lambda: {"high": 0, "low": 0})
    # the model ``check_experts`` passed against: later calls with it skip the first-stage comparison
    checked_with: Any = field(default=None, repr=False, compare=False)


@dataclass
class GuideModel:
    """A weaker model of the same task for autoguidance (Karras et al. 2024; ``AutoGuidance``):
    each step adds ``weight`` times the sampled model's conditional x0 estimate minus the guide's.
    An earlier snapshot of the same run is such a guide. It brings its own conditioning."""
    model: Any
    weight: float          # >= 0; 0 leaves the samples as classifier-free guidance alone makes them
    cond: Any = None
    # the model ``check_experts`` passed against: later calls with it skip the first-stage comparison
    checked_with: Any = field(default=None, repr=False, compare=False)


@dataclass
class ComposedModel:
    """A second model of the same latents whose classifier-free guidance direction is added to the
    sampled model's at every step (composable diffusion, Liu et al. 2022; ``ComposedGuidance``):
    two text models that learnt different parts of the prompts (colours, shapes) each pull the
    sample towards theirs. It brings its own conditioning and may have its own noise schedule: it
    is asked at the levels its schedule covers."""
    model: Any
    weight: float          # >= 0: the weight of its direction (the sampled model keeps its own scale)
    cond: Any = None
    uncond: Any = None
    # network calls of the sampled model with and without the second one, added up by every sampling call
    calls: dict = field(default_factory=lambda: {"composed": 0, "alone": 0})
    # the model ``check_experts`` passed against: later calls with it skip the first-stage comparison
    checked_with: Any = field(default=None, repr=False, compare=False)


def check_experts(high: Any, low: Any, what: str = "the experts", same_schedule: bool = True) -> None:
    """Experts (or a model and its guide) must return x0 estimates of the same latents: one first
    stage (weights and latent scale) and, unless ``same_schedule`` is off (composition, which asks
    each model at its own levels), one noise schedule. Raises ValueError naming what differs."""
    if same_schedule and not torch.equal(high.alphas_cumprod.cpu(), low.alphas_cumprod.cpu()):
        raise ValueError(f"{what} have different noise schedules (alphas_cumprod); they must share one")
    if int(high.channels) != int(low.channels):
        raise ValueError(f"the latents of {what} have {high.channels} and {low.channels} channels; they must "
                         "share the latent space")
    a, b = high.first_stage_model.state_dict(), low.first_stage_model.state_dict()
    if a.keys() != b.keys() or any(not torch.equal(a[k].cpu(), b[k].cpu()) for k in a):
        raise ValueError(f"{what} have different first stages; they must share the latent space")
    if not torch.equal(torch.as_tensor(high.scale_factor).cpu(), torch.as_tensor(low.scale_factor).cpu()):
        raise ValueError(f"{what} scale their latents differently ({float(high.scale_factor)} vs "
                         f"{float(low.scale_factor)}); they must share the latent space")


def initial_noise(shape: tuple, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """x_T ~ N(0, I), drawn on the generator's device (CPU: the same numbers everywhere)."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def noise_to_level(z0: torch.Tensor, sigma: float | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """q(z_t | z_0) at noise level sigma, in VP coordinates: sqrt(abar) z_0 + sqrt(1 - abar) n
    with abar = 1 / (1 + sigma^2) (paper Eq. (1), Ho et al. 2020 Eq. 4)."""
    return ve_to_vp(z0 + torch.as_tensor(sigma, dtype=z0.dtype, device=z0.device) * noise, sigma)


def sample_latents(
    model: Any,
    shape: tuple,                               # (B, C, h, w) of the latent
    cond: Any = None,                           # conditioning as the model's apply_model takes it
    uncond: Any = None,                         # the unconditional counterpart, for guidance
    scale: float = 1.0,                         # guidance weight w; 1 = plain conditional sampling
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,                           # DDIM stochasticity (ddim only)
    generator: Optional[torch.Generator] = None,
    x_T: Optional[torch.Tensor] = None,         # start latent (VP coordinates); default fresh noise
    mask: Optional[torch.Tensor] = None,        # 1 = keep x0 there (latent resolution)
    x0: Optional[torch.Tensor] = None,          # known latent for masked sampling
    progress: bool = True,
    first_step: int = 0,                        # start this many levels into the grid (img2img)
    noise_sampler: Optional[Callable] = None,   # (sigma, sigma_next) -> noise; default: from generator
    expert: Optional[HighNoiseExpert] = None,   # a second model for the noisiest levels
    guide: Optional[GuideModel] = None,         # a weaker model to guide away from (autoguidance)
    compose: Optional[ComposedModel] = None,    # a second model whose guidance direction is added
) -> torch.Tensor:
    """A latent sample of ``shape`` in the model's VP coordinates (paper Eq. (1)-(2) reversed).

    With ``mask``/``x0`` the known region is re-imposed at every step and the returned latent
    equals ``x0`` exactly where ``mask == 1`` (in-/out-painting with any model, Sec. 4.5).
    With ``first_step = k`` only the last ``steps - k`` steps run, from ``x_T`` taken to be at
    level ``noise_levels(...)[k]`` (see ``noise_to_level``).
    With ``expert`` its model denoises above timestep ``expert.switch_t``'s level, with its own
    conditioning (``NoiseLevelExperts``); ``model`` denoises the rest.
    With ``guide`` every step adds ``guide.weight * (D(x|cond) - D_guide(x|guide.cond))`` to the
    (classifier-free guided) estimate (``AutoGuidance``).
    With ``compose`` every step at a level within its model's schedule adds ``compose.weight *
    (D_2(x|compose.cond) - D_2(x|compose.uncond))`` to that estimate (``ComposedGuidance``).
    """
    if len(shape) != 4:
        raise ValueError(f"shape must be (B, C, h, w), got {tuple(shape)}")
    if eta != 0.0 and sampler != "ddim":
        raise ValueError(f"eta={eta} is only defined for the ddim sampler, not {sampler!r}")
    if (mask is None) != (x0 is None):
        raise ValueError("masked sampling needs both `mask` and `x0`")
    if mask is not None and sampler not in MASKED_SAMPLERS:
        raise ValueError(f"masked sampling (inpainting) needs one of {MASKED_SAMPLERS}, got {sampler!r}")
    if scale != 1.0 and uncond is None:
        raise ValueError(f"guidance scale {scale} needs an unconditional conditioning")
    if expert is not None:
        if expert.checked_with is not model:
            check_experts(expert.model, model)
            expert.checked_with = model
        if not 0 <= int(expert.switch_t) < model.num_timesteps:
            raise ValueError(f"expert switch_t={expert.switch_t} must lie in [0, {model.num_timesteps - 1}]")
        if scale != 1.0 and expert.uncond is None:
            raise ValueError(f"guidance scale {scale} needs the expert's unconditional conditioning too")
    if guide is not None:
        if expert is not None:
            raise ValueError("autoguidance and noise-level experts cannot be combined; use one of them")
        if guide.checked_with is not model:
            check_experts(guide.model, model, what="the model and its guide")
            guide.checked_with = model
    if compose is not None:
        if expert is not None:
            raise ValueError("noise-level experts and composition cannot be combined; use one of them")
        if compose.checked_with is not model:
            check_experts(compose.model, model, what="the composed models", same_schedule=False)
            compose.checked_with = model
    device = model.alphas_cumprod.device
    sigmas = noise_levels(model, sampler, steps).to(device)
    if not 0 <= first_step < len(sigmas) - 1:
        raise ValueError(f"first_step must lie in [0, {len(sigmas) - 2}], got {first_step}")
    sigmas = sigmas[first_step:]
    denoiser: Any = CompVisDenoiser(model)
    if guide is not None:
        denoiser = AutoGuidance(denoiser, CompVisDenoiser(guide.model), guide.weight, guide_cond=guide.cond,
                                scale=scale, uncond=uncond)
    elif scale != 1.0:
        denoiser = ClassifierFreeGuidance(denoiser, scale=scale, uncond=uncond)
    if compose is not None:
        partner = CompVisDenoiser(compose.model)
        denoiser = ComposedGuidance(denoiser, partner, compose.weight, compose.cond, compose.uncond,
                                    sigma_range=(partner.sigma_min, partner.sigma_max))
    if expert is not None:
        high: Any = CompVisDenoiser(expert.model)
        if scale != 1.0:
            high = ClassifierFreeGuidance(high, scale=scale, uncond=expert.uncond)
        sigma_switch = float(sigmas_from_alphas_cumprod(model.alphas_cumprod)[int(expert.switch_t)])
        denoiser = NoiseLevelExperts(high, denoiser, sigma_switch, high_args={"cond": expert.cond},
                                     low_args={"cond": cond})
    z = initial_noise(tuple(shape), generator, device) if x_T is None else x_T.to(device)
    if tuple(z.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(z.shape)}, expected {tuple(shape)}")
    options: dict[str, Any] = {}
    if sampler == "ddim":
        options["eta"] = eta
    if sampler == "ddpm":
        options["clip_denoised"] = False
    if mask is not None:
        mask, x0 = mask.to(device), x0.to(device)
    if noise_sampler is not None and sampler in ("ddim", "ddpm", "plms"):  # the others draw no noise
        options["noise_sampler"] = noise_sampler
    fn = SAMPLERS[SAMPLER_NAMES[sampler]]
    out = sample_vp(fn, denoiser, z.float(), sigmas, cond=cond, mask=mask, x0=x0, disable=not progress,
                    generator=generator, **options)
    for extra in (expert, compose):
        if extra is not None:
            for k in extra.calls:
                extra.calls[k] += denoiser.calls[k]
    return out
