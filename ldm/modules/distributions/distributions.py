"""Diagonal Gaussian posterior q(z|x) of the KL-regularised autoencoder (paper Sec. 3.1).

The encoder predicts (mean, log-variance) per latent element; the KL term towards N(0, I) is the
"slight KL-penalty" that keeps the latent space from having arbitrarily high variance.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

__all__ = ["DiagonalGaussianDistribution", "normal_kl"]


class DiagonalGaussianDistribution:
    """N(mean, diag(exp(logvar))) built from ``parameters`` = cat([mean, logvar], dim=1)."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        if parameters.ndim < 2 or parameters.shape[1] % 2 != 0:
            raise ValueError(
                f"parameters must have an even channel dimension (mean and log-variance), got shape {tuple(parameters.shape)}")
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        # Clamp as the original does so exp() cannot overflow or collapse to 0.
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Reparameterised sample mean + std * eps, eps ~ N(0, I) drawn on the parameters' device."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: Optional["DiagonalGaussianDistribution"] = None) -> torch.Tensor:
        """KL(self || other) per batch element, summed over C, H, W; other=None means N(0, I)."""
        if self.deterministic:
            return torch.tensor([0.0], device=self.mean.device)
        dims = list(range(1, self.mean.ndim))
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=dims,
        )

    def nll(self, sample: torch.Tensor, dims: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
        """Negative log-likelihood of ``sample`` under this Gaussian, summed over ``dims``."""
        if self.deterministic:
            return torch.tensor([0.0], device=self.mean.device)
        log_two_pi = math.log(2.0 * math.pi)
        return 0.5 * torch.sum(log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var, dim=list(dims))


def normal_kl(
    mean1: Union[torch.Tensor, float],
    logvar1: Union[torch.Tensor, float],
    mean2: Union[torch.Tensor, float],
    logvar2: Union[torch.Tensor, float],
) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))); scalars broadcast."""
    ref = next((x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, torch.Tensor)), None)
    if ref is None:
        raise TypeError("normal_kl needs at least one tensor argument")
    logvar1, logvar2 = (x if isinstance(x, torch.Tensor) else torch.tensor(x, device=ref.device, dtype=ref.dtype)
                        for x in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))
