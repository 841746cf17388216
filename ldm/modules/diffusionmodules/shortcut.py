"""Parameter-free paths between pixels and latents ("residual autoencoding", Chen et al. 2024,
Deep Compression Autoencoder, Sec. 3.2).

The encoder's mean adds ``space_to_channel_average(x)`` (for 3 latent channels at f=2: the image
average-pooled 2x2) and the decoder's output adds ``channel_to_space_duplicate(z)`` (there: z
upsampled by nearest neighbour), so both networks learn residuals around a downsampled image
instead of first having to learn to pass the image through. A short training run reaches a far
higher reconstruction PSNR this way (docs/reproduction.md, "Demo, fourth round").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["channel_to_space_duplicate", "check_shortcut", "space_to_channel_average"]


def check_shortcut(image_channels: int, latent_channels: int, factor: int) -> None:
    """Raise ValueError unless ``image_channels * factor**2`` splits evenly into ``latent_channels``
    groups (the encoder averages each group, the decoder duplicates each latent channel into one)."""
    if factor < 1 or factor & (factor - 1):
        raise ValueError(f"downsampling factor {factor} is not a power of two")
    if (image_channels * factor ** 2) % latent_channels:
        raise ValueError(f"{image_channels} image channels x {factor}^2 pixels per latent cell = "
                         f"{image_channels * factor ** 2} values do not split evenly into {latent_channels} latent "
                         "channels")


def _sub_grid(image_channels: int, latent_channels: int, factor: int) -> int:
    """k when the latent holds each image channel on a k x k grid per cell (latent_channels =
    image_channels * k^2, k dividing f): then the shortcut keeps 2-D blocks, e.g. f=4 with 12
    channels carries the 2x2-average-pooled image's four quadrants. 0 otherwise."""
    if latent_channels % image_channels:
        return 0
    k = math.isqrt(latent_channels // image_channels)
    return k if k * k * image_channels == latent_channels and factor % k == 0 else 0


def space_to_channel_average(x: torch.Tensor, factor: int, channels: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, channels, H/f, W/f). With channels = C k^2 (k dividing f): average
    pooling by f/k, then pixel_unshuffle by k. Otherwise DC-AE's layout: each f x f block's C*f^2
    values (pixel_unshuffle order: channel-major) averaged in ``channels`` consecutive groups."""
    k = _sub_grid(x.shape[1], channels, factor)
    if k:
        pooled = F.avg_pool2d(x, factor // k) if factor > k else x
        return F.pixel_unshuffle(pooled, k) if k > 1 else pooled
    h = F.pixel_unshuffle(x, factor) if factor > 1 else x
    b, c, height, width = h.shape
    return h.reshape(b, channels, c // channels, height, width).mean(dim=2)


def channel_to_space_duplicate(z: torch.Tensor, factor: int, channels: int) -> torch.Tensor:
    """(B, c, h, w) -> (B, channels, h*f, w*f): the inverse layout of ``space_to_channel_average``
    (pixel_shuffle by k, then nearest upsampling; or each latent channel repeated over its group,
    then pixel_shuffle)."""
    k = _sub_grid(channels, z.shape[1], factor)
    if k:
        h = F.pixel_shuffle(z, k) if k > 1 else z
        return F.interpolate(h, scale_factor=factor // k, mode="nearest") if factor > k else h
    h = z.repeat_interleave(channels * factor ** 2 // z.shape[1], dim=1)
    return F.pixel_shuffle(h, factor) if factor > 1 else h
