"""The frozen first stage seen from the diffusion model: z = E(x), x̃ = D(z) (paper Sec. 3.1).

Latents are multiplied by ``scale_factor`` before diffusion (paper Sec. 4.3.2 and App. C.1: the
signal-to-noise ratio depends on the latent scale), so decoding divides it out again.
"""
from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import nn

from ldm.models.autoencoder import VQModelInterface

__all__ = ["FirstStage", "decode_latent", "sample_latent"]

SPLIT_INPUT_REFUSAL = (
    "split_input_params (the original's patch-wise first-stage encode/decode for large images) is not "
    "supported: decode large latents tile by tile with ldm.inference.tiling.decode(model, z, tile=...) "
    "(the scripts' --decode-tile option); the UNet itself samples any latent size (paper Sec. 4.3.2)")


def sample_latent(encoder_posterior: Any) -> torch.Tensor:
    """z from an encoder output: a draw of a KL posterior, or a VQ encoder's tensor as is."""
    if isinstance(encoder_posterior, torch.Tensor):
        return encoder_posterior
    if callable(getattr(encoder_posterior, "sample", None)):  # DiagonalGaussianDistribution
        return encoder_posterior.sample()
    raise TypeError(f"first stage encoding of type {type(encoder_posterior).__name__} is neither a tensor "
                    "nor a distribution")


def mode_latent(encoder_posterior: Any) -> torch.Tensor:
    """The deterministic latent: a KL posterior's mode, or a VQ encoder's tensor as is."""
    if isinstance(encoder_posterior, torch.Tensor):
        return encoder_posterior
    return encoder_posterior.mode()


class FirstStage:
    """The frozen autoencoder with its latent scale: z = s * E(x), x = D(z / s).

    The one place ``scale_factor`` is applied (paper Sec. 4.3.2, App. C.1); ``LatentDiffusion``
    owns the value (a config number, or a buffer estimated on the first batch with
    ``scale_by_std``) and hands it over through ``LatentDiffusion.first_stage``.
    """

    def __init__(
        self,
        autoencoder: nn.Module,                 # AutoencoderKL / VQModelInterface / IdentityFirstStage
        scale_factor: float | torch.Tensor,     # s, latents are multiplied by it before diffusion
    ):
        self.autoencoder = autoencoder
        self.scale_factor = scale_factor

    def latent(self, encoder_posterior: Any) -> torch.Tensor:
        """s * z for an encoder output, z drawn from a KL posterior (the training latent)."""
        return self.scale_factor * sample_latent(encoder_posterior)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """s * E(x); ``sample=False`` takes a KL posterior's mode (deterministic, for inference)."""
        posterior = self.autoencoder.encode(x)
        return self.latent(posterior) if sample else self.scale_factor * mode_latent(posterior)

    def decode(self, z: torch.Tensor, predict_cids: bool = False, force_not_quantize: bool = False) -> torch.Tensor:
        """D(z / s), differentiable."""
        return decode_latent(self.autoencoder, z, self.scale_factor, predict_cids, force_not_quantize)

    @torch.no_grad()
    def unit_std_scale(self, x: torch.Tensor) -> torch.Tensor:
        """The scale that gives the latents of images ``x`` unit standard deviation."""
        z = self.encode(x)  # already carries the current scale
        return self.scale_factor / z.flatten().std()


def decode_latent(
    first_stage_model: nn.Module,
    z: torch.Tensor,
    scale_factor: float | torch.Tensor,
    predict_cids: bool = False,        # z holds codebook logits (B, n_embed, h, w) or indices
    force_not_quantize: bool = False,  # VQ: decode z as is, skipping the codebook lookup
) -> torch.Tensor:
    """D(z / scale_factor)."""
    if predict_cids:
        if z.dim() == 4:
            z = torch.argmax(z.exp(), dim=1).long()
        z = first_stage_model.quantize.get_codebook_entry(z, shape=None)
        z = rearrange(z, "b h w c -> b c h w").contiguous()
    z = z / scale_factor
    if isinstance(first_stage_model, VQModelInterface):
        return first_stage_model.decode(z, force_not_quantize=predict_cids or force_not_quantize)
    return first_stage_model.decode(z)
