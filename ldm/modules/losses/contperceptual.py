"""Objective of the KL-regularised autoencoder (paper Sec. 3.1, "KL-reg.").

L = sum(|x - x~| + w_p LPIPS(x, x~)) / exp(s) + s   (Gaussian/Laplace NLL with a learned scale s = logvar)
  (|x - x~|^2 with pixel_loss "l2", which optimises PSNR directly)
  + kl_weight * KL(q(z|x) || N(0, I)) + lambda * disc_factor * L_GAN,   lambda adaptive (VQGAN Eq. 7).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.modules.losses.vqperceptual import PatchGANLossBase, pixel_loss_fn

__all__ = ["DummyLoss", "LPIPSWithDiscriminator"]


class DummyLoss(nn.Identity):
    """Placeholder loss of inference-only configs (inpainting_big): no parameters, identity forward.

    A model built with it can encode and decode but not train.
    """


class LPIPSWithDiscriminator(PatchGANLossBase):
    """Objective of the KL-regularised autoencoder (module docstring).

    Takes :class:`~ldm.modules.losses.vqperceptual.PatchGANLossBase`'s parameters (disc_*,
    perceptual_weight, ...) besides its own.
    """

    def __init__(
        self,
        disc_start: int,                  # global step at which the GAN term switches on
        logvar_init: float = 0.0,         # initial learned log-scale s of the reconstruction NLL
        kl_weight: float = 1.0,           # weight of the KL term (1e-6 in the released models)
        pixel_loss: str = "l1",           # "l1" (the paper's) or "l2", as VQLPIPSWithDiscriminator's
        **kwargs: Any,                    # PatchGANLossBase's parameters
    ):
        pixel = pixel_loss_fn(pixel_loss)
        super().__init__(disc_start, **kwargs)
        self.pixel_loss = pixel
        self.kl_weight = kl_weight
        self.logvar = nn.Parameter(torch.ones(size=()) * logvar_init)

    def forward(
        self,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        posteriors: DiagonalGaussianDistribution,
        optimizer_idx: int,
        global_step: int,
        last_layer: Optional[torch.Tensor] = None,
        cond: Optional[torch.Tensor] = None,
        split: str = "train",
        weights: Optional[torch.Tensor] = None,  # per-pixel weights of the NLL
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if optimizer_idx != 0:
            return self.discriminator_step(optimizer_idx, inputs, reconstructions, cond, global_step, split)
        rec_loss, _ = self.reconstruction_loss(inputs, reconstructions, self.pixel_loss)

        batch = inputs.shape[0]
        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar
        weighted_nll_loss = nll_loss if weights is None else weights * nll_loss
        weighted_nll_loss = torch.sum(weighted_nll_loss) / batch
        nll_loss = torch.sum(nll_loss) / batch
        kl_loss = torch.sum(posteriors.kl()) / batch

        g_loss, d_weight, disc_factor = self.generator_adversarial(nll_loss, reconstructions, cond, global_step,
                                                                   last_layer)
        loss = weighted_nll_loss + self.kl_weight * kl_loss + d_weight * disc_factor * g_loss
        log = {
            f"{split}/total_loss": loss.clone().detach().mean(),
            f"{split}/logvar": self.logvar.detach(),
            f"{split}/kl_loss": kl_loss.detach().mean(),
            f"{split}/nll_loss": nll_loss.detach().mean(),
            f"{split}/rec_loss": rec_loss.detach().mean(),
            **self.adversarial_log(split, d_weight, disc_factor, g_loss),
        }
        return loss, log
