"""Stand-in diffusion models for sampler tests: the CompVis DDPM interface around an analytic network.

``AnalyticModel`` predicts eps = E[n | z_t] for data x0 ~ N(0, data_std^2 I) (the exact Gaussian
denoiser, so samples stay at data scale) plus tanh(A z_t + b t/T + w * pooled(cond)) * strength,
smooth in z_t and t, and outputs it in any parameterisation (eps / x0 / v) so that all three define
the same denoiser.
Fractional timesteps use the same log sqrt(abar) interpolation as the samplers' adapter.
"""
from __future__ import annotations

from typing import Any

import torch

SD_SCHEDULE = (0.00085, 0.012)   # Stable Diffusion v1 "scaled linear"
LDM_SCHEDULE = (0.0015, 0.0195)  # LDM configs


def sqrt_linear_betas(num_timesteps: int = 1000, linear_start: float = 0.00085,
                      linear_end: float = 0.012) -> torch.Tensor:
    """The original ``make_beta_schedule("linear")``: linear in sqrt(beta), float64."""
    return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2


class AnalyticModel(torch.nn.Module):
    def __init__(self, channels: int = 4, parameterization: str = "eps", schedule: tuple = SD_SCHEDULE,
                 num_timesteps: int = 1000, seed: int = 0, strength: float = 0.2, data_std: float = 1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        betas = sqrt_linear_betas(num_timesteps, *schedule)
        ac = torch.cumprod(1.0 - betas, 0)
        self.num_timesteps = num_timesteps
        self.strength, self.data_std = strength, data_std
        self.parameterization = parameterization
        self.register_buffer("betas", betas.float())
        self.register_buffer("alphas_cumprod", ac.float())
        self.register_buffer("alphas_cumprod_prev", torch.cat([ac.new_ones(1), ac[:-1]]).float())
        self.register_buffer("sqrt_alphas_cumprod", ac.sqrt().float())
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1 - ac).sqrt().float())
        self.register_buffer("A", torch.randn(channels, channels, generator=g) / channels ** 0.5)
        self.register_buffer("b", torch.randn(channels, generator=g))
        self.register_buffer("w", torch.randn(channels, generator=g))
        self.calls = 0

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        ac = self.alphas_cumprod.double()
        if not t.is_floating_point():
            return ac[t]
        lo = t.double().floor().long().clamp(max=self.num_timesteps - 2)
        w = t.double() - lo
        log_a = ac.log()
        return (log_a[lo] * (1 - w) + log_a[lo + 1] * w).exp()

    @staticmethod
    def pooled(cond: Any, batch: int, like: torch.Tensor) -> torch.Tensor:
        """One scalar per batch element from any conditioning layout (spatial c_concat included)."""
        if cond is None:
            return like.new_zeros(batch)
        if isinstance(cond, torch.Tensor):
            return cond.reshape(batch, -1).mean(1).to(like)
        if isinstance(cond, dict):
            return sum(AnalyticModel.pooled(v, batch, like) * (k + 1) for k, v in
                       enumerate(cond[key] for key in sorted(cond)))
        return sum(AnalyticModel.pooled(c, batch, like) * (k + 1) for k, c in enumerate(cond))

    def eps(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        h = torch.einsum("oc,bchw->bohw", self.A.to(x), x)
        h = h + self.b.to(x)[None, :, None, None] * (t.to(x.dtype) / self.num_timesteps)[:, None, None, None]
        h = h + self.w.to(x)[None, :, None, None] * self.pooled(cond, x.shape[0], x)[:, None, None, None]
        a = self.abar(t).to(x.dtype)[:, None, None, None]
        gaussian = (1 - a).sqrt() * x / (a * self.data_std ** 2 + 1 - a)
        return gaussian + self.strength * torch.tanh(h)

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        assert t.shape == (x_noisy.shape[0],), t.shape
        self.calls += 1
        eps = self.eps(x_noisy, t, cond)
        if self.parameterization == "eps":
            return eps
        a = self.abar(t).to(x_noisy.dtype)[:, None, None, None]
        x0 = (x_noisy - (1 - a).sqrt() * eps) / a.sqrt()
        if self.parameterization == "x0":
            return x0
        return a.sqrt() * eps - (1 - a).sqrt() * x0  # v (Salimans & Ho 2022)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t][:, None, None, None]
        return a.sqrt() * x_start + (1 - a).sqrt() * noise


class OracleModel(AnalyticModel):
    """Knows x0 and the noise: returns the exact eps / x0 / v of its input, for adapter tests."""

    def __init__(self, x0: torch.Tensor, noise: torch.Tensor, parameterization: str):
        super().__init__(channels=x0.shape[1], parameterization=parameterization)
        self.x0_true, self.noise_true = x0, noise

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        out = {"eps": self.noise_true, "x0": self.x0_true}
        a = self.alphas_cumprod[t][:, None, None, None]
        out["v"] = a.sqrt() * self.noise_true - (1 - a).sqrt() * self.x0_true
        return out[self.parameterization]
