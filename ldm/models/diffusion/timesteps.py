"""Which timesteps a training step sees: t ~ U{lo, ..., hi-1} (paper Eq. (1)), or a logit-normal
density over the same range (Esser et al. 2024, SD3, Sec. 3.1: u = sigmoid(m + s n), n ~ N(0, 1),
which spends the steps on the middle of the chain and few on its nearly clean and nearly pure-noise
ends). ``mean`` > 0 moves the mass towards the noisy end, where the content of an image is decided.

Sampling t non-uniformly reweights the objective by its density, as the loss weights w_t do
(``losses.min_snr_weights``); unlike them it also spends the network's steps where they count.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Optional

import torch

__all__ = ["TIMESTEP_SAMPLINGS", "TimestepSampler", "make_timestep_sampler"]

TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")


class TimestepSampler:
    """Draws training timesteps in ``[lo, hi)``: ``uniform``, or ``logit_normal`` with ``mean`` and ``std``."""

    def __init__(self, lo: int, hi: int, kind: str = "uniform", mean: float = 0.0, std: float = 1.0):
        if kind not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"timestep_sampling.type {kind!r} unknown; expected one of {TIMESTEP_SAMPLINGS}")
        if not 0 <= lo < hi:
            raise ValueError(f"need 0 <= lo < hi, got [{lo}, {hi})")
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"timestep_sampling needs a finite mean and a std > 0, got mean={mean}, std={std}")
        self.lo, self.hi, self.kind, self.mean, self.std = int(lo), int(hi), kind, float(mean), float(std)

    def __call__(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        if self.kind == "uniform":
            return torch.randint(self.lo, self.hi, (batch_size,), device=device).long()
        u = torch.sigmoid(self.mean + self.std * torch.randn(batch_size, device=device))
        t = self.lo + torch.floor(u * (self.hi - self.lo)).long()
        return t.clamp_(self.lo, self.hi - 1)

    def probabilities(self) -> torch.Tensor:
        """P(t) for t in [lo, hi) (float64): what a training step's timestep follows."""
        n = self.hi - self.lo
        if self.kind == "uniform":
            return torch.full((n,), 1.0 / n, dtype=torch.float64)
        edges = torch.arange(n + 1, dtype=torch.float64) / n  # u-bins of the floor
        logit = torch.logit(edges.clamp(1e-300, 1 - 1e-16))
        cdf = torch.special.ndtr((logit - self.mean) / self.std)
        cdf[0], cdf[-1] = 0.0, 1.0
        return cdf[1:] - cdf[:-1]


def make_timestep_sampler(config: Optional[Mapping[str, Any]], lo: int, hi: int,
                          path: str = "model.params.timestep_sampling") -> TimestepSampler:
    """The sampler of a ``timestep_sampling`` entry (``type``: uniform | logit_normal, ``mean``, ``std``);
    None: uniform (the paper)."""
    if config is None:
        return TimestepSampler(lo, hi)
    if not isinstance(config, Mapping):
        raise ValueError(f"{path} must be a mapping with a type (uniform | logit_normal), got {config!r}")
    unknown = sorted(set(config) - {"type", "mean", "std"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}; expected type, mean, std")
    kind = config.get("type", "uniform")
    if kind == "uniform" and ("mean" in config or "std" in config):
        raise ValueError(f"{path}: mean and std apply to type logit_normal only")
    try:
        return TimestepSampler(lo, hi, kind, float(config.get("mean", 0.0)), float(config.get("std", 1.0)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
