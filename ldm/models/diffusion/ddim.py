"""DDIMSampler: the original CompVis class API over ``sampling.sample_ddim`` (Song et al. 2021)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from ldm.models.diffusion.sampling import invert_ddim, sample_ddim, sample_vp, ve_to_vp, vp_to_ve
from ldm.models.diffusion.sampling.legacy import GridSampler, build_denoiser, scaled_noise

__all__ = ["DDIMSampler", "DDIMGridSampler"]

DDIMGridSampler = GridSampler  # earlier name of the shared grid base


class DDIMSampler(GridSampler):
    """``DDIMSampler(model).sample(S, batch_size, shape, conditioning, ...)`` as in CompVis.

    ``make_schedule(S)`` builds the original grid (S = 30: 31 steps 1, 34, ..., 991) and
    ``ddim_sampling``/``p_sample_ddim`` walk it as the original did; so does ``sample(S)`` (31
    steps for S = 30, see ``sampling.legacy``). Latents are the model's VP latents
    throughout; the returned sample sits at the original's final level abar_0.
    """

    sampler_fn = staticmethod(sample_ddim)
    ddim_sampling = GridSampler.grid_sampling

    def fn_options(self) -> dict:
        return {"eta": self.ddim_eta}

    @torch.no_grad()
    def p_sample_ddim(self, x: torch.Tensor, c: Any, t: torch.Tensor, index: int, repeat_noise: bool = False,
                      use_original_steps: bool = False, quantize_denoised: bool = False, temperature: float = 1.0,
                      noise_dropout: float = 0.0, score_corrector: Any = None, corrector_kwargs: Optional[dict] = None,
                      unconditional_guidance_scale: float = 1.0, unconditional_conditioning: Any = None):
        """One DDIM step (Song et al. 2021, Eq. 12) from grid position ``index`` (training step
        ``t``) to the next lower one, with the eta of ``make_schedule``; returns
        ``(x_prev, pred_x0)``."""
        self.require_schedule()  # the eta of make_schedule, also on the original steps
        return self.one_step(x, c, t, index, use_original_steps, quantize_denoised, score_corrector,
                             corrector_kwargs, unconditional_guidance_scale, unconditional_conditioning,
                             eta=self.ddim_eta, noise_sampler=scaled_noise(x, temperature, noise_dropout, repeat_noise))

    @torch.no_grad()
    def stochastic_encode(self, x0: torch.Tensor, t: torch.Tensor, use_original_steps: bool = False,
                          noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """q(z_t | x0) at DDIM step index ``t`` (LongTensor [B]; a training step if
        ``use_original_steps``). As the original, ``decode(z, c, t_start=t)`` then starts one DDIM
        step lower, at ``ddim_timesteps[t - 1]``."""
        if use_original_steps:
            alphas = self.model.alphas_cumprod
        else:
            self.require_schedule()
            alphas = self.ddim_alphas
        a_t = alphas.to(x0.device)[t.to(x0.device).long()].to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        noise = torch.randn_like(x0) if noise is None else noise
        return a_t.sqrt() * x0 + (1.0 - a_t).sqrt() * noise

    def _prefix(self, count: int, use_original_steps: bool, name: str) -> np.ndarray:
        steps = self.training_steps(use_original_steps)
        if not 1 <= count <= len(steps):
            raise ValueError(f"{name} must lie in [1, {len(steps)}], got {count}")
        return steps[:count]

    @torch.no_grad()
    def decode(self, x_latent: torch.Tensor, cond: Any, t_start: int, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None, use_original_steps: bool = False,
               callback: Optional[Callable] = None) -> torch.Tensor:
        """DDIM from step ``t_start - 1`` of the schedule down to the end (img2img), with the
        eta of ``make_schedule``; ``x_latent`` is taken to be at that step's level."""
        steps = self._prefix(int(t_start), use_original_steps, "t_start")
        eta = getattr(self, "ddim_eta", 0.0)
        sigmas = self.levels(steps, final_zero=use_original_steps)  # abar_prev(t=0) = 1 there
        denoiser = build_denoiser(self.model, unconditional_guidance_scale, unconditional_conditioning)
        return sample_vp(sample_ddim, denoiser, x_latent, sigmas, cond=cond, eta=eta,
                         callback=None if callback is None else lambda step: callback(step["i"]))

    @torch.no_grad()
    def encode(self, x0: torch.Tensor, c: Any, t_enc: int, use_original_steps: bool = False,
               return_intermediates: Optional[int] = None, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None, callback: Optional[Callable] = None):
        """Deterministic DDIM inversion of a clean latent over the first ``t_enc`` schedule steps;
        ``decode(result, c, t_start=t_enc)`` inverts it back (approximately). Returns
        ``(z, {"x_encoded": z, "intermediate_steps": [...], "intermediates": [...]})``."""
        if use_original_steps:
            steps = self._prefix(int(t_enc) + 1, True, "t_enc + 1")
        else:
            self.require_schedule()
            steps = np.concatenate([[0], self._prefix(int(t_enc), False, "t_enc")])
        sigmas = self.levels(steps).flip(0)[1:]  # sigma(0), then ascending through the steps
        denoiser = build_denoiser(self.model, unconditional_guidance_scale, unconditional_conditioning)
        every = max(1, int(t_enc) // return_intermediates) if return_intermediates else 0
        out: dict = {"intermediate_steps": [], "intermediates": []}

        def record(step: dict) -> None:
            if callback is not None:
                callback(step["i"])
            if every and step["i"] % every == 0:
                out["intermediate_steps"].append(step["i"])
                out["intermediates"].append(ve_to_vp(step["x_next"], step["sigma_next"]))

        x = invert_ddim(denoiser, vp_to_ve(x0, sigmas[0]), sigmas, extra_args={"cond": c}, callback=record)
        out["x_encoded"] = ve_to_vp(x, sigmas[-1])
        return out["x_encoded"], out
