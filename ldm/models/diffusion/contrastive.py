"""A contrastive term: push each prediction away from another sample's target (ΔFM; Stoica et al.
2025, "Contrastive Flow Matching", ICCV 2025).

Why: under a condition the regression target alone lets the flows of different conditions overlap
at intermediate noise, where the best prediction is an average over what the condition allows;
a conditional model that learns the shared layout before what sets its classes apart spends its
first thousands of steps there. ΔFM subtracts λ times the error against the target of another
pair (x̃_0, ε̃) of the batch, so that predictions are pulled to their own target and pushed from
the others':

    L = w_t ||f(x_t) - y(x_0, ε, t)||² - λ w_t ||f(x_t) - y(x̃_0, ε̃, t)||²

y is the parameterisation's target (ε, x_0 or v) at the sample's own t, w_t the model's timestep
weights (Min-SNR or 1). The negative of sample i is sample i-1 of the batch (rolled by one, so that
it is never the sample itself); a batch of one has no other sample and gets no term.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ldm.models.diffusion import parameterization as P
from ldm.models.diffusion.losses import get_loss

__all__ = ["CONTRASTIVE_KEYS", "ContrastiveLoss", "make_contrastive_loss"]

CONTRASTIVE_KEYS = ("weight",)


@dataclass(frozen=True)
class ContrastiveLoss:
    weight: float  # λ > 0; the paper uses 0.05 (below 1, so that the loss stays bounded below)

    def term(self, model: Any, model_output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
             t: torch.Tensor) -> torch.Tensor:
        """w_t-weighted error of each prediction against the target of the batch's previous sample."""
        negative = P.training_target(model, model.parameterization, x0.roll(1, 0), noise.roll(1, 0), t)
        per_sample = get_loss(model_output, negative, model.loss_type, mean=False).mean(dim=list(range(1, x0.ndim)))
        if model.snr_weights is not None:
            per_sample = model.snr_weights.to(per_sample.device)[t] * per_sample
        return per_sample.mean()

    def add(self, model: Any, loss: torch.Tensor, log: dict, prefix: str, x_t: torch.Tensor, t: torch.Tensor,
            model_output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The diffusion ``loss`` minus λ times the term; logs the term and the new total."""
        if x0.shape[0] < 2:
            return loss
        term = self.term(model, model_output, x0, noise, t)
        log[f"{prefix}/loss_contrastive"] = term.detach()
        loss = loss - self.weight * term
        log[f"{prefix}/loss"] = loss
        return loss


def make_contrastive_loss(cfg: Optional[Mapping[str, Any]],
                          path: str = "model.params.contrastive_loss") -> Optional[ContrastiveLoss]:
    """Validate ``{weight: λ}`` with 0 < λ < 1; None: no term."""
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{path} must be a mapping {{weight: λ}}, got {cfg!r}")
    unknown = sorted(set(cfg) - set(CONTRASTIVE_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; expected {list(CONTRASTIVE_KEYS)}")
    weight = cfg.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
            or not 0 < weight < 1:
        raise ValueError(f"{path}.weight must be a number in (0, 1) (the loss is unbounded below from 1 on), "
                         f"got {weight!r}")
    return ContrastiveLoss(float(weight))
