"""PLMSSampler: the original CompVis class API over ``sampling.sample_plms`` (Liu et al. 2022)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from ldm.models.diffusion.sampling import sample_plms
from ldm.models.diffusion.sampling.legacy import GridSampler

__all__ = ["PLMSSampler"]


class PLMSSampler(GridSampler):
    """``PLMSSampler(model).sample(S, batch_size, shape, conditioning, ...)`` as in CompVis.

    The grid is DDIM's (``make_schedule``: the original grid; ``sample(S)`` walks all of it, with one
    model evaluation more than steps). PLMS is deterministic: eta must be 0, and temperature /
    noise_dropout have no effect (as in the original).
    """

    sampler_fn = staticmethod(sample_plms)
    plms_sampling = GridSampler.grid_sampling

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0,
                      verbose: bool = True) -> None:
        if ddim_eta != 0:
            raise ValueError(f"ddim_eta must be 0 for PLMS, got {ddim_eta}")
        super().make_schedule(ddim_num_steps, ddim_discretize, ddim_eta, verbose)

    @torch.no_grad()
    def p_sample_plms(self, x: torch.Tensor, c: Any, t: torch.Tensor, index: int, repeat_noise: bool = False,
                      use_original_steps: bool = False, quantize_denoised: bool = False, temperature: float = 1.0,
                      noise_dropout: float = 0.0, score_corrector: Any = None, corrector_kwargs: Optional[dict] = None,
                      unconditional_guidance_scale: float = 1.0, unconditional_conditioning: Any = None,
                      old_eps: Optional[list] = None, t_next: Optional[torch.Tensor] = None):
        """One PLMS step from grid position ``index`` (training step ``t``) given the previous eps
        estimates ``old_eps`` (oldest first, at most 3 used); returns ``(x_prev, pred_x0, e_t)``
        with ``e_t`` the eps at this step, which the caller appends to ``old_eps``. With no history
        the step is the pseudo improved Euler start at the next grid level (the original's
        ``t_next``, which is implied by ``index`` and not needed here). repeat_noise, temperature,
        noise_dropout: accepted, without effect (PLMS draws no noise)."""
        history = list(old_eps or [])[-3:]
        x_prev, pred_x0 = self.one_step(x, c, t, index, use_original_steps, quantize_denoised, score_corrector,
                                        corrector_kwargs, unconditional_guidance_scale, unconditional_conditioning,
                                        old_eps=history)
        return x_prev, pred_x0, history[-1]
