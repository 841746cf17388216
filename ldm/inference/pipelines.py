"""Sampling pipelines per task of paper Sec. 4: each maps user inputs to images in [-1, 1].

    opts = SamplingOptions(sampler="ddim", steps=50, scale=5.0)
    images = generate(model, n=4, opts=opts, cond=c, uncond=uc, generator=g)

Every pipeline runs the network under the requested precision and decodes through ``decode``
(tiled for large latents). Latent sizes follow the inputs, not the training size, which is the
convolutional sampling of paper Sec. 4.3.2 (see ``ldm.inference.sampling``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from ldm.data.masks import mask_image
from ldm.inference.checks import check_multiple, check_range, check_same_size, downsampling_factor
from ldm.inference.conditioning import encode_image, model_kind, semantic_onehot
from ldm.inference.runtime import autocast
from ldm.inference.sampling import ComposedModel, GuideModel, HighNoiseExpert, initial_noise, noise_levels, noise_to_level, sample_latents
from ldm.inference.tiling import decode
from ldm.models.diffusion.conditioning import inpainting_condition

__all__ = ["InpaintResult", "SamplingOptions", "generate", "img2img", "inpaint", "latent_size", "semantic2img",
           "superres"]


@dataclass
class SamplingOptions:
    sampler: str = "ddim"            # ddim | plms | dpm | unipc | ddpm
    steps: int = 50                  # sampler steps
    eta: float = 0.0                 # DDIM stochasticity: 0 deterministic, 1 ancestral
    scale: float = 1.0               # classifier-free guidance weight; 1 = none
    precision: str = "fp32"          # fp32 | fp16 | bf16 (autocast)
    decode_tile: Optional[int] = None  # decode in tiles of this many latent cells (None: auto)
    progress: bool = True            # per-step progress bar


def latent_size(model: Any, height: Optional[int], width: Optional[int]) -> tuple[int, int]:
    """Latent (h, w) for an output of height x width pixels (default: the training size)."""
    f = downsampling_factor(model)
    height = height or model.image_size * f
    width = width or model.image_size * f
    check_multiple("--H/--W", (height, width), f)
    return height // f, width // f


def _decode(model: Any, z: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    tile = opts.decode_tile
    if tile is None and max(z.shape[-2:]) > 2 * model.image_size:
        tile = model.image_size  # beyond twice the training size, bound the decoder's memory
    return decode(model, z, tile).clamp(-1.0, 1.0)


def _device(model: Any) -> torch.device:
    return model.alphas_cumprod.device


@torch.no_grad()
def generate(model: Any, n: int, opts: SamplingOptions, cond: Any = None, uncond: Any = None,
             size: Optional[tuple[int, int]] = None, generator: Optional[torch.Generator] = None,
             x_T: Optional[torch.Tensor] = None, noise_sampler: Optional[Callable] = None,
             expert: Optional[HighNoiseExpert] = None, guide: Optional[GuideModel] = None,
             compose: Optional[ComposedModel] = None) -> torch.Tensor:
    """n images from noise (unconditional, class or text conditioned). ``size`` is the latent (h, w);
    ``expert`` denoises the noisiest levels, ``guide`` autoguides, ``compose`` adds a second model's
    guidance (see ``sample_latents``)."""
    h, w = size or (model.image_size, model.image_size)
    shape = (n, model.channels, h, w)
    with autocast(_device(model), opts.precision):
        z = sample_latents(model, shape, cond=cond, uncond=uncond, scale=opts.scale, sampler=opts.sampler,
                           steps=opts.steps, eta=opts.eta, generator=generator, x_T=x_T, progress=opts.progress,
                           noise_sampler=noise_sampler, expert=expert, guide=guide, compose=compose)
        return _decode(model, z, opts)


@torch.no_grad()
def img2img(model: Any, init: torch.Tensor, strength: float, opts: SamplingOptions, cond: Any = None,
            uncond: Any = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """SDEdit-style translation: noise E(init) part of the way and denoise it.

    ``strength`` in (0, 1] is the fraction of the ``opts.steps`` sampler steps that are run: the
    latent is noised with q(z_t | z_0) to exactly the level where the last ``strength * steps``
    steps start (for DDIM this is the original ``stochastic_encode`` followed by ``decode``).
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"--strength must lie in (0, 1], got {strength}")
    check_multiple("--init-img", init.shape, downsampling_factor(model))
    check_range("--init-img", init, -1.0, 1.0)
    device = _device(model)
    t_enc = min(max(1, int(strength * opts.steps)), opts.steps)
    first = opts.steps - t_enc
    sigma = noise_levels(model, opts.sampler, opts.steps)[first].item()
    with autocast(device, opts.precision):
        z0 = encode_image(model, init.to(device)).float()
        z_enc = noise_to_level(z0, sigma, initial_noise(tuple(z0.shape), generator, device))
        z = sample_latents(model, tuple(z0.shape), cond=cond, uncond=uncond, scale=opts.scale, sampler=opts.sampler,
                           steps=opts.steps, eta=opts.eta, generator=generator, x_T=z_enc, progress=opts.progress,
                           first_step=first)
        return _decode(model, z, opts)


@dataclass
class InpaintResult:
    images: torch.Tensor             # (B, 3, H, W) in [-1, 1], known pixels pasted back
    latents: torch.Tensor            # the sampled latents
    known: Optional[torch.Tensor]    # mask-guided only: latent cells kept from x0 (1 = known)
    x0: Optional[torch.Tensor]       # mask-guided only: the image's latent


def _mask_batch(image: torch.Tensor, mask: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    check_same_size("--image", image, "--mask", mask)
    check_multiple("--image", image.shape, f)
    check_range("--image", image, -1.0, 1.0)
    check_range("--mask", mask, 0.0, 1.0)
    return image, (mask >= 0.5).float()


@torch.no_grad()
def inpaint(model: Any, image: torch.Tensor, mask: torch.Tensor, opts: SamplingOptions, cond: Any = None,
            uncond: Any = None, generator: Optional[torch.Generator] = None) -> InpaintResult:
    """Fill the region where ``mask`` (B, 1, H, W) is 1 (paper Sec. 4.5); known pixels are kept.

    * A concat-conditioned inpainting model: the UNet sees [z_t, E(masked image), mask] with the
      hole black and the mask in {-1, 1} at latent resolution (``inpainting_condition``), as the
      released ``inpainting_big`` and models trained here with ``concat_mask_key`` were trained; a
      concat model trained without the mask channel sees [z_t, E(masked image)].
    * Any other model: mask-guided sampling (DDIM/PLMS/DDPM with ``mask``/``x0``): latent cells
      touching no masked pixel are re-imposed from E(image) at every step and are exact at the end.
    """
    f = downsampling_factor(model)
    image, mask = _mask_batch(image, mask, f)
    device = _device(model)
    image, mask = image.to(device), mask.to(device)
    with autocast(device, opts.precision):
        if model_kind(model) == "inpainting":
            unet_in = model.model.diffusion_model.in_channels
            masked = mask_image(image, mask)  # hole black (-1), as in training and the released model
            if unet_in == model.channels + model.first_stage_model.embed_dim + 1:  # [z_t, E(masked), mask]
                c = inpainting_condition(model, masked, mask)
            else:  # a concat model trained without the mask channel
                c = model.get_learned_conditioning(masked)
            if model.channels + c.shape[1] != unet_in:
                raise ValueError(f"the UNet takes {unet_in} input channels but latent ({model.channels}) + "
                                 f"condition ({c.shape[1]}) give {model.channels + c.shape[1]}")
            shape = (image.shape[0], model.channels, *c.shape[-2:])
            z = sample_latents(model, shape, cond=c, sampler=opts.sampler, steps=opts.steps, eta=opts.eta,
                               generator=generator, progress=opts.progress)
            known = x0 = None
        else:
            x0 = encode_image(model, image).float()
            known = 1.0 - F.max_pool2d(mask, kernel_size=f, stride=f)  # any masked pixel -> regenerate cell
            z = sample_latents(model, tuple(x0.shape), cond=cond, uncond=uncond, scale=opts.scale,
                               sampler=opts.sampler, steps=opts.steps, eta=opts.eta, generator=generator,
                               mask=known, x0=x0, progress=opts.progress)
        decoded = _decode(model, z, opts)
    images = (1.0 - mask) * image + mask * decoded
    return InpaintResult(images=images, latents=z, known=known, x0=x0)


@torch.no_grad()
def superres(model: Any, low_res: torch.Tensor, opts: SamplingOptions,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Upscale (B, 3, h, w) images in [-1, 1] with a concat-conditioned SR model (paper Sec. 4.4).

    The low-resolution image is concatenated to z_t (τ_θ = identity), so the latent has the
    condition's spatial size and the output is f times larger; inputs larger than the training
    size are sampled convolutionally in one piece (Sec. 4.3.2).
    """
    check_range("low-res image", low_res, -1.0, 1.0)
    device = _device(model)
    with autocast(device, opts.precision):
        c = model.get_learned_conditioning(low_res.to(device))
        shape = (low_res.shape[0], model.channels, *c.shape[-2:])
        z = sample_latents(model, shape, cond=c, sampler=opts.sampler, steps=opts.steps, eta=opts.eta,
                           generator=generator, progress=opts.progress)
        return _decode(model, z, opts)


@torch.no_grad()
def semantic2img(model: Any, labels: torch.Tensor, n_classes: int, opts: SamplingOptions,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Images for (B, H, W) label maps with a SpatialRescaler-conditioned model (paper Sec. 4.3.2);
    maps larger than the training crops are sampled convolutionally."""
    f = downsampling_factor(model)
    check_multiple("segmentation map", labels.shape, f)
    device = _device(model)
    with autocast(device, opts.precision):
        c = model.get_learned_conditioning(semantic_onehot(labels, n_classes).to(device))
        want = (labels.shape[-2] // f, labels.shape[-1] // f)
        if tuple(c.shape[-2:]) != want:
            raise ValueError(f"the conditioner maps a {tuple(labels.shape[-2:])} label map to "
                             f"{tuple(c.shape[-2:])}, but the latent of that image is {want}")
        shape = (labels.shape[0], model.channels, *want)
        z = sample_latents(model, shape, cond=c, sampler=opts.sampler, steps=opts.steps, eta=opts.eta,
                           generator=generator, progress=opts.progress)
        return _decode(model, z, opts)
