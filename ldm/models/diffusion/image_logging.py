"""Images a diffusion model logs during training: inputs, reconstructions, conditions, the forward
diffusion row, samples (DDIM or ancestral, optionally with classifier-free guidance), in- and
outpainting, and progressive denoising. Kept out of the model classes; they only delegate here.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from einops import rearrange
from torchvision.utils import make_grid
from tqdm import tqdm

from ldm.models.autoencoder import AutoencoderKL, IdentityFirstStage
from ldm.models.diffusion.conditioning import split_inpainting_condition
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.util import isimage, ismap, log_txt_as_img

__all__ = ["diffusion_row", "log_images_ddpm", "log_images_ldm", "rows_to_grid", "sample_log", "to_rgb"]


def rows_to_grid(samples: list[torch.Tensor]) -> torch.Tensor:
    """Steps x batch images -> one grid with a row per batch element."""
    stacked = torch.stack(samples)  # n_steps, b, c, h, w
    grid = rearrange(stacked, "n b c h w -> (b n) c h w")
    return make_grid(grid, nrow=stacked.shape[0])


def _logged_steps(model: Any) -> list[int]:
    return [t for t in range(model.num_timesteps) if t % model.log_every_t == 0 or t == model.num_timesteps - 1]


def diffusion_row(model: Any, x_start: torch.Tensor, decode=None) -> torch.Tensor:
    """q(x_t | x_0) at the logged timesteps: how the forward process destroys the input."""
    rows = []
    for t in _logged_steps(model):
        ts = torch.full((x_start.shape[0],), t, device=x_start.device, dtype=torch.long)
        x_t = model.q_sample(x_start=x_start, t=ts, noise=torch.randn_like(x_start))
        rows.append(decode(x_t) if decode is not None else x_t)
    return rows_to_grid(rows)


def _select(log: dict, return_keys: Optional[list[str]]) -> dict:
    if not return_keys or not set(log).intersection(return_keys):
        return log
    return {k: log[k] for k in return_keys if k in log}


@torch.no_grad()
def log_images_ddpm(model: Any, batch: dict, N: int = 8, n_row: int = 2, sample: bool = True,
                    return_keys: Optional[list[str]] = None) -> dict:
    x = model.get_input(batch, model.first_stage_key)
    N, n_row = min(x.shape[0], N), min(x.shape[0], n_row)
    x = x.to(model.device)[:N]
    log = {"inputs": x, "diffusion_row": diffusion_row(model, x[:n_row])}
    if sample:
        with model.ema_scope("Plotting"):
            samples, denoise_row = model.sample(batch_size=N, return_intermediates=True)
        log["samples"] = samples
        log["denoise_row"] = rows_to_grid(denoise_row)
    return _select(log, return_keys)


def to_rgb(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Show a many-channel map (e.g. segmentation) through a fixed random projection to RGB."""
    colorize = getattr(model, "colorize", None)
    if colorize is None or colorize.shape[1] != x.shape[1]:
        model.colorize = colorize = torch.randn(3, x.shape[1], 1, 1).to(x)
    x = torch.nn.functional.conv2d(x.float(), weight=colorize.to(x))
    return 2.0 * (x - x.min()) / (x.max() - x.min()) - 1.0


def _conditioning_images(model: Any, batch: dict, c: Any, xc: Any, size: tuple[int, int]) -> dict:
    log = {}
    if getattr(model, "concat_mask_key", None) is not None:  # inpainting: [τ(masked image), mask↓]
        c, log["conditioning_mask"] = split_inpainting_condition(c)
    if callable(getattr(model.cond_stage_model, "decode", None)):
        log["conditioning"] = model.cond_stage_model.decode(c)
    elif model.cond_stage_key in ("caption", "txt"):
        log["conditioning"] = log_txt_as_img(size, list(batch[model.cond_stage_key]))
    elif model.cond_stage_key == "class_label":
        labels = batch.get("human_label", [str(int(i)) for i in batch["class_label"]])
        log["conditioning"] = log_txt_as_img(size, list(labels))
    elif isimage(xc):
        log["conditioning"] = xc
    if ismap(xc):
        log["original_conditioning"] = to_rgb(model, xc)
    return log


def _is_vq(first_stage: Any) -> bool:
    return hasattr(first_stage, "quantize") and not isinstance(first_stage, (AutoencoderKL, IdentityFirstStage))


def _decode_rows(model: Any, samples: Any, desc: str = "") -> torch.Tensor:
    if isinstance(samples, dict):  # DDIM intermediates
        samples = samples["x_inter"]
    decoded = [model.decode_first_stage(z.to(model.device)) for z in tqdm(samples, desc=desc, disable=not desc)]
    return rows_to_grid(decoded)


@torch.no_grad()
def sample_log(model: Any, cond: Any, batch_size: int, ddim: bool, ddim_steps: Optional[int], **kwargs):
    """Samples (and intermediates) with DDIM when ``ddim``, else the full ancestral chain."""
    if ddim:
        shape = (model.channels, model.image_size, model.image_size)
        if "quantize_denoised" in kwargs:
            kwargs["quantize_x0"] = kwargs.pop("quantize_denoised")
        return DDIMSampler(model).sample(ddim_steps, batch_size, shape, cond, verbose=False, **kwargs)
    kwargs.pop("eta", None)
    guidance = kwargs.pop("unconditional_guidance_scale", 1.0)
    kwargs.pop("unconditional_conditioning", None)
    if guidance != 1.0:
        raise ValueError("classifier-free guidance needs the DDIM sampler (ddim_steps=None disables it)")
    return model.sample(cond=cond, batch_size=batch_size, return_intermediates=True, **kwargs)


@torch.no_grad()
def log_images_ldm(model: Any, batch: dict, N: int = 8, n_row: int = 4, sample: bool = True,
                   ddim_steps: Optional[int] = 50, ddim_eta: float = 1.0, return_keys: Optional[list[str]] = None,
                   quantize_denoised: bool = True, inpaint: bool = False, plot_denoise_rows: bool = False,
                   plot_progressive_rows: bool = False, plot_diffusion_rows: bool = False,
                   unconditional_guidance_scale: float = 1.0) -> dict:
    """The grids of one logging call. Cheap by default (training pays for them): DDIM with 50 steps;
    the in-/outpainting, forward-diffusion and progressive (1000 ancestral steps) rows only when
    asked for (``inpaint``, ``plot_diffusion_rows``, ``plot_progressive_rows``)."""
    use_ddim = ddim_steps is not None
    z, c, x, xrec, xc = model.get_input(batch, model.first_stage_key, return_first_stage_outputs=True,
                                        force_c_encode=True, return_original_cond=True, bs=N)
    N, n_row = min(x.shape[0], N), min(x.shape[0], n_row)
    log = {"inputs": x, "reconstruction": xrec}
    if model.model.conditioning_key is not None:
        log.update(_conditioning_images(model, batch, c, xc, (x.shape[2], x.shape[3])))
    if plot_diffusion_rows:
        log["diffusion_row"] = diffusion_row(model, z[:n_row], decode=model.decode_first_stage)

    def draw(name: str, **kw):
        with model.ema_scope(name):
            return sample_log(model, cond=c, batch_size=N, ddim=use_ddim, ddim_steps=ddim_steps, eta=ddim_eta, **kw)

    if sample:
        samples, z_denoise_row = draw("Plotting")
        log["samples"] = model.decode_first_stage(samples)
        if plot_denoise_rows:
            log["denoise_row"] = _decode_rows(model, z_denoise_row, desc="Denoising")
        if unconditional_guidance_scale != 1.0 and model.model.conditioning_key is not None:
            mask = model.get_mask_input(batch) if getattr(model, "concat_mask_key", None) else None
            uc = model.get_unconditional_conditioning(xc, N, mask=mask)
            samples, _ = draw("Plotting guided", unconditional_guidance_scale=unconditional_guidance_scale,
                              unconditional_conditioning=uc)
            log[f"samples_cfg_scale_{unconditional_guidance_scale:.2f}"] = model.decode_first_stage(samples)
        if quantize_denoised and _is_vq(model.first_stage_model):
            samples, _ = draw("Plotting Quantized Denoised", quantize_denoised=True)
            log["samples_x0_quantized"] = model.decode_first_stage(samples.to(model.device))
        if inpaint:  # keep the border, resample a centre square; then the reverse
            h, w = z.shape[2], z.shape[3]
            mask = torch.ones(N, 1, h, w, device=model.device)
            mask[:, :, h // 4:3 * h // 4, w // 4:3 * w // 4] = 0.0
            samples, _ = draw("Plotting Inpaint", x0=z[:N], mask=mask)
            log["samples_inpainting"] = model.decode_first_stage(samples.to(model.device))
            log["mask"] = mask
            samples, _ = draw("Plotting Outpaint", x0=z[:N], mask=1.0 - mask)
            log["samples_outpainting"] = model.decode_first_stage(samples.to(model.device))
    if plot_progressive_rows:
        with model.ema_scope("Plotting Progressives"):
            _, progressives = model.progressive_denoising(c, shape=(model.channels, model.image_size,
                                                                    model.image_size), batch_size=N)
        log["progressive_row"] = _decode_rows(model, progressives, desc="Progressive Generation")
    return _select(log, return_keys)
