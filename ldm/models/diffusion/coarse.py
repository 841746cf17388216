"""A coarse x_0 term: the error of the x_0 estimate at a lower resolution, weighted alike at every
timestep (after the multiscale loss of Hoogeboom et al. 2023, "simple diffusion", Sec. 3.3).

Why: an image's colours and layout are its low frequencies, which the forward process destroys
last, so a condition has to supply them at the noisiest timesteps. ε-, v- and Min-SNR-weighted
losses weigh the x_0 error there by about SNR (1e-3 to 1e-2), and a conditional model learns to take
its colours from the starting noise (docs/reproduction.md, "Demo, seventeenth round"). Raising the
whole x_0 error's weight there (``snr_floor``) also weighs the fine detail, which no model can know
at those levels, and costs the shapes; this term weighs only the average over pool x pool cells.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ldm.models.diffusion.parameterization import model_output_to_x0

__all__ = ["COARSE_KEYS", "CoarseX0Loss", "make_coarse_x0_loss"]

COARSE_KEYS = ("weight", "pool")


@dataclass(frozen=True)
class CoarseX0Loss:
    weight: float  # λ > 0, relative to the diffusion loss
    pool: int      # side of the cells averaged (latent cells); 1 is the plain x_0 error

    def term(self, x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the cell averages of the x_0 estimate, over the whole batch."""
        return F.mse_loss(F.avg_pool2d(x0_pred, self.pool), F.avg_pool2d(x0, self.pool))

    def add(self, model: Any, loss: torch.Tensor, log: dict, prefix: str, x_t: torch.Tensor, t: torch.Tensor,
            model_output: torch.Tensor, x0: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The diffusion ``loss`` plus λ times the term on the x_0 estimate that ``model_output`` implies
        (under ``model``'s parameterisation and schedule); logs the term and the new total. ``noise`` is
        unused (the signature of every extra term, ``ldm.models.diffusion.contrastive``)."""
        x0_pred = model_output_to_x0(model, model.parameterization, x_t, t, model_output)
        coarse = self.term(x0_pred, x0)
        log[f"{prefix}/loss_coarse"] = coarse.detach()
        loss = loss + self.weight * coarse
        log[f"{prefix}/loss"] = loss
        return loss


def make_coarse_x0_loss(cfg: Optional[Mapping[str, Any]], image_size: int,
                        path: str = "model.params.coarse_x0_loss") -> Optional[CoarseX0Loss]:
    """Validate ``{weight: λ, pool: k}`` (k divides the latent side ``image_size``); None: no term."""
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{path} must be a mapping {{weight: λ, pool: k}}, got {cfg!r}")
    unknown = sorted(set(cfg) - set(COARSE_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; expected {list(COARSE_KEYS)}")
    weight, pool = cfg.get("weight"), cfg.get("pool")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"{path}.weight must be a number > 0, got {weight!r}")
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1 or image_size % pool:
        raise ValueError(f"{path}.pool must be a whole number >= 1 dividing the latent side {image_size}, "
                         f"got {pool!r}")
    return CoarseX0Loss(float(weight), pool)
