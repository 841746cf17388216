"""The frozen first stage seen from the diffusion model: z = E(x), x̃ = D(z) (paper Sec. 3.1).

Latents are multiplied by ``scale_factor`` before diffusion (paper Sec. 4.3.2 and App. C.1: the
signal-to-noise ratio depends on the latent scale), so decoding divides it out again.
"""
from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import nn

__all__ = ["decode_latent", "sample_latent"]


def sample_latent(encoder_posterior: Any) -> torch.Tensor:
    """z from an encoder output: a draw of a KL posterior, or a VQ encoder's tensor as is."""
    if isinstance(encoder_posterior, torch.Tensor):
        return encoder_posterior
    if callable(getattr(encoder_posterior, "sample", None)):  # DiagonalGaussianDistribution
        return encoder_posterior.sample()
    raise TypeError(f"first stage encoding of type {type(encoder_posterior).__name__} is neither a tensor "
                    "nor a distribution")


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
    from ldm.models.autoencoder import VQModelInterface
    if isinstance(first_stage_model, VQModelInterface):
        return first_stage_model.decode(z, force_not_quantize=predict_cids or force_not_quantize)
    return first_stage_model.decode(z)
