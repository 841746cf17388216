"""PLMSSampler: the original CompVis class API over ``sampling.sample_plms`` (Liu et al. 2022)."""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch

from ldm.models.diffusion.ddim import DDIMGridSampler
from ldm.models.diffusion.sampling import sample_plms

__all__ = ["PLMSSampler"]


class PLMSSampler(DDIMGridSampler):
    """``PLMSSampler(model).sample(S, batch_size, shape, conditioning, ...)`` as in CompVis.

    Visits the same S timesteps as DDIM (exactly S, see ``sampling.ddim_timesteps``) with S + 1
    model evaluations. PLMS is deterministic: eta must be 0, and temperature / noise_dropout have
    no effect (as in the original).
    """

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0,
                      verbose: bool = True) -> None:
        if ddim_eta != 0:
            raise ValueError(f"ddim_eta must be 0 for PLMS, got {ddim_eta}")
        super().make_schedule(ddim_num_steps, ddim_discretize, ddim_eta, verbose)

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: tuple, conditioning: Any = None, callback: Optional[Callable] = None,
               normals_sequence: Any = None, img_callback: Optional[Callable] = None, quantize_x0: bool = False,
               eta: float = 0.0, mask: Optional[torch.Tensor] = None, x0: Optional[torch.Tensor] = None,
               temperature: float = 1.0, noise_dropout: float = 0.0, score_corrector: Any = None,
               corrector_kwargs: Optional[dict] = None, verbose: bool = True, x_T: Optional[torch.Tensor] = None,
               log_every_t: int = 100, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None):
        """Returns ``(samples, {"x_inter": [...], "pred_x0": [...]})``; arguments as ``DDIMSampler.sample``."""
        if normals_sequence is not None:
            warnings.warn("normals_sequence is not used by PLMS sampling (nor was it originally)", stacklevel=2)
        self.check_batch(conditioning, batch_size)
        self.make_schedule(S, ddim_eta=eta, verbose=verbose)
        img = self.initial_noise(batch_size, shape, x_T)
        denoiser = self.build_denoiser(unconditional_guidance_scale, unconditional_conditioning,
                                       score_corrector, corrector_kwargs)
        return self.run(sample_plms, self._levels(self.ddim_timesteps), img, conditioning, denoiser,
                        callback=callback, img_callback=img_callback, log_every_t=log_every_t, verbose=verbose,
                        mask=mask, x0=x0, x0_transform=self.quantizer(quantize_x0))
