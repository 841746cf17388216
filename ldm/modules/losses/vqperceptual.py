"""First-stage objective shared pieces and the VQ variant (paper Sec. 3.1 and its supplement).

L = L_rec(x, D(E(x))) [pixel + LPIPS] + L_reg [codebook] + lambda * L_GAN(PatchGAN), with the
adaptive weight lambda of VQGAN (Esser et al. 2021, Eq. 7):

    lambda = disc_weight * ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + 1e-4),  G_L = last decoder layer,

clamped to [0, 1e4] and treated as a constant. The discriminator enters at global_step >= disc_start.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.discriminator.model import NLayerDiscriminator, weights_init
from ldm.modules.losses.lpips import LPIPS

__all__ = [
    "PatchGANLossBase",
    "VQLPIPSWithDiscriminator",
    "adopt_weight",
    "calculate_adaptive_weight",
    "hinge_d_loss",
    "measure_perplexity",
    "vanilla_d_loss",
]


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """``weight`` once global_step >= threshold, ``value`` before (switches the GAN term on)."""
    return value if global_step < threshold else weight


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss written with softplus: -log sigmoid(real) - log(1 - sigmoid(fake))."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


D_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "hinge": hinge_d_loss,
    "vanilla": vanilla_d_loss,
}


def measure_perplexity(predicted_indices: torch.Tensor, n_embed: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook perplexity exp(H(p)) of the index histogram p, and the number of entries used.

    Perplexity equals n_embed when all entries are used uniformly and 1 when a single one is.
    """
    flat = predicted_indices.reshape(-1).long()
    if n_embed is not None and flat.numel() and int(flat.max()) >= n_embed:
        raise ValueError(f"predicted index {int(flat.max())} is outside the codebook of size n_embed={n_embed}")
    counts = torch.bincount(flat, minlength=n_embed or 0).float()
    probs = counts / counts.sum().clamp_min(1.0)
    perplexity = torch.exp(-torch.sum(probs * torch.log(probs + 1e-10)))
    cluster_use = torch.sum(counts > 0)
    return perplexity, cluster_use


def calculate_adaptive_weight(
    nll_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    disc_weight: float,
) -> torch.Tensor:
    """VQGAN Eq. 7: balance the GAN gradient against the reconstruction gradient at G_L."""
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
    return torch.clamp(d_weight, 0.0, 1e4).detach() * disc_weight


PixelLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _pixel_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.abs(x - y)


def _pixel_l2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y) ** 2


def pixel_loss_fn(name: str) -> PixelLoss:
    """The per-pixel reconstruction term named by a loss config's ``pixel_loss``: "l1" or "l2"."""
    if name not in ("l1", "l2"):
        raise ValueError(f"pixel_loss={name!r} is not supported; choose 'l1' or 'l2'")
    return _pixel_l1 if name == "l1" else _pixel_l2


class PatchGANLossBase(nn.Module):
    """What the KL and VQ objectives share: the pixel + LPIPS reconstruction term, the PatchGAN
    discriminator, its loss and the adaptive weighting. Its parameters are accepted by both
    (the subclasses forward them), with the original defaults."""

    def __init__(
        self,
        disc_start: int,                  # global step at which the GAN term switches on
        pixelloss_weight: float = 1.0,    # kept for config compatibility (the original ignores it too)
        disc_num_layers: int = 3,
        disc_in_channels: int = 3,
        disc_factor: float = 1.0,         # GAN term factor once switched on
        disc_weight: float = 1.0,         # multiplies the adaptive weight
        perceptual_weight: float = 1.0,   # 0 disables LPIPS (and its VGG16 weights)
        use_actnorm: bool = False,
        disc_conditional: bool = False,
        disc_ndf: int = 64,               # discriminator base width
        disc_loss: str = "hinge",         # "hinge" or "vanilla"
        lpips_pretrained: bool = True,    # False: random VGG trunk (tests only)
    ):
        super().__init__()
        if disc_loss not in D_LOSSES:
            raise ValueError(f"disc_loss={disc_loss!r} is not supported; choose one of {sorted(D_LOSSES)}")
        self.discriminator = NLayerDiscriminator(input_nc=disc_in_channels, ndf=disc_ndf, n_layers=disc_num_layers,
                                                 use_actnorm=use_actnorm).apply(weights_init)
        self.discriminator_iter_start = disc_start
        self.disc_loss = D_LOSSES[disc_loss]
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight
        self.disc_conditional = disc_conditional
        self.pixel_weight = pixelloss_weight
        self.perceptual_loss = LPIPS(pretrained=lpips_pretrained).eval()
        self.perceptual_weight = perceptual_weight

    def reconstruction_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor,
                            pixel_loss: PixelLoss = _pixel_l1) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-pixel pixel_loss + perceptual_weight * LPIPS, the LPIPS term; zero when disabled)."""
        inputs, reconstructions = inputs.contiguous(), reconstructions.contiguous()
        rec_loss = pixel_loss(inputs, reconstructions)
        p_loss = torch.zeros((), device=inputs.device)
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(inputs, reconstructions)
            rec_loss = rec_loss + self.perceptual_weight * p_loss
        return rec_loss, p_loss

    def _logits(self, x: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
        if cond is None:
            if self.disc_conditional:
                raise ValueError("disc_conditional=True: pass `cond` to the loss")
            return self.discriminator(x.contiguous())
        if not self.disc_conditional:
            raise ValueError("`cond` was given but the loss was built with disc_conditional=False")
        return self.discriminator(torch.cat((x.contiguous(), cond), dim=1))

    def generator_adversarial(self, nll_loss: torch.Tensor, reconstructions: torch.Tensor,
                              cond: Optional[torch.Tensor], global_step: int,
                              last_layer: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(g_loss, adaptive weight, disc factor) for the generator update (optimizer_idx 0)."""
        g_loss = -torch.mean(self._logits(reconstructions, cond))
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        d_weight = torch.zeros((), device=reconstructions.device)
        # The weight is only needed once the GAN term is on; skipping it before disc_start saves
        # two backward passes per step.
        if disc_factor > 0.0:
            can_differentiate = torch.is_grad_enabled() and nll_loss.requires_grad and g_loss.requires_grad
            if can_differentiate:
                if last_layer is None:
                    raise ValueError("the adaptive discriminator weight needs `last_layer` (the decoder's last "
                                     "weight, model.get_last_layer())")
                d_weight = calculate_adaptive_weight(nll_loss, g_loss, last_layer, self.discriminator_weight)
            elif self.training:
                raise RuntimeError("cannot compute the adaptive discriminator weight: gradients are disabled "
                                   "during a training-mode loss evaluation")
        return g_loss, d_weight, disc_factor

    @staticmethod
    def adversarial_log(split: str, d_weight: torch.Tensor, disc_factor: float,
                        g_loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """The GAN entries that close the generator step's log."""
        return {f"{split}/d_weight": d_weight.detach(),
                f"{split}/disc_factor": torch.tensor(disc_factor),
                f"{split}/g_loss": g_loss.detach().mean()}

    def discriminator_step(self, optimizer_idx: int, inputs: torch.Tensor, reconstructions: torch.Tensor,
                           cond: Optional[torch.Tensor], global_step: int,
                           split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Discriminator update (optimizer_idx 1): real inputs vs detached reconstructions."""
        if optimizer_idx != 1:
            raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator), got {optimizer_idx}")
        logits_real = self._logits(inputs.detach(), cond)
        logits_fake = self._logits(reconstructions.detach(), cond)
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
        log = {f"{split}/disc_loss": d_loss.clone().detach().mean(),
               f"{split}/logits_real": logits_real.detach().mean(),
               f"{split}/logits_fake": logits_fake.detach().mean()}
        return d_loss, log


class VQLPIPSWithDiscriminator(PatchGANLossBase):
    """Objective of the VQ-regularised autoencoder: pixel + LPIPS + codebook + adaptive PatchGAN.

    Takes :class:`PatchGANLossBase`'s parameters (disc_*, perceptual_weight, ...) besides its own.
    forward keeps the original argument order (codebook_loss first).
    """

    def __init__(
        self,
        disc_start: int,                    # global step at which the GAN term switches on
        codebook_weight: float = 1.0,       # weight of the quantiser loss
        n_classes: Optional[int] = None,    # codebook size, for perplexity logging
        perceptual_loss: str = "lpips",
        pixel_loss: str = "l1",             # "l1" or "l2"
        **kwargs: Any,                      # PatchGANLossBase's parameters
    ):
        if perceptual_loss != "lpips":
            raise ValueError(f"perceptual_loss={perceptual_loss!r} is not supported; only 'lpips' is")
        pixel = pixel_loss_fn(pixel_loss)
        super().__init__(disc_start, **kwargs)
        self.codebook_weight = codebook_weight
        self.pixel_loss = pixel
        self.n_classes = n_classes

    def forward(
        self,
        codebook_loss: Optional[torch.Tensor],
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        optimizer_idx: int,
        global_step: int,
        last_layer: Optional[torch.Tensor] = None,
        cond: Optional[torch.Tensor] = None,
        split: str = "train",
        predicted_indices: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if optimizer_idx != 0:
            return self.discriminator_step(optimizer_idx, inputs, reconstructions, cond, global_step, split)
        if codebook_loss is None:
            codebook_loss = torch.zeros((), device=inputs.device)
        rec_loss, p_loss = self.reconstruction_loss(inputs, reconstructions, self.pixel_loss)
        nll_loss = torch.mean(rec_loss)

        g_loss, d_weight, disc_factor = self.generator_adversarial(nll_loss, reconstructions, cond, global_step,
                                                                   last_layer)
        loss = nll_loss + d_weight * disc_factor * g_loss + self.codebook_weight * codebook_loss.mean()
        log = {
            f"{split}/total_loss": loss.clone().detach().mean(),
            f"{split}/quant_loss": codebook_loss.detach().mean(),
            f"{split}/nll_loss": nll_loss.detach().mean(),
            f"{split}/rec_loss": rec_loss.detach().mean(),
            f"{split}/p_loss": p_loss.detach().mean(),
            **self.adversarial_log(split, d_weight, disc_factor, g_loss),
        }
        if predicted_indices is not None:
            with torch.no_grad():
                perplexity, cluster_usage = measure_perplexity(predicted_indices, self.n_classes)
            log[f"{split}/perplexity"] = perplexity
            log[f"{split}/cluster_usage"] = cluster_usage
        return loss, log
