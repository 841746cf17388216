"""The original sampler classes' API (DDIMSampler, PLMSSampler, DPMSolverSampler) as thin adapters.

Everything the CompVis classes offered to third-party code (``make_schedule`` and its buffers,
``ddim_sampling``/``plms_sampling``, the single steps ``p_sample_ddim``/``p_sample_plms``,
``sample(**kwargs)``) is answered here by the sampler functions of this package: the classes only
build the denoiser (adapter + guidance + optional score corrector), choose the noise levels, and
convert between the CompVis VP latents ``z_t = sqrt(abar_t) x`` and the samplers' ``x0 + sigma*n``.

Grids: ``make_schedule(S)`` is the original grid ``schedule.make_ddim_timesteps`` (31 steps for
S = 30), and ``sample(S)`` walks all of it, as the original did, so numbers computed with the
original classes are reproduced. The sampler functions keep their exact-S grid
(``sampling.ddim_timesteps``: the first S steps of this grid, diffusers' "leading" spacing); the
two agree whenever S divides T.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, Optional

import numpy as np
import torch

from ldm.models.diffusion.schedule import make_ddim_sampling_parameters, make_ddim_timesteps
from ldm.modules.diffusionmodules.util import noise_like

from ._common import Denoiser, NoiseSampler
from .denoiser import CompVisDenoiser, sample_vp, sigmas_from_alphas_cumprod, ve_to_vp
from .guidance import ClassifierFreeGuidance

log = logging.getLogger(__name__)


class ScoreCorrected:
    """Apply ``score_corrector.modify_score(model, eps, z_t, t, cond, **kwargs)`` (the original hook,
    eps-parameterised models only) to the eps implied by ``denoiser``."""

    def __init__(self, denoiser: Denoiser, adapter: CompVisDenoiser, corrector: Any, kwargs: dict):
        if adapter.parameterization != "eps":
            raise ValueError(f"score_corrector needs an eps-parameterised model, got {adapter.parameterization!r}")
        self.denoiser, self.adapter, self.corrector, self.kwargs = denoiser, adapter, corrector, kwargs

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        denoised = self.denoiser(x, sigma, cond=cond)
        s = sigma.to(x.device, x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        eps = (x - denoised) / s
        t = self.adapter.sigma_to_t(sigma).to(x.device)
        eps = self.corrector.modify_score(self.adapter.model, eps, ve_to_vp(x, sigma), t, cond, **self.kwargs)
        return x - s * eps


def _batch_size(cond: Any) -> Optional[int]:
    if isinstance(cond, torch.Tensor):
        return cond.shape[0]
    if isinstance(cond, dict):
        cond = list(cond.values())
    if isinstance(cond, (list, tuple)):
        for c in cond:
            n = _batch_size(c)
            if n is not None:
                return n
    return None


def build_denoiser(model: Any, scale: float = 1.0, uncond: Any = None, score_corrector: Any = None,
                   corrector_kwargs: Optional[dict] = None) -> Denoiser:
    """D(x; sigma) of ``model`` with the original classes' guidance and score-corrector options."""
    adapter = CompVisDenoiser(model)
    denoiser: Denoiser = adapter
    if uncond is not None and scale != 1.0:
        denoiser = ClassifierFreeGuidance(adapter, scale=scale, uncond=uncond)
    elif scale != 1.0:
        warnings.warn(f"unconditional_guidance_scale={scale} has no effect without "
                      "unconditional_conditioning; sampling conditionally", stacklevel=3)
    if score_corrector is not None:
        denoiser = ScoreCorrected(denoiser, adapter, score_corrector, corrector_kwargs or {})
    return denoiser


def scaled_noise(x: torch.Tensor, temperature: float = 1.0, noise_dropout: float = 0.0,
                 repeat_noise: bool = False) -> Optional[NoiseSampler]:
    """The original samplers' step noise: N(0, I) (one draw shared by the batch with
    ``repeat_noise``) times ``temperature``, with dropout ``noise_dropout``; None for plain noise."""
    if temperature == 1.0 and noise_dropout == 0.0 and not repeat_noise:
        return None

    def draw(sigma: float, sigma_next: float) -> torch.Tensor:
        z = noise_like(x.shape, x.device, repeat_noise).to(x.dtype) * temperature
        return torch.nn.functional.dropout(z, p=noise_dropout) if noise_dropout > 0 else z
    return draw


def quantizer(model: Any, quantize_x0: bool) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """x0 -> nearest VQ codebook entries of the model's first stage (the original ``quantize_x0``)."""
    if not quantize_x0:
        return None
    first_stage = getattr(model, "first_stage_model", None)
    if first_stage is None or not hasattr(first_stage, "quantize"):
        raise ValueError("quantize_x0=True needs a model whose first_stage_model has `quantize` (VQ)")
    return lambda x0: first_stage.quantize(x0)[0]


class CompVisSampler:
    """Common state of the original sampler classes: the model and its noise-level table."""

    def __init__(
        self,
        model: Any,                # DDPM / LatentDiffusion
        schedule: str = "linear",  # kept for signature compatibility; the model's own schedule is used
        **kwargs: Any,             # accepted and ignored, as the original (e.g. ``device``)
    ):
        self.model = model
        self.ddpm_num_timesteps = model.num_timesteps
        self.schedule = schedule
        if model.alphas_cumprod.shape[0] != self.ddpm_num_timesteps:
            raise ValueError(f"model.alphas_cumprod has {model.alphas_cumprod.shape[0]} entries but "
                             f"model.num_timesteps is {self.ddpm_num_timesteps}")

    @property
    def device(self) -> torch.device:
        return self.model.alphas_cumprod.device

    def register_buffer(self, name: str, attr: Any) -> None:
        """The original helper: store ``attr`` as an attribute, tensors on the model's device."""
        if isinstance(attr, torch.Tensor):
            attr = attr.to(self.device)
        setattr(self, name, attr)

    @staticmethod
    def ignore_extra(kwargs: dict, normals_sequence: Any) -> None:
        """``sample(**kwargs)`` accepts what the original accepted without using it; say so."""
        unused = sorted(kwargs) + (["normals_sequence"] if normals_sequence is not None else [])
        if unused:
            warnings.warn(f"sample(): {', '.join(unused)} not used by this sampler (nor by the original)",
                          stacklevel=3)

    def check_batch(self, conditioning: Any, batch_size: int) -> None:
        n = _batch_size(conditioning)
        if n is not None and n != batch_size:
            warnings.warn(f"got {n} conditionings but batch_size is {batch_size}", stacklevel=3)

    def initial_noise(self, size: tuple, x_T: Optional[torch.Tensor]) -> torch.Tensor:
        """x_T of ``size`` = (B, C, H, W): fresh N(0, I) unless given."""
        if len(size) != 4:
            raise ValueError(f"shape must be (C, H, W) after the batch size, got {tuple(size[1:])}")
        if x_T is None:
            return torch.randn(size, device=self.device)
        if tuple(x_T.shape) != tuple(size):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(size)}")
        return x_T

    def run(self, fn: Callable, sigmas: torch.Tensor, img: torch.Tensor, conditioning: Any, denoiser: Denoiser,
            *, callback=None, img_callback=None, log_every_t: int = 100, verbose: bool = True,
            mask: Optional[torch.Tensor] = None, x0: Optional[torch.Tensor] = None, **fn_kwargs):
        """Run sampler ``fn`` on a VP latent ``img`` at level ``sigmas[0]``; return the VP latent at
        ``sigmas[-1]`` and the original intermediates dict."""
        total = len(sigmas) - 1
        intermediates = {"x_inter": [img], "pred_x0": [img]}

        def record(step: dict) -> None:
            i = step["i"]
            index = total - i - 1
            if callback is not None:
                callback(i)
            if img_callback is not None:
                img_callback(step["denoised"], i)
            if index % log_every_t == 0 or index == total - 1:
                intermediates["x_inter"].append(ve_to_vp(step["x_next"], step["sigma_next"]))
                intermediates["pred_x0"].append(step["denoised"])

        out = sample_vp(fn, denoiser, img, sigmas, cond=conditioning, mask=mask, x0=x0, callback=record,
                        disable=not verbose, **fn_kwargs)
        return out, intermediates


class GridSampler(CompVisSampler):
    """The DDIM timestep grid (Song et al. 2021, Sec. 4.2) and the original methods over it.

    Subclasses name their sampler function (``sampler_fn``) and its options (``fn_options``);
    ``grid_sampling`` is the original ``ddim_sampling``/``plms_sampling`` and ``one_step`` the body
    of ``p_sample_ddim``/``p_sample_plms``.
    """

    sampler_fn: Callable = None  # type: ignore[assignment]  # set by the subclass

    def fn_options(self) -> dict:
        return {}

    # ---- the schedule, with the original attribute names ----

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0,
                      verbose: bool = True) -> None:
        """The original grid (``schedule.make_ddim_timesteps``) and its DDIM parameters
        (Song et al. 2021, Eq. 16), under the original attribute names."""
        if not 0.0 <= ddim_eta <= 1.0:
            raise ValueError(f"ddim_eta must lie in [0, 1], got {ddim_eta}")
        steps = make_ddim_timesteps(ddim_discretize, ddim_num_steps, self.ddpm_num_timesteps, verbose=False)
        if steps[-1] >= self.ddpm_num_timesteps:
            raise ValueError(f"ddim_num_steps={ddim_num_steps} needs timestep {steps[-1]}, beyond the last "
                             f"training step {self.ddpm_num_timesteps - 1}")
        m = self.model
        ac = m.alphas_cumprod.detach()
        ac64 = ac.cpu().double().numpy()
        sigmas, alphas, alphas_prev = make_ddim_sampling_parameters(ac64, steps, ddim_eta, verbose=False)
        self.ddim_timesteps = steps
        self.ddim_eta = float(ddim_eta)
        self.register_buffer("betas", m.betas.detach())
        self.register_buffer("alphas_cumprod", ac)
        self.register_buffer("alphas_cumprod_prev", m.alphas_cumprod_prev.detach())
        for name, value in (("sqrt_alphas_cumprod", np.sqrt(ac64)),
                            ("sqrt_one_minus_alphas_cumprod", np.sqrt(1.0 - ac64)),
                            ("log_one_minus_alphas_cumprod", np.log(1.0 - ac64)),
                            ("sqrt_recip_alphas_cumprod", np.sqrt(1.0 / ac64)),
                            ("sqrt_recipm1_alphas_cumprod", np.sqrt(1.0 / ac64 - 1)),
                            ("ddim_sigmas", sigmas), ("ddim_alphas", alphas),
                            ("ddim_sqrt_one_minus_alphas", np.sqrt(1.0 - alphas))):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32))
        self.ddim_alphas_prev = alphas_prev  # numpy, as the original
        ac_prev = np.append(1.0, ac64[:-1])
        self.register_buffer("ddim_sigmas_for_original_num_steps", torch.tensor(
            ddim_eta * np.sqrt((1 - ac_prev) / (1 - ac64) * (1 - ac64 / ac_prev)), dtype=torch.float32))
        if verbose:
            log.info("DDIM timesteps (%d): %s, eta %s", len(steps), steps.tolist(), ddim_eta)

    def require_schedule(self) -> None:
        if not hasattr(self, "ddim_timesteps"):
            raise RuntimeError("call make_schedule(ddim_num_steps, ...) (or sample) first")

    def training_steps(self, use_original_steps: bool) -> np.ndarray:
        """The steps ``index`` counts through: all T training steps, or the DDIM grid."""
        if use_original_steps:
            return np.arange(self.ddpm_num_timesteps)
        self.require_schedule()
        return self.ddim_timesteps

    def levels(self, steps: np.ndarray, final_zero: bool = False) -> torch.Tensor:
        """Noise levels visiting ``steps`` (ascending input, descending output), ending at sigma(0)
        (the original's final abar_prev = abar_0) or at 0 (abar_prev = 1, the full chain)."""
        table = sigmas_from_alphas_cumprod(self.model.alphas_cumprod)
        idx = torch.as_tensor(np.flip(steps).copy(), device=table.device)  # copy: flip's negative stride
        end = table.new_zeros(1) if final_zero else table[:1]
        return torch.cat([table[idx], end]).float()

    def select_steps(self, timesteps: Optional[int], use_original_steps: bool) -> np.ndarray:
        """The original ``timesteps`` argument: None = all; an int = the first ``timesteps``
        training steps, or on the DDIM grid its first ``int(min(timesteps / n, 1) * n) - 1`` steps
        (the original's rule, one fewer than asked)."""
        steps = self.training_steps(use_original_steps)
        if timesteps is None:
            return steps
        count = int(timesteps) if use_original_steps else int(min(timesteps / len(steps), 1) * len(steps)) - 1
        if not 1 <= count <= len(steps):
            raise ValueError(f"timesteps={timesteps} selects {count} of the {len(steps)} steps")
        return steps[:count]

    # ---- the original methods ----

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: tuple, conditioning: Any = None,
               callback: Optional[Callable] = None, normals_sequence: Any = None,
               img_callback: Optional[Callable] = None, quantize_x0: bool = False, eta: float = 0.0,
               mask: Optional[torch.Tensor] = None, x0: Optional[torch.Tensor] = None,
               temperature: float = 1.0, noise_dropout: float = 0.0, score_corrector: Any = None,
               corrector_kwargs: Optional[dict] = None, verbose: bool = True, x_T: Optional[torch.Tensor] = None,
               log_every_t: int = 100, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None, **kwargs: Any):
        """Returns ``(samples, {"x_inter": [...], "pred_x0": [...]})`` over ``make_schedule(S)``'s whole
        grid, as the original (31 steps for S = 30). ``verbose=False`` hides the progress bar.
        ``mask`` = 1 keeps ``x0`` (returned exactly there). temperature and noise_dropout scale/drop
        the eta noise (no effect at eta = 0, as in the original)."""
        self.ignore_extra(kwargs, normals_sequence)
        self.check_batch(conditioning, batch_size)
        self.make_schedule(S, ddim_eta=eta, verbose=verbose)
        return self.grid_sampling(
            conditioning, (batch_size, *shape), x_T=x_T, callback=callback, timesteps=None,
            quantize_denoised=quantize_x0, mask=mask, x0=x0, img_callback=img_callback, log_every_t=log_every_t,
            temperature=temperature, noise_dropout=noise_dropout, score_corrector=score_corrector,
            corrector_kwargs=corrector_kwargs, unconditional_guidance_scale=unconditional_guidance_scale,
            unconditional_conditioning=unconditional_conditioning, verbose=verbose, _steps=self.ddim_timesteps)

    @torch.no_grad()
    def grid_sampling(self, cond: Any, shape: tuple, x_T: Optional[torch.Tensor] = None,
                      ddim_use_original_steps: bool = False, callback: Optional[Callable] = None,
                      timesteps: Optional[int] = None, quantize_denoised: bool = False,
                      mask: Optional[torch.Tensor] = None, x0: Optional[torch.Tensor] = None,
                      img_callback: Optional[Callable] = None, log_every_t: int = 100, temperature: float = 1.0,
                      noise_dropout: float = 0.0, score_corrector: Any = None, corrector_kwargs: Optional[dict] = None,
                      unconditional_guidance_scale: float = 1.0, unconditional_conditioning: Any = None,
                      verbose: bool = True, _steps: Optional[np.ndarray] = None):
        """The original ``ddim_sampling``/``plms_sampling``: ``(img, intermediates)`` for a full
        ``shape`` (B, C, H, W) over the grid (``timesteps`` as in ``select_steps``)."""
        steps = self.select_steps(timesteps, ddim_use_original_steps) if _steps is None else _steps
        img = self.initial_noise(tuple(shape), x_T)
        options = self.fn_options()
        if options.get("eta", 0.0) > 0.0:
            if mask is not None and (temperature != 1.0 or noise_dropout != 0.0):
                raise ValueError("temperature/noise_dropout together with mask are not supported: the "
                                 "re-noising of x0 must stay unscaled")
            options["noise_sampler"] = scaled_noise(img, temperature, noise_dropout)
        denoiser = build_denoiser(self.model, unconditional_guidance_scale, unconditional_conditioning,
                                  score_corrector, corrector_kwargs)
        return self.run(type(self).sampler_fn, self.levels(steps, final_zero=ddim_use_original_steps), img,
                        cond, denoiser, callback=callback, img_callback=img_callback, log_every_t=log_every_t,
                        verbose=verbose, mask=mask, x0=x0, x0_transform=quantizer(self.model, quantize_denoised),
                        **options)

    def one_step(self, x: torch.Tensor, c: Any, t: torch.Tensor, index: int, use_original_steps: bool,
                 quantize_denoised: bool, score_corrector: Any, corrector_kwargs: Optional[dict],
                 unconditional_guidance_scale: float, unconditional_conditioning: Any, **fn_kwargs):
        """One step of ``sampler_fn`` from grid position ``index`` to ``index - 1`` (or the end);
        returns ``(x_prev, pred_x0)`` in VP coordinates."""
        steps = self.training_steps(use_original_steps)
        if not 0 <= int(index) < len(steps):
            raise ValueError(f"index must lie in [0, {len(steps) - 1}], got {index}")
        step = int(steps[index])
        if not bool((torch.as_tensor(t) == step).all()):
            raise ValueError(f"t={torch.as_tensor(t).tolist()} is not training step {step} of grid index {index}")
        sigmas = self.levels(steps[:index + 1], final_zero=use_original_steps)[:2]
        denoiser = build_denoiser(self.model, unconditional_guidance_scale, unconditional_conditioning,
                                  score_corrector, corrector_kwargs)
        seen: dict = {}
        x_prev = sample_vp(type(self).sampler_fn, denoiser, x, sigmas, cond=c, callback=seen.update, disable=True,
                           x0_transform=quantizer(self.model, quantize_denoised), **fn_kwargs)
        return x_prev, seen["denoised"]
