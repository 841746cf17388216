"""An ensemble of expert denoisers split by noise level (Balaji et al. 2022, eDiff-I, Sec. 4).

One denoiser answers above a noise level, another at or below it. Each expert brings its own
sampler ``extra_args`` (its own conditioning), because experts trained apart have their own
condition encoders; the sampler's ``extra_args`` are not used. The experts must share the latent
space and noise schedule: both return x0 estimates of the same x.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from ._common import Denoiser

__all__ = ["NoiseLevelExperts"]


class NoiseLevelExperts:
    """D(x, sigma) = high(x, sigma) where sigma > ``sigma_switch``, else low(x, sigma)."""

    def __init__(
        self,
        high: Denoiser,                               # expert of the noisiest levels
        low: Denoiser,                                # expert of the rest
        sigma_switch: float,                          # levels above it go to ``high``
        high_args: Optional[Mapping[str, Any]] = None,  # extra_args for ``high`` (e.g. {"cond": c})
        low_args: Optional[Mapping[str, Any]] = None,   # extra_args for ``low``
    ):
        if not (isinstance(sigma_switch, (int, float)) and sigma_switch >= 0):
            raise ValueError(f"sigma_switch must be a number >= 0, got {sigma_switch!r}")
        self.high, self.low = high, low
        self.sigma_switch = float(sigma_switch)
        self.high_args, self.low_args = dict(high_args or {}), dict(low_args or {})
        self.calls = {"high": 0, "low": 0}  # how often each expert answered: shows where the switch fell

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_sampler_args: Any) -> torch.Tensor:
        above = torch.as_tensor(sigma).reshape(-1) > self.sigma_switch
        if above.numel() > 1 and bool(above.any()) != bool(above.all()):
            # Conditioning of any layout cannot be split per sample; every sampler here calls with one level.
            raise ValueError("NoiseLevelExperts needs one noise level per call; this batch straddles "
                             f"sigma_switch={self.sigma_switch}")
        if bool(above.all()):
            self.calls["high"] += 1
            return self.high(x, sigma, **self.high_args)
        self.calls["low"] += 1
        return self.low(x, sigma, **self.low_args)
