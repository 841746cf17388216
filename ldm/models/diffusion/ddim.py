"""DDIMSampler: the original CompVis class API over ``sampling.sample_ddim`` (Song et al. 2021)."""
from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, Optional

import numpy as np
import torch

from ldm.models.diffusion.sampling import (ddim_timesteps, invert_ddim, sample_ddim, ve_to_vp, vp_to_ve)
from ldm.models.diffusion.sampling.legacy import CompVisSampler

__all__ = ["DDIMSampler", "DDIMGridSampler"]
log = logging.getLogger(__name__)


class DDIMGridSampler(CompVisSampler):
    """The DDIM timestep grid and its derived arrays (shared by DDIMSampler and PLMSSampler)."""

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0,
                      verbose: bool = True) -> None:
        steps = ddim_timesteps(ddim_num_steps, self.ddpm_num_timesteps, ddim_discretize)
        ac = self.model.alphas_cumprod.detach()
        alphas = ac[steps.to(ac.device)]
        alphas_prev = torch.cat([ac[:1], alphas[:-1]])
        self.ddim_timesteps = steps.numpy()
        self.ddim_eta = float(ddim_eta)
        self.alphas_cumprod = ac
        self.ddim_alphas = alphas
        self.ddim_alphas_prev = alphas_prev.cpu().double().numpy()
        self.ddim_sqrt_one_minus_alphas = (1.0 - alphas).sqrt()
        # eta-scaled DDIM noise std in the VP latent (Song et al. 2021, Eq. 16)
        self.ddim_sigmas = ddim_eta * ((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev)).sqrt()
        if verbose:
            log.info("DDIM timesteps: %s (eta %s)", self.ddim_timesteps.tolist(), ddim_eta)

    def _levels(self, steps: np.ndarray, final_zero: bool = False) -> torch.Tensor:
        """Noise levels visiting ``steps`` (descending) and ending at sigma(0), or 0."""
        table = self.level_table()
        idx = torch.as_tensor(np.flip(steps).copy(), device=table.device)  # copy: a 1-element flip keeps its negative stride
        end = table.new_zeros(1) if final_zero else table[:1]
        return torch.cat([table[idx], end]).float()

    def _require_schedule(self) -> None:
        if not hasattr(self, "ddim_timesteps"):
            raise RuntimeError("call make_schedule(ddim_num_steps, ...) (or sample) first")


class DDIMSampler(DDIMGridSampler):
    """``DDIMSampler(model).sample(S, batch_size, shape, conditioning, ...)`` as in CompVis.

    Steps: exactly ``S`` (see ``sampling.ddim_timesteps``: for S not dividing T the original ran
    ceil(T / (T // S)) steps, e.g. 31 for 30; here the first S of those). Latents are the model's
    VP latents throughout; the returned sample sits at the original's final level abar_0.
    """

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: tuple, conditioning: Any = None, callback: Optional[Callable] = None,
               normals_sequence: Any = None, img_callback: Optional[Callable] = None, quantize_x0: bool = False,
               eta: float = 0.0, mask: Optional[torch.Tensor] = None, x0: Optional[torch.Tensor] = None,
               temperature: float = 1.0, noise_dropout: float = 0.0, score_corrector: Any = None,
               corrector_kwargs: Optional[dict] = None, verbose: bool = True, x_T: Optional[torch.Tensor] = None,
               log_every_t: int = 100, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None):
        """Returns ``(samples, {"x_inter": [...], "pred_x0": [...]})``. ``verbose=False`` hides the
        progress bar. ``mask`` = 1 keeps ``x0`` (returned exactly there). temperature and
        noise_dropout scale/drop the eta noise (no effect at eta = 0, as in the original)."""
        if normals_sequence is not None:
            warnings.warn("normals_sequence is not used by DDIM sampling (nor was it originally)", stacklevel=2)
        self.check_batch(conditioning, batch_size)
        self.make_schedule(S, ddim_eta=eta, verbose=verbose)
        img = self.initial_noise(batch_size, shape, x_T)
        noise_sampler = self._noise_sampler(img, eta, temperature, noise_dropout, mask)
        denoiser = self.build_denoiser(unconditional_guidance_scale, unconditional_conditioning,
                                       score_corrector, corrector_kwargs)
        return self.run(sample_ddim, self._levels(self.ddim_timesteps), img, conditioning, denoiser,
                        callback=callback, img_callback=img_callback, log_every_t=log_every_t, verbose=verbose,
                        mask=mask, x0=x0, eta=eta, noise_sampler=noise_sampler,
                        x0_transform=self.quantizer(quantize_x0))

    @staticmethod
    def _noise_sampler(img: torch.Tensor, eta: float, temperature: float, noise_dropout: float,
                       mask: Optional[torch.Tensor]):
        if eta == 0.0 or (temperature == 1.0 and noise_dropout == 0.0):
            return None
        if mask is not None:
            raise ValueError("temperature/noise_dropout together with mask are not supported: the "
                             "re-noising of x0 must stay unscaled")

        def noise(sigma: float, sigma_next: float) -> torch.Tensor:
            z = torch.randn_like(img) * temperature
            return torch.nn.functional.dropout(z, p=noise_dropout) if noise_dropout > 0 else z
        return noise

    @torch.no_grad()
    def stochastic_encode(self, x0: torch.Tensor, t: torch.Tensor, use_original_steps: bool = False,
                          noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """q(z_t | x0) at DDIM step index ``t`` (LongTensor [B]; a training step if
        ``use_original_steps``). As the original, ``decode(z, c, t_start=t)`` then starts one DDIM
        step lower, at ``ddim_timesteps[t - 1]``."""
        if use_original_steps:
            alphas = self.model.alphas_cumprod
        else:
            self._require_schedule()
            alphas = self.ddim_alphas
        a_t = alphas.to(x0.device)[t.to(x0.device).long()].to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        noise = torch.randn_like(x0) if noise is None else noise
        return a_t.sqrt() * x0 + (1.0 - a_t).sqrt() * noise

    def _prefix(self, count: int, use_original_steps: bool, name: str) -> np.ndarray:
        steps = np.arange(self.ddpm_num_timesteps) if use_original_steps else self.ddim_timesteps
        if not 1 <= count <= len(steps):
            raise ValueError(f"{name} must lie in [1, {len(steps)}], got {count}")
        return steps[:count]

    @torch.no_grad()
    def decode(self, x_latent: torch.Tensor, cond: Any, t_start: int, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None, use_original_steps: bool = False,
               callback: Optional[Callable] = None) -> torch.Tensor:
        """DDIM from step ``t_start - 1`` of the schedule down to the end (img2img), with the
        eta of ``make_schedule``; ``x_latent`` is taken to be at that step's level."""
        if not use_original_steps:
            self._require_schedule()
        eta = getattr(self, "ddim_eta", 0.0)
        steps = self._prefix(int(t_start), use_original_steps, "t_start")
        sigmas = self._levels(steps, final_zero=use_original_steps)  # abar_prev(t=0) = 1 there
        denoiser = self.build_denoiser(unconditional_guidance_scale, unconditional_conditioning)
        x = sample_ddim(denoiser, vp_to_ve(x_latent, sigmas[0]), sigmas, extra_args={"cond": cond},
                        callback=callback, eta=eta)
        return ve_to_vp(x, sigmas[-1])

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
            self._require_schedule()
            steps = np.concatenate([[0], self._prefix(int(t_enc), False, "t_enc")])
        sigmas = self._levels(steps).flip(0)[1:]  # sigma(0), then ascending through the steps
        denoiser = self.build_denoiser(unconditional_guidance_scale, unconditional_conditioning)
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
