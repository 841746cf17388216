"""DPMSolverSampler: the original class API over ``sampling.sample_dpmpp_2m`` (Lu et al. 2022b).

Configured as the original: DPM-Solver++ (data prediction), multistep, order 2, time-uniform
steps from t = T-1 to t = 0, lower order at the final step when S < 15.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ldm.models.diffusion.sampling import dpm_solver_sigmas, sample_dpmpp_2m
from ldm.models.diffusion.sampling.legacy import CompVisSampler, build_denoiser

__all__ = ["DPMSolverSampler"]


class DPMSolverSampler(CompVisSampler):
    """``DPMSolverSampler(model).sample(S, batch_size, shape, conditioning, ...)``.

    DPM-Solver++ is deterministic and has no masked mode: eta, mask/x0, quantize_x0,
    score_corrector, temperature and noise_dropout (which the original silently ignored) raise a
    ValueError when set to anything but their defaults.
    """

    def __init__(
        self,
        model: Any,     # DDPM / LatentDiffusion
        **kwargs: Any,  # accepted and ignored, as the original
    ):
        super().__init__(model)

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: tuple, conditioning: Any = None, callback: Optional[Callable] = None,
               normals_sequence: Any = None, img_callback: Optional[Callable] = None, quantize_x0: bool = False,
               eta: float = 0.0, mask: Optional[torch.Tensor] = None, x0: Optional[torch.Tensor] = None,
               temperature: float = 1.0, noise_dropout: float = 0.0, score_corrector: Any = None,
               corrector_kwargs: Optional[dict] = None, verbose: bool = True, x_T: Optional[torch.Tensor] = None,
               log_every_t: int = 100, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None, **kwargs: Any):
        """Returns ``(samples, {"x_inter": [...], "pred_x0": [...]})``; other keyword arguments
        are accepted and ignored (with a warning), as by the original."""
        unsupported = {"normals_sequence": normals_sequence is not None, "quantize_x0": quantize_x0,
                       "eta": eta != 0.0, "mask": mask is not None, "x0": x0 is not None,
                       "temperature": temperature != 1.0, "noise_dropout": noise_dropout != 0.0,
                       "score_corrector": score_corrector is not None}
        bad = [name for name, is_set in unsupported.items() if is_set]
        if bad:
            raise ValueError(f"DPMSolverSampler does not support {', '.join(bad)}; use DDIMSampler for these")
        self.ignore_extra(kwargs, None)
        self.check_batch(conditioning, batch_size)
        img = self.initial_noise((batch_size, *shape), x_T)
        sigmas = dpm_solver_sigmas(self.model.alphas_cumprod, S, "time_uniform")
        denoiser = build_denoiser(self.model, unconditional_guidance_scale, unconditional_conditioning)
        return self.run(sample_dpmpp_2m, sigmas, img, conditioning, denoiser, callback=callback,
                        img_callback=img_callback, log_every_t=log_every_t, verbose=verbose,
                        lower_order_final=True)
