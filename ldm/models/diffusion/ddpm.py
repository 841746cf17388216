"""DDPM (pixel space, Ho et al. 2020) and LatentDiffusion (paper Sec. 3.2-3.3) as Lightning modules.

The math lives beside this file: schedules (``schedule``), the forward process and the
parameterisations (``parameterization``), the objective (``losses``), conditioning, the inpainting
condition and the classifier-free-guidance dropout (``conditioning``), the first stage
(``first_stage``), ancestral sampling (``ancestral``), optimizers/checkpoints/latent rescaling
(``training``) and image logging (``image_logging``). These classes hold the weights under their original state-dict
names and read as the training step: get input -> encode first stage -> loss.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np
import pytorch_lightning as pl
import torch
from einops import rearrange
from torch import nn

from ldm import perf
from ldm.data import latent_cache
from ldm.models.diffusion import ancestral, coarse, contrastive, image_logging, training
from ldm.models.diffusion import alignment as repa
from ldm.models.diffusion import parameterization as P
from ldm.models.diffusion.conditioning import (  # noqa: F401  (DiffusionWrapper, disabled_train: original paths)
    ConditioningKey, DiffusionWrapper, NullCondition, check_rate, default_null_class, disabled_train, encode_condition,
    freeze, inpainting_condition, instantiate_cond_stage, resolve_conditioning_key, to_model_kwargs)
from ldm.models.diffusion.ema_training import EMATraining
from ldm.models.diffusion.first_stage import SPLIT_INPUT_REFUSAL, FirstStage
from ldm.models.diffusion.losses import (
    DiffusionLoss, LossType, check_loss_type, check_noise_offset, check_timestep_range, get_loss, lvlb_weights,
    min_snr_weights, training_noise)
from ldm.models.diffusion.parameterization import Parameterization
from ldm.models.diffusion.timesteps import make_timestep_sampler
from ldm.models.diffusion.schedule import (
    BetaSchedule, buffer_device, make_beta_schedule, register_schedule_buffers, schedule_arrays)
from ldm.modules.ema import LitEma
from ldm.util import default, instantiate_from_config

__all__ = ["DDPM", "DiffusionWrapper", "LatentDiffusion", "disabled_train"]

log = logging.getLogger(__name__)

RAW_CONDITION_KEYS = ("caption", "txt", "coordinates_bbox")  # passed to τ_θ as they come


class DDPM(EMATraining, P.ForwardProcessMethods, ancestral.PixelSamplingMethods, pl.LightningModule):
    """Denoising diffusion in pixel space; the base of LatentDiffusion."""

    def __init__(
        self,
        unet_config: Mapping[str, Any],          # target/params of the denoiser ε_θ
        timesteps: int = 1000,                   # T, length of the forward chain
        beta_schedule: BetaSchedule = "linear",  # linear | cosine | sqrt_linear | sqrt
        loss_type: LossType = "l2",              # l1 | l2
        ckpt_path: Optional[str] = None,         # initialise from this checkpoint
        ignore_keys: Sequence[str] = (),         # state-dict key prefixes not to load from ckpt_path
        load_only_unet: bool = False,            # load only the DiffusionWrapper (UNet) from ckpt_path: a bare file or a full checkpoint's model.*
        monitor: Optional[str] = "val/loss",     # metric for checkpointing
        use_ema: bool = True,                    # keep an EMA copy of the denoiser (model_ema.*)
        first_stage_key: str = "image",          # batch key of the images
        image_size: int = 256,                   # spatial size the denoiser works at
        channels: int = 3,                       # channels the denoiser works at
        log_every_t: int = 100,                  # stride of logged intermediates
        clip_denoised: bool = True,              # clamp x̂_0 to [-1, 1] while sampling
        linear_start: float = 1e-4,              # β_1 of the linear schedules
        linear_end: float = 2e-2,                # β_T of the linear schedules
        cosine_s: float = 8e-3,                  # offset s of the cosine schedule
        given_betas: Optional[Sequence[float]] = None,  # explicit β_1..β_T, overrides the schedule
        original_elbo_weight: float = 0.0,       # weight of the VLB term
        v_posterior: float = 0.0,                # posterior variance: (1-v) β̃_t + v β_t
        l_simple_weight: float = 1.0,            # weight of L_simple (paper Eq. (1))
        snr_gamma: Optional[float] = None,       # Min-SNR-γ timestep weighting (losses.min_snr_weights); None: uniform
        snr_floor: Optional[float] = None,       # lowest x_0 weight of that weighting (losses.min_snr_weights)
        coarse_x0_loss: Optional[Mapping[str, Any]] = None,  # {weight, pool}: coarse x_0 term (coarse.py); None: off
        contrastive_loss: Optional[Mapping[str, Any]] = None,  # {weight}: ΔFM term (contrastive.py); None: off
        unet_trainable: Optional[Sequence[str]] = None,  # train only UNet parameters with these name prefixes; None: all
        noise_offset: float = 0.0,               # offset noise of the training ε (losses.training_noise); 0: the paper
        timestep_range: Optional[Sequence[int]] = None,  # [lo, hi): train on these timesteps only (an expert); None: all
        timestep_sampling: Optional[Mapping[str, Any]] = None,  # density of the training t (timesteps.py); None: uniform
        optimizer_params: Optional[Mapping[str, Any]] = None,  # AdamW betas/eps/weight_decay (training.py); None: torch's
        conditioning_key: Optional[ConditioningKey] = None,  # None | concat | crossattn | hybrid | adm
        parameterization: Parameterization = "eps",  # what the network predicts: eps | x0 | v
        scheduler_config: Optional[Mapping[str, Any]] = None,  # LambdaLR multiplier (ldm.lr_scheduler)
        use_positional_encodings: bool = False,  # unsupported, kept so original configs validate
        learn_logvar: bool = False,              # learn per-timestep log-variances of the loss
        logvar_init: float = 0.0,                # their initial value
        compile_denoiser: Union[bool, Mapping[str, Any]] = False,  # torch.compile the UNet (ldm.perf)
        channels_last: bool = False,             # NHWC memory format for the UNet (ldm.perf)
        representation_alignment: Optional[Mapping[str, Any]] = None,  # REPA term (alignment.py); None: off (the paper)
    ):
        super().__init__()
        P.check_parameterization(parameterization)
        check_loss_type(loss_type)
        if use_positional_encodings:
            raise ValueError("use_positional_encodings=True is not supported: the original code never "
                             "implemented the latent shifts it requires")
        self.parameterization = parameterization
        self.cond_stage_model = None
        self.clip_denoised, self.log_every_t = clip_denoised, log_every_t
        self.first_stage_key, self.image_size, self.channels = first_stage_key, image_size, channels
        self.use_positional_encodings = use_positional_encodings
        self.model = DiffusionWrapper(unet_config, conditioning_key)
        self.alignment = repa.make_alignment(self.model.diffusion_model, representation_alignment)
        self.use_ema = use_ema
        if use_ema:
            self.model_ema = LitEma(self.model)
        self.use_scheduler, self.scheduler_config = scheduler_config is not None, scheduler_config
        self.v_posterior, self.original_elbo_weight = v_posterior, original_elbo_weight
        self.l_simple_weight, self.loss_type = l_simple_weight, loss_type
        self.snr_gamma, self.snr_floor, self.noise_offset = snr_gamma, snr_floor, check_noise_offset(noise_offset)
        self.coarse_x0 = coarse.make_coarse_x0_loss(coarse_x0_loss, image_size)
        self.contrastive = contrastive.make_contrastive_loss(contrastive_loss)
        if monitor is not None:
            self.monitor = monitor
        self.register_schedule(given_betas, beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        self.timestep_range = check_timestep_range(timestep_range, self.num_timesteps)
        self.timestep_sampler = make_timestep_sampler(timestep_sampling, *self.timestep_range)
        self.optimizer_params = training.check_optimizer_params(optimizer_params)
        self.learn_logvar = learn_logvar
        logvar = torch.full((self.num_timesteps,), float(logvar_init), device=buffer_device())
        if learn_logvar:
            self.logvar = nn.Parameter(logvar)
        else:  # a constant: not part of released checkpoints
            self.register_buffer("logvar", logvar, persistent=False)
        self.restarted_from_ckpt = False
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, only_model=load_only_unet)
        self.unet_trainable = training.train_only(self.model.diffusion_model, unet_trainable)
        perf.configure_denoiser(self.model.diffusion_model, compile=compile_denoiser, channels_last=channels_last)

    # ---- schedule and forward process ----

    def register_schedule(
        self,
        given_betas: Optional[Sequence[float]] = None,
        beta_schedule: str = "linear",
        timesteps: int = 1000,
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
    ) -> None:
        betas = np.asarray(given_betas, dtype=np.float64) if given_betas is not None else \
            make_beta_schedule(beta_schedule, timesteps, linear_start, linear_end, cosine_s)  # refuses unknown names
        arrays = schedule_arrays(betas, self.v_posterior)
        self.num_timesteps = int(betas.shape[0])
        self.linear_start, self.linear_end = linear_start, linear_end
        register_schedule_buffers(self, arrays)
        self.register_buffer("lvlb_weights", lvlb_weights(arrays, self.parameterization), persistent=False)
        weighted = self.snr_gamma is not None or self.snr_floor is not None
        self.register_buffer("snr_weights", min_snr_weights(
            arrays["alphas_cumprod"], self.parameterization, self.snr_gamma, self.snr_floor) if weighted else None,
            persistent=False)

    # ---- denoiser and objective ----

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any = None, return_ids: bool = False):
        """ε_θ(x_t, t, c) (or x_0 / v, per ``parameterization``)."""
        out = self.model(x_noisy, t, **to_model_kwargs(cond, self.model.conditioning_key))
        return out[0] if isinstance(out, tuple) and not return_ids else out

    def get_loss(self, pred, target, mean=True):
        return get_loss(pred, target, self.loss_type, mean=mean)

    def _diffusion_loss(self, x_start, cond, t, noise=None, align_to=None):
        """Paper Eq. (1)-(3): noise x_0 to x_t, predict, regress the parameterisation's target;
        with ``align_to`` (the teacher's features of the clean images) plus the REPA term."""
        noise = default(noise, lambda: training_noise(x_start, self.noise_offset))
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        with repa.capture(self.alignment, align_to) as hidden:
            model_output = self.apply_model(x_noisy, t, cond)
        target = P.training_target(self, self.parameterization, x_start, noise, t)
        loss_fn = DiffusionLoss(self.loss_type, self.l_simple_weight, self.original_elbo_weight, self.learn_logvar)
        prefix = "train" if self.training else "val"
        loss, log = loss_fn(model_output, target, t, self.logvar, self.lvlb_weights,
                            prefix=prefix, timestep_weights=self.snr_weights)
        for term in (self.coarse_x0, self.contrastive):  # extra terms (coarse.py, contrastive.py); None: off
            loss = loss if term is None else term.add(self, loss, log, prefix, x_noisy, t, model_output, x_start, noise)
        return repa.add_term(self.alignment, hidden, align_to, loss, log, prefix), log

    def alignment_target(self, batch) -> Optional[torch.Tensor]:
        """The teacher's features of the batch's clean images for the REPA term, in training only."""
        if self.alignment is None or not self.training:
            return None
        return self.alignment.teacher_features(batch, DDPM.get_input(self, batch, self.first_stage_key).to(self.device))

    def p_losses(self, x_start, t, noise=None, align_to=None):
        return self._diffusion_loss(x_start, None, t, noise, align_to)

    def sample_timesteps(self, batch_size: int) -> torch.Tensor:
        """t ~ U{0, ..., T-1} (paper Eq. (1)), or over [lo, hi) for a ``timestep_range`` expert; with
        ``timestep_sampling``, logit-normal over the same range (timesteps.py)."""
        return self.timestep_sampler(batch_size, self.device)

    def forward(self, x, *args, **kwargs):
        return self.p_losses(x, self.sample_timesteps(x.shape[0]), *args, **kwargs)

    # ---- training glue ----

    def get_input(self, batch, k):
        """Images come channel-last (B, H, W, C) from the datasets; the model wants (B, C, H, W)."""
        if k not in batch:
            raise KeyError(f"batch has no key {k!r} (keys: {sorted(batch)}); check first_stage_key/cond_stage_key")
        x = batch[k]
        if x.ndim == 3:
            x = x[..., None]
        x = rearrange(x, "b h w c -> b c h w")
        return x.to(memory_format=torch.contiguous_format).float()

    def shared_step(self, batch):
        x = self.get_input(batch, self.first_stage_key)
        return self(x, align_to=self.alignment_target(batch))

    def training_step(self, batch, batch_idx):
        loss, loss_dict = self.shared_step(batch)
        self.log_dict(loss_dict, prog_bar=True, logger=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("global_step", float(self.global_step), prog_bar=True, logger=True, on_step=True, on_epoch=False)
        if self.use_scheduler:
            lr = self.optimizers().param_groups[0]["lr"]
            self.log("lr_abs", lr, prog_bar=True, logger=True, on_step=True, on_epoch=False)
        return loss

    @torch.no_grad()
    def validation_step(self, batch, batch_idx):
        if batch is None:  # every image of the batch was unreadable (skipped and counted by the dataset)
            return None
        _, loss_dict = self.shared_step(batch)
        with self.ema_scope():
            _, loss_dict_ema = self.shared_step(batch)
        self.log_dict(loss_dict, prog_bar=False, logger=True, on_step=False, on_epoch=True, sync_dist=True)
        self.log_dict({k + "_ema": v for k, v in loss_dict_ema.items()},
                      prog_bar=False, logger=True, on_step=False, on_epoch=True, sync_dist=True)

    def on_load_checkpoint(self, checkpoint):
        self.restarted_from_ckpt = True

    def init_from_ckpt(self, path: str, ignore_keys: Sequence[str] = (), only_model: bool = False) -> None:
        training.init_from_ckpt(self, path, ignore_keys, only_model)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = training.unet_parameters(self.model.diffusion_model, self.unet_trainable)
        if self.alignment is not None:
            params.extend(self.alignment.parameters_to_train())
        if self.learn_logvar:
            params.append(self.logvar)
        return params

    def configure_optimizers(self):
        """AdamW on ``self.learning_rate`` (set by the trainer), with the optional LambdaLR schedule."""
        return training.configure_optimizers(self, self.trainable_parameters())

    @torch.no_grad()
    def log_images(self, batch, N=8, n_row=2, sample=True, return_keys=None, **kwargs):
        return image_logging.log_images_ddpm(self, batch, N=N, n_row=n_row, sample=sample, return_keys=return_keys)


class LatentDiffusion(ancestral.LatentSamplingMethods, DDPM):
    """Diffusion in the latent space z = E(x) of a frozen autoencoder, conditioned through τ_θ(y)."""

    def __init__(
        self,
        first_stage_config: Mapping[str, Any],                # the frozen autoencoder E, D (paper Sec. 3.1)
        cond_stage_config: Union[str, Mapping[str, Any]],    # τ_θ, or __is_first_stage__ / __is_unconditional__
        num_timesteps_cond: Optional[int] = None,            # >1: noise the condition too (legacy option)
        cond_stage_key: str = "image",                       # batch key of the condition y
        cond_stage_trainable: bool = False,                  # optimise τ_θ jointly (paper Eq. (3))
        concat_mode: bool = True,                            # default conditioning: concat (else crossattn)
        cond_stage_forward: Optional[str] = None,            # method of τ_θ to call instead of encode/forward
        conditioning_key: Optional[ConditioningKey] = None,  # None | concat | crossattn | hybrid | adm
        scale_factor: float = 1.0,                           # z is scaled by this before diffusion
        scale_by_std: bool = False,                          # set scale_factor = 1/std(z) on the first batch
        ucg_rate: float = 0.0,                               # classifier-free guidance: P(drop condition)
        ucg_null_class: Optional[int] = None,                # null class index (default: embedder's)
        concat_mask_key: Optional[str] = None,               # inpainting (Sec. 4.5): batch key of the mask
                                                             # appended, at latent size, to the concat condition
        **kwargs: Any,                                       # DDPM parameters
    ):
        self.num_timesteps_cond = default(num_timesteps_cond, 1)
        if self.num_timesteps_cond > kwargs.get("timesteps", 1000):
            raise ValueError(f"num_timesteps_cond ({self.num_timesteps_cond}) exceeds timesteps")
        check_rate(ucg_rate, "ucg_rate")
        self.scale_by_std = scale_by_std
        conditioning_key = resolve_conditioning_key(conditioning_key, concat_mode, cond_stage_config)
        if concat_mask_key is not None and (conditioning_key != "concat" or cond_stage_trainable):
            raise ValueError(f"concat_mask_key={concat_mask_key!r} appends the mask to a frozen concat condition: it "
                             f"needs conditioning_key 'concat' (got {conditioning_key!r}) and "
                             f"cond_stage_trainable=False (got {cond_stage_trainable})")
        ckpt_path = kwargs.pop("ckpt_path", None)  # loaded below, once every stage exists
        ignore_keys = kwargs.pop("ignore_keys", ())
        only_unet = kwargs.get("load_only_unet", False)
        super().__init__(conditioning_key=conditioning_key, **kwargs)
        self.concat_mode = concat_mode
        self.cond_stage_trainable = cond_stage_trainable
        self.cond_stage_key = cond_stage_key
        self.ucg_rate = ucg_rate
        self.ucg_null_class = ucg_null_class
        self.concat_mask_key = concat_mask_key
        if scale_by_std:  # a buffer, so the estimate is saved with the weights
            self.register_buffer("scale_factor", torch.tensor(float(scale_factor), device=buffer_device()))
        else:
            self.scale_factor = scale_factor
        self.instantiate_first_stage(first_stage_config)
        self.instantiate_cond_stage(cond_stage_config)
        self.cond_stage_forward = cond_stage_forward
        self.clip_denoised = False
        self.bbox_tokenizer = None
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys, only_model=only_unet)

    def register_schedule(self, given_betas=None, beta_schedule="linear", timesteps=1000,
                          linear_start=1e-4, linear_end=2e-2, cosine_s=8e-3):
        super().register_schedule(given_betas, beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        self.shorten_cond_schedule = self.num_timesteps_cond > 1
        if self.shorten_cond_schedule:
            self.make_cond_schedule()

    def make_cond_schedule(self):
        self.cond_ids = torch.full((self.num_timesteps,), self.num_timesteps - 1, dtype=torch.long)
        ids = torch.round(torch.linspace(0, self.num_timesteps - 1, self.num_timesteps_cond)).long()
        self.cond_ids[:self.num_timesteps_cond] = ids

    def instantiate_first_stage(self, config):
        self.first_stage_model = freeze(instantiate_from_config(config, path="first_stage_config"))

    def instantiate_cond_stage(self, config):
        self.cond_stage_model = instantiate_cond_stage(config, self.cond_stage_trainable, self.first_stage_model)

    # ---- first stage: z = scale_factor * E(x), x = D(z / scale_factor) ----

    @torch.no_grad()
    def on_train_batch_start(self, batch, batch_idx):
        """Latent rescaling (paper Sec. 4.3.2, App. C.1): on the first batch of a fresh run, set
        scale_factor so that the latents of that batch have unit standard deviation."""
        if not (self.scale_by_std and self.current_epoch == 0 and self.global_step == 0
                and batch_idx == 0 and not self.restarted_from_ckpt):
            return
        cached = latent_cache.cached_latent(batch, device=self.device)
        if cached is not None:  # the same estimate from the cached posterior
            first_stage = FirstStage(latent_cache.CachedEncoder(cached), self.scale_factor)
            training.rescale_latents_by_std(first_stage, self.scale_factor, None)
            return
        x = DDPM.get_input(self, batch, self.first_stage_key).to(self.device)
        training.rescale_latents_by_std(self.first_stage, self.scale_factor, x)

    @property
    def first_stage(self) -> FirstStage:
        """The first stage with this model's current scale_factor (the one reader of it)."""
        if getattr(self, "split_input_params", None) is not None:
            raise NotImplementedError(SPLIT_INPUT_REFUSAL)
        return FirstStage(self.first_stage_model, self.scale_factor)

    def get_first_stage_encoding(self, encoder_posterior):
        return self.first_stage.latent(encoder_posterior)

    @torch.no_grad()
    def encode_first_stage(self, x):
        return self.first_stage.autoencoder.encode(x)

    def differentiable_decode_first_stage(self, z, predict_cids=False, force_not_quantize=False):
        return self.first_stage.decode(z, predict_cids, force_not_quantize)

    @torch.no_grad()
    def decode_first_stage(self, z, predict_cids=False, force_not_quantize=False):
        return self.differentiable_decode_first_stage(z, predict_cids, force_not_quantize)

    # ---- conditioning ----

    def get_learned_conditioning(self, c):
        """τ_θ(y) (paper Sec. 3.3)."""
        return encode_condition(self.cond_stage_model, c, self.cond_stage_forward)

    def null_class(self) -> int:
        return self.ucg_null_class if self.ucg_null_class is not None else default_null_class(self.cond_stage_model)

    def null_condition(self, xc: Any = None) -> NullCondition:
        """The null condition and training dropout of this model; the null class is looked up only
        when the raw condition ``xc`` holds class labels (other models need not have one)."""
        class_key = getattr(self.cond_stage_model, "key", self.cond_stage_key)
        needs_class = isinstance(xc, Mapping) or (isinstance(xc, torch.Tensor) and not xc.is_floating_point())
        return NullCondition(self.ucg_rate, class_key, self.null_class() if needs_class else None)

    def drop_condition(self, xc, rate: float):
        """Classifier-free guidance training: per sample, y -> null with probability ``rate``."""
        return self.null_condition(xc).drop(xc, rate)[0]

    @torch.no_grad()
    def get_unconditional_conditioning(self, xc, batch_size: Optional[int] = None,
                                       mask: Optional[torch.Tensor] = None):
        """τ_θ(∅) shaped like the conditioning of raw condition ``xc`` (for guided sampling). With
        ``concat_mask_key`` the pixel ``mask`` (B, 1, H, W) is kept: only the masked image is dropped."""
        c = self.get_learned_conditioning(self.null_condition(xc).like(xc))
        c = ancestral.slice_conditioning(c, batch_size) if batch_size else c
        if self.concat_mask_key is not None:
            if mask is None:
                raise ValueError(f"concat_mask_key={self.concat_mask_key!r}: pass the pixel mask (B, 1, H, W)")
            c = inpainting_condition(self, c, mask[:c.shape[0]], encoded=True)
        return c

    def get_mask_input(self, batch, bs: Optional[int] = None) -> torch.Tensor:
        """The pixel mask ``batch[concat_mask_key]`` as (B, 1, H, W) on the model's device."""
        mask = DDPM.get_input(self, batch, self.concat_mask_key)
        return (mask if bs is None else mask[:bs]).to(self.device)

    def _raw_condition(self, batch, cond_key, x):
        if cond_key == self.first_stage_key:
            return x
        if cond_key == "class_label":  # the class embedder picks its key from the batch
            return batch
        if cond_key in RAW_CONDITION_KEYS or not isinstance(batch.get(cond_key), torch.Tensor):
            return batch[cond_key]
        return DDPM.get_input(self, batch, cond_key).to(self.device)

    @torch.no_grad()
    def get_input(self, batch, k, return_first_stage_outputs=False, force_c_encode=False, cond_key=None,
                  return_original_cond=False, bs=None, drop_cond: Optional[bool] = None):
        """(z, c[, x, D(z)][, y]): latents of ``batch[k]`` and the (encoded unless τ_θ is trained)
        condition, with the mask appended for inpainting (``concat_mask_key``). While training, the
        condition (not the mask) is dropped with probability ``ucg_rate``."""
        cached = latent_cache.cached_latent(batch, bs, self.device)  # from scripts/cache_latents.py
        if cached is None:
            x = super().get_input(batch, k)
            if bs is not None:
                x = x[:bs]
            x = x.to(self.device)
            z = self.get_first_stage_encoding(self.encode_first_stage(x)).detach()
        else:  # E(x) was computed once; z is still drawn from q(z|x) here, every step
            z = self.get_first_stage_encoding(cached).detach()
            x = self.decode_first_stage(z) if return_first_stage_outputs else None
        c = xc = None
        if self.model.conditioning_key is not None:
            xc = self._raw_condition(batch, cond_key or self.cond_stage_key, x)
            if default(drop_cond, self.training) and self.ucg_rate > 0:
                xc = self.drop_condition(xc, self.ucg_rate)
            c = xc
            cached_c = latent_cache.cached_condition(batch, None, self.device) if cond_key in (
                None, self.cond_stage_key) else None
            if cached_c is not None and not self.cond_stage_trainable:  # τ(y) from the latent cache
                c = cached_c
            elif not self.cond_stage_trainable or force_c_encode:
                c = self.get_learned_conditioning(xc if isinstance(xc, (dict, list)) else xc.to(self.device))
            if bs is not None and isinstance(c, (torch.Tensor, list)):
                c = c[:bs]
            if self.concat_mask_key is not None:
                c = inpainting_condition(self, c, self.get_mask_input(batch, bs), encoded=True)
        out = [z, c]
        if return_first_stage_outputs:
            out.extend([x, self.decode_first_stage(z)])
        if return_original_cond:
            out.append(xc)
        return out

    # ---- objective ----

    def shared_step(self, batch, **kwargs):
        x, c = self.get_input(batch, self.first_stage_key)
        return self(x, c, align_to=self.alignment_target(batch))

    def forward(self, x, c, *args, **kwargs):
        t = self.sample_timesteps(x.shape[0])
        if self.model.conditioning_key is not None:
            if c is None:
                raise ValueError(f"conditioning_key={self.model.conditioning_key!r} needs a condition, got None")
            if self.cond_stage_trainable:
                c = self.get_learned_conditioning(c)
            if self.shorten_cond_schedule:
                tc = self.cond_ids[t].to(self.device)
                c = self.q_sample(x_start=c, t=tc, noise=torch.randn_like(c.float()))
        return self.p_losses(x, c, t, *args, **kwargs)

    def p_losses(self, x_start, cond, t, noise=None, align_to=None):
        return self._diffusion_loss(x_start, cond, t, noise, align_to)

    def trainable_parameters(self):
        params = super().trainable_parameters()
        if self.cond_stage_trainable:
            params.extend(self.cond_stage_model.parameters())
        return params

    # ---- sampling: p_mean_variance, p_sample, progressive_denoising, p_sample_loop, sample
    #      come from ancestral.LatentSamplingMethods ----

    @torch.no_grad()
    def sample_log(self, cond, batch_size, ddim, ddim_steps, **kwargs):
        return image_logging.sample_log(self, cond, batch_size, ddim, ddim_steps, **kwargs)

    @torch.no_grad()
    def log_images(self, batch, N=8, n_row=4, sample=True, ddim_steps=50, ddim_eta=1.0, return_keys=None,
                   quantize_denoised=True, inpaint=False, plot_denoise_rows=False, plot_progressive_rows=False,
                   plot_diffusion_rows=False, unconditional_guidance_scale=1.0, **kwargs):
        return image_logging.log_images_ldm(
            self, batch, N=N, n_row=n_row, sample=sample, ddim_steps=ddim_steps, ddim_eta=ddim_eta,
            return_keys=return_keys, quantize_denoised=quantize_denoised, inpaint=inpaint,
            plot_denoise_rows=plot_denoise_rows, plot_progressive_rows=plot_progressive_rows,
            plot_diffusion_rows=plot_diffusion_rows, unconditional_guidance_scale=unconditional_guidance_scale)

    def to_rgb(self, x):
        return image_logging.to_rgb(self, x)
