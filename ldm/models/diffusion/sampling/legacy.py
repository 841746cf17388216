"""The shared body of the original sampler classes (DDIMSampler, PLMSSampler, DPMSolverSampler).

These classes keep the CompVis call signatures for users' code; all they do is build the denoiser
(adapter + guidance + optional score corrector), the noise levels, and convert between the
CompVis VP latents and the samplers' x0 + sigma*n coordinates.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch

from ._common import Denoiser
from .denoiser import CompVisDenoiser, sigmas_from_alphas_cumprod, ve_to_vp, vp_to_ve
from .guidance import ClassifierFreeGuidance


class ScoreCorrected:
    """Apply ``score_corrector.modify_score(model, eps, z_t, t, cond, **kwargs)`` (the original hook,
    eps-parameterised models only) to the eps implied by ``denoiser``."""

    def __init__(self, denoiser: Denoiser, adapter: CompVisDenoiser, corrector: Any, kwargs: dict):
        if adapter.parameterization != "eps":
            raise ValueError(f"score_corrector needs an eps-parameterised model, got {adapter.parameterization!r}")
        self.denoiser, self.adapter, self.corrector, self.kwargs = denoiser, adapter, corrector, kwargs

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        denoised = self.denoiser(x, sigma, cond=cond)
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
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


class CompVisSampler:
    """Common state of the original sampler classes: the model and its noise-level table."""

    desc = "Sampler"

    def __init__(
        self,
        model: Any,              # DDPM / LatentDiffusion
        schedule: str = "linear",  # kept for signature compatibility; the model's own schedule is used
    ):
        self.model = model
        self.ddpm_num_timesteps = model.num_timesteps
        self.schedule = schedule
        if model.alphas_cumprod.shape[0] != self.ddpm_num_timesteps:
            raise ValueError(f"model.alphas_cumprod has {model.alphas_cumprod.shape[0]} entries but "
                             f"model.num_timesteps is {self.ddpm_num_timesteps}")

    # ---- pieces used by the subclasses ----
    @property
    def device(self) -> torch.device:
        return self.model.alphas_cumprod.device

    def level_table(self) -> torch.Tensor:
        """sigma at every training step (float64 where available)."""
        return sigmas_from_alphas_cumprod(self.model.alphas_cumprod)

    def build_denoiser(self, scale: float, uncond: Any, score_corrector: Any = None,
                       corrector_kwargs: Optional[dict] = None) -> Denoiser:
        adapter = CompVisDenoiser(self.model)
        denoiser: Denoiser = adapter
        if uncond is not None and scale != 1.0:
            denoiser = ClassifierFreeGuidance(adapter, scale=scale, uncond=uncond)
        elif scale != 1.0:
            warnings.warn(f"unconditional_guidance_scale={scale} has no effect without "
                          "unconditional_conditioning; sampling conditionally", stacklevel=3)
        if score_corrector is not None:
            denoiser = ScoreCorrected(denoiser, adapter, score_corrector, corrector_kwargs or {})
        return denoiser

    def check_batch(self, conditioning: Any, batch_size: int) -> None:
        n = _batch_size(conditioning)
        if n is not None and n != batch_size:
            warnings.warn(f"got {n} conditionings but batch_size is {batch_size}", stacklevel=3)

    def initial_noise(self, batch_size: int, shape: tuple, x_T: Optional[torch.Tensor]) -> torch.Tensor:
        if len(shape) != 3:
            raise ValueError(f"shape must be (C, H, W), got {tuple(shape)}")
        size = (batch_size, *shape)
        if x_T is None:
            return torch.randn(size, device=self.device)
        if tuple(x_T.shape) != size:
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {size}")
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

        if mask is not None or x0 is not None:  # the sampler rejects one without the other
            fn_kwargs.update(mask=mask, x0=x0)
        x = fn(denoiser, vp_to_ve(img, sigmas[0]), sigmas, extra_args={"cond": conditioning},
               callback=record, disable=not verbose, **fn_kwargs)
        out = ve_to_vp(x, sigmas[-1])
        if mask is not None:  # the known region is returned untouched, also at a final level > 0
            out = mask * x0 + (1.0 - mask) * out
        return out, intermediates

    def quantizer(self, quantize_x0: bool) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        if not quantize_x0:
            return None
        first_stage = getattr(self.model, "first_stage_model", None)
        if first_stage is None or not hasattr(first_stage, "quantize"):
            raise ValueError("quantize_x0=True needs a model whose first_stage_model has `quantize` (VQ)")
        return lambda x0: first_stage.quantize(x0)[0]
