"""First-stage models (paper Sec. 3.1): autoencoders E, D with KL- or VQ-regularised latents.

Training alternates a generator update (E, D[, codebook]; optimizer 0) and a PatchGAN
discriminator update (optimizer 1) on every batch. Lightning 2 supports this only with manual
optimisation, and then refuses trainer-level gradient accumulation, so the models accumulate
themselves: ``accumulate_grad_batches`` (set by the trainer glue) scales the losses and steps the
optimisers every n batches. ``learning_rate`` is likewise set by the trainer glue.
"""
from __future__ import annotations

import abc
import contextlib
import inspect
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ldm import checkpoint as ckpt_io
from ldm.config.errors import ConfigError
from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.diffusionmodules.shortcut import channel_to_space_duplicate, check_shortcut, space_to_channel_average
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.modules.ema import LitEma, ema_weights_in
from ldm.modules.vqvae.quantize import VectorQuantizer2 as VectorQuantizer
from ldm.trainer.nonfinite import update_was_skipped
from ldm.util import instantiate_from_config

__all__ = ["AutoencoderKL", "IdentityFirstStage", "VQModel", "VQModelInterface"]


def _check_ddconfig(ddconfig: Any) -> dict:
    """The ddconfig as a plain dict; unknown keys fail with their config path."""
    if isinstance(ddconfig, DictConfig):
        ddconfig = OmegaConf.to_container(ddconfig, resolve=True)
    if not isinstance(ddconfig, dict):
        raise ConfigError("ddconfig", f"expected a mapping, got {type(ddconfig).__name__}")
    accepted = set(inspect.signature(Encoder.__init__).parameters) | set(inspect.signature(Decoder.__init__).parameters)
    for key in ddconfig:
        if key not in accepted:
            raise ConfigError(f"ddconfig.{key}", f"unknown ddconfig key; accepted: {sorted(accepted - {'self'})}")
    return dict(ddconfig)


class _FirstStage(pl.LightningModule, abc.ABC):
    """Input handling, checkpoint loading and the alternating GAN training shared by KL and VQ."""

    def __init__(self, ddconfig: dict, lossconfig: dict, image_key: str, colorize_nlabels: Optional[int],
                 monitor: Optional[str]):
        super().__init__()
        ddconfig = _check_ddconfig(ddconfig)
        self.image_key = image_key
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = instantiate_from_config(lossconfig, path="lossconfig")
        self.automatic_optimization = False
        self.accumulate_grad_batches = 1
        self.batch_resize_range: Optional[Sequence[int]] = None
        self.scheduler_config: Optional[dict] = None
        if colorize_nlabels is not None:
            self.register_buffer("colorize", torch.randn(3, colorize_nlabels, 1, 1))
        if monitor is not None:
            self.monitor = monitor

    # -- checkpoints -------------------------------------------------------------------------------
    def init_from_ckpt(self, path: str, ignore_keys: Sequence[str] = ()) -> Optional[ckpt_io.LoadReport]:
        return ckpt_io.init_from_ckpt(self, path, ignore_keys=ignore_keys)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # `colorize` is registered lazily by to_rgb, so checkpoints may carry it when we do not yet.
        key = prefix + "colorize"
        if key in state_dict and not hasattr(self, "colorize"):
            self.register_buffer("colorize", torch.empty_like(state_dict[key], device=self.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- data ----------------------------------------------------------------------------------------
    def get_input(self, batch: dict, k: str) -> torch.Tensor:
        """batch[k] (B, H, W, C) float in [-1, 1] -> (B, C, H, W) contiguous float."""
        if k not in batch:
            raise KeyError(f"batch has no key {k!r} (image_key); available: {sorted(batch)}")
        x = batch[k]
        if x.ndim == 3:
            x = x[..., None]
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.contiguous_format).float()
        if self.batch_resize_range is not None:
            lower, upper = self.batch_resize_range
            # The first steps use the largest size so that out-of-memory errors surface at once.
            size = upper if self.global_step <= 4 else int(np.random.choice(np.arange(lower, upper + 16, 16)))
            if size != x.shape[2]:
                x = F.interpolate(x, size=size, mode="bicubic")
            x = x.detach()
        return x

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Project a segmentation map (B, n_labels, H, W) to RGB in [-1, 1] for logging."""
        if self.image_key != "segmentation":
            raise ValueError(f"to_rgb is for segmentation inputs, but image_key={self.image_key!r}")
        if not hasattr(self, "colorize"):
            self.register_buffer("colorize", torch.randn(3, x.shape[1], 1, 1).to(x))
        x = F.conv2d(x, weight=self.colorize)
        return 2.0 * (x - x.min()) / (x.max() - x.min()) - 1.0

    def get_last_layer(self) -> torch.Tensor:
        """G_L of the adaptive GAN weight: the decoder's output convolution."""
        return self.decoder.conv_out.weight

    # -- subclass hooks ------------------------------------------------------------------------------
    @abc.abstractmethod
    def _step_outputs(self, x: torch.Tensor) -> tuple:
        """The model outputs of one training/validation step on input ``x`` (passed to _compute_loss)."""

    @abc.abstractmethod
    def _compute_loss(self, x: torch.Tensor, outputs: tuple, optimizer_idx: int, split: str):
        """(loss, log dict) of the autoencoder (optimizer_idx 0) or discriminator (1) update."""

    @abc.abstractmethod
    def _autoencoder_parameters(self) -> list[nn.Parameter]:
        """The parameters of the generator optimizer (everything but the loss' discriminator)."""

    def _generator_lr(self) -> float:
        return self.learning_rate

    # -- training ------------------------------------------------------------------------------------
    def _require_trainable_loss(self) -> None:
        if isinstance(self.loss, nn.Identity) or not hasattr(self.loss, "discriminator"):
            raise RuntimeError(
                f"{type(self).__name__} was built with lossconfig {type(self.loss).__name__} (an inference "
                "config); training needs a first-stage loss such as ldm.modules.losses.LPIPSWithDiscriminator")

    @property
    def loss_step(self) -> int:
        """Generator updates so far: the clock of disc_start. Lightning counts every optimizer.step
        of manual optimisation in global_step, two per update here."""
        return self.global_step // 2

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._require_trainable_loss()
        opt_ae, opt_disc = self.optimizers()
        n = max(1, int(self.accumulate_grad_batches))
        x = self.get_input(batch, self.image_key)
        outputs = self._step_outputs(x)

        self.toggle_optimizer(opt_ae)
        aeloss, log_ae = self._compute_loss(x, outputs, 0, "train")
        self.manual_backward(aeloss / n)
        self.untoggle_optimizer(opt_ae)

        self.toggle_optimizer(opt_disc)
        discloss, log_disc = self._compute_loss(x, outputs, 1, "train")
        self.manual_backward(discloss / n)
        self.untoggle_optimizer(opt_disc)

        if (batch_idx + 1) % n == 0 or self.trainer.is_last_batch:
            for opt in (opt_ae, opt_disc):
                opt.step()
                opt.zero_grad(set_to_none=True)
            schedulers = self.lr_schedulers() or []
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
                scheduler.step()
            if not update_was_skipped(self._trainer):  # a skipped (non-finite) step changes nothing
                self._after_update()

        self.log("aeloss", aeloss.detach(), prog_bar=True, logger=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("discloss", discloss.detach(), prog_bar=True, logger=True, on_step=True, on_epoch=True,
                 sync_dist=True)
        self.log_dict({**log_ae, **log_disc}, prog_bar=False, logger=True, on_step=True, on_epoch=False)
        return aeloss.detach()

    def _after_update(self) -> None:
        """Called after each optimizer update (EMA lives here)."""

    def _validation_step(self, batch: dict, suffix: str = "") -> dict:
        x = self.get_input(batch, self.image_key)
        outputs = self._step_outputs(x)
        split = "val" + suffix
        aeloss, log_ae = self._compute_loss(x, outputs, 0, split)
        _, log_disc = self._compute_loss(x, outputs, 1, split)
        rec_loss = log_ae.pop(f"{split}/rec_loss")
        self.log(f"{split}/rec_loss", rec_loss, prog_bar=True, logger=True, on_step=False, on_epoch=True,
                 sync_dist=True)
        self.log(f"{split}/aeloss", aeloss, prog_bar=True, logger=True, on_step=False, on_epoch=True,
                 sync_dist=True)
        self.log_dict({**log_ae, **log_disc}, sync_dist=True)
        return {f"{split}/rec_loss": rec_loss, **log_ae, **log_disc}

    def validation_step(self, batch: dict, batch_idx: int) -> Optional[dict]:
        self._require_trainable_loss()
        if batch is None:  # every image of the batch was unreadable (skipped and counted by the dataset)
            return None
        return self._validation_step(batch)

    def configure_optimizers(self):
        """Adam(betas=(0.5, 0.9)) for the autoencoder (opt 0) and the discriminator (opt 1)."""
        self._require_trainable_loss()
        if not hasattr(self, "learning_rate"):
            raise AttributeError(f"{type(self).__name__}.learning_rate is not set: the trainer glue sets it "
                                 "(base_learning_rate times scaling factors) before fit; set it by hand otherwise")
        opt_ae = torch.optim.Adam(self._autoencoder_parameters(), lr=self._generator_lr(), betas=(0.5, 0.9))
        opt_disc = torch.optim.Adam(self.loss.discriminator.parameters(), lr=self.learning_rate, betas=(0.5, 0.9))
        if self.scheduler_config is None:
            return [opt_ae, opt_disc], []
        schedule = instantiate_from_config(self.scheduler_config, path="scheduler_config")
        schedulers = [{"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=schedule.schedule),
                       "interval": "step", "frequency": 1} for opt in (opt_ae, opt_disc)]
        return [opt_ae, opt_disc], schedulers


class AutoencoderKL(_FirstStage):
    """KL-regularised autoencoder: E(x) parameterises a diagonal Gaussian q(z|x) (Sec. 3.1)."""

    def __init__(
        self,
        ddconfig: dict,                        # Encoder/Decoder architecture (double_z must be true)
        lossconfig: dict,                      # target/params of the loss (torch.nn.Identity for inference)
        embed_dim: int,                        # latent channels c
        ckpt_path: Optional[str] = None,
        ignore_keys: Sequence[str] = (),       # key prefixes to skip when loading ckpt_path
        image_key: str = "image",
        colorize_nlabels: Optional[int] = None,
        monitor: Optional[str] = None,         # metric for checkpoint selection, e.g. val/rec_loss
        scheduler_config: Optional[dict] = None,  # LambdaLR schedule (target with .schedule), as VQModel's
        residual_shortcut: bool = False,       # parameter-free pixel <-> latent paths (DC-AE); see shortcut.py
    ):
        dd = _check_ddconfig(ddconfig)
        if not dd.get("double_z", True):
            raise ConfigError("ddconfig.double_z", "AutoencoderKL needs double_z: true (mean and log-variance)")
        super().__init__(dd, lossconfig, image_key, colorize_nlabels, monitor)
        z_channels = dd["z_channels"]
        self.embed_dim = embed_dim
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.scheduler_config = scheduler_config
        self._shortcut: Optional[int] = None  # the downsampling factor f when residual_shortcut
        if residual_shortcut:
            factor = 2 ** (self.encoder.num_resolutions - 1)
            for key in ("give_pre_end", "tanh_out"):
                if dd.get(key):
                    raise ConfigError("residual_shortcut", f"does not combine with ddconfig.{key}: true (the shortcut "
                                      "adds to the decoder's image output)")
            for key in ("in_channels", "out_ch"):
                try:
                    check_shortcut(int(dd[key]), embed_dim, factor)
                except ValueError as e:
                    raise ConfigError("residual_shortcut", f"ddconfig.{key}={dd[key]}, embed_dim={embed_dim}: {e}") from None
            # Parameter-free, so a checkpoint would not show it: this buffer makes a model built with
            # and a checkpoint trained without the shortcut (or the reverse) fail to load by name.
            self.register_buffer("shortcut_factor", torch.tensor(factor))
            self._shortcut = factor  # a Python int: reading the buffer would synchronise with the device
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        moments = self.quant_conv(self.encoder(x))
        if self._shortcut:  # the mean learns a residual around the downsampled image
            mean, logvar = moments.chunk(2, dim=1)
            mean = mean + space_to_channel_average(x, self._shortcut, mean.shape[1])
            moments = torch.cat([mean, logvar], dim=1)
        return DiagonalGaussianDistribution(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        dec = self.decoder(self.post_quant_conv(z))
        if self._shortcut:
            dec = dec + channel_to_space_duplicate(z, self._shortcut, dec.shape[1])
        return dec

    def forward(self, input: torch.Tensor, sample_posterior: bool = True) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        posterior = self.encode(input)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def _step_outputs(self, x: torch.Tensor) -> tuple:
        return self(x)

    def _compute_loss(self, x, outputs, optimizer_idx, split):  # noqa: ANN001
        xrec, posterior = outputs
        return self.loss(x, xrec, posterior, optimizer_idx, self.loss_step, last_layer=self.get_last_layer(),
                         split=split)

    def _autoencoder_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.decoder.parameters(), *self.quant_conv.parameters(),
                *self.post_quant_conv.parameters()]

    @torch.no_grad()
    def log_images(self, batch: dict, only_inputs: bool = False, N: int = 8, **kwargs: Any) -> dict[str, torch.Tensor]:
        """inputs, reconstructions and decoded prior samples z ~ N(0, I), all (B, 3, H, W) in [-1, 1]."""
        x = self.get_input(batch, self.image_key)[:N].to(self.device)
        log = {}
        if not only_inputs:
            xrec, posterior = self(x)
            samples = self.decode(torch.randn_like(posterior.sample()))
            if x.shape[1] > 3:
                xrec, samples = self.to_rgb(xrec), self.to_rgb(samples)
            log["samples"] = samples
            log["reconstructions"] = xrec
        log["inputs"] = self.to_rgb(x) if x.shape[1] > 3 else x
        return log


class VQModel(_FirstStage):
    """VQ-regularised autoencoder (Sec. 3.1): a VQGAN whose quantiser can sit inside the decoder."""

    def __init__(
        self,
        ddconfig: dict,                        # Encoder/Decoder architecture (double_z false)
        lossconfig: dict,                      # target/params of the loss (torch.nn.Identity for inference)
        n_embed: int,                          # codebook size
        embed_dim: int,                        # codebook vector size = latent channels
        ckpt_path: Optional[str] = None,
        ignore_keys: Sequence[str] = (),       # key prefixes to skip when loading ckpt_path
        image_key: str = "image",
        colorize_nlabels: Optional[int] = None,
        monitor: Optional[str] = None,
        batch_resize_range: Optional[Sequence[int]] = None,  # (lower, upper) random input sizes, step 16
        scheduler_config: Optional[dict] = None,             # LambdaLR schedule (target with .schedule)
        lr_g_factor: float = 1.0,              # autoencoder lr = lr_g_factor * learning_rate
        remap: Optional[str] = None,           # .npy of used codebook indices
        sane_index_shape: bool = False,        # indices as (B, H, W)
        use_ema: bool = False,                 # keep an EMA copy (model_ema.*) for validation
    ):
        super().__init__(ddconfig, lossconfig, image_key, colorize_nlabels, monitor)
        z_channels = _check_ddconfig(ddconfig)["z_channels"]
        self.embed_dim = embed_dim
        self.n_embed = n_embed
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25, remap=remap, sane_index_shape=sane_index_shape)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        if getattr(self.loss, "n_classes", False) is None:
            self.loss.n_classes = n_embed  # codebook size for the loss' perplexity check
        self.batch_resize_range = batch_resize_range
        self.use_ema = use_ema
        if use_ema:
            self.model_ema = LitEma(self)
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)
        self.scheduler_config = scheduler_config
        self.lr_g_factor = lr_g_factor

    @contextlib.contextmanager
    def ema_scope(self, context: Optional[str] = None) -> Iterator[None]:
        """Temporarily swap in the EMA weights."""
        if not self.use_ema:
            yield
            return
        with ema_weights_in(self.model_ema, self):
            yield

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """(z_q, codebook loss, (perplexity, min_encodings, indices))."""
        return self.quantize(self.encode_to_prequant(x))

    def encode_to_prequant(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, code_b: torch.Tensor) -> torch.Tensor:
        """Decode codebook indices (B, H, W)."""
        b, h, w = code_b.shape
        return self.decode(self.quantize.get_codebook_entry(code_b.reshape(b, -1), shape=(b, h, w, self.embed_dim)))

    def forward(self, input: torch.Tensor, return_pred_indices: bool = False):
        quant, diff, (_, _, ind) = self.encode(input)
        dec = self.decode(quant)
        return (dec, diff, ind) if return_pred_indices else (dec, diff)

    def _step_outputs(self, x: torch.Tensor) -> tuple:
        return self(x, return_pred_indices=True)

    def _compute_loss(self, x, outputs, optimizer_idx, split):  # noqa: ANN001
        xrec, qloss, ind = outputs
        return self.loss(qloss, x, xrec, optimizer_idx, self.loss_step, last_layer=self.get_last_layer(),
                         split=split, predicted_indices=ind)

    def _after_update(self) -> None:
        if self.use_ema:
            self.model_ema(self)

    def validation_step(self, batch: dict, batch_idx: int) -> Optional[dict]:
        self._require_trainable_loss()
        if batch is None:  # every image of the batch was unreadable (skipped and counted by the dataset)
            return None
        log = self._validation_step(batch)
        if self.use_ema:
            with self.ema_scope():
                self._validation_step(batch, suffix="_ema")
        return log

    def _generator_lr(self) -> float:
        return self.lr_g_factor * self.learning_rate

    def _autoencoder_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.decoder.parameters(), *self.quantize.parameters(),
                *self.quant_conv.parameters(), *self.post_quant_conv.parameters()]

    @torch.no_grad()
    def log_images(self, batch: dict, only_inputs: bool = False, N: int = 8, plot_ema: bool = False,
                   **kwargs: Any) -> dict[str, torch.Tensor]:
        """inputs and reconstructions (and EMA reconstructions), (B, 3, H, W) in [-1, 1]."""
        x = self.get_input(batch, self.image_key)[:N].to(self.device)
        log = {}
        if not only_inputs:
            xrec, _ = self(x)
            log["reconstructions"] = self.to_rgb(xrec) if x.shape[1] > 3 else xrec
            if plot_ema and self.use_ema:
                with self.ema_scope():
                    xrec_ema, _ = self(x)
                log["reconstructions_ema"] = self.to_rgb(xrec_ema) if x.shape[1] > 3 else xrec_ema
        log["inputs"] = self.to_rgb(x) if x.shape[1] > 3 else x
        return log


class VQModelInterface(VQModel):
    """VQModel as a first stage of an LDM: encode stops before quantisation, decode quantises."""

    def __init__(self, embed_dim: int, **kwargs: Any):
        super().__init__(embed_dim=embed_dim, **kwargs)
        self.embed_dim = embed_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_to_prequant(x)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        quant = h if force_not_quantize else self.quantize(h)[0]
        return self.decoder(self.post_quant_conv(quant))

    def forward(self, input: torch.Tensor, return_pred_indices: bool = False):
        quant, diff, (_, _, ind) = self.quantize(self.encode_to_prequant(input))
        dec = self.decoder(self.post_quant_conv(quant))
        return (dec, diff, ind) if return_pred_indices else (dec, diff)


class IdentityFirstStage(nn.Module):
    """Pixel-space "first stage" (f = 1): encode and decode are the identity."""

    def __init__(self, vq_interface: bool = False):
        super().__init__()
        self.vq_interface = vq_interface

    def encode(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x

    def decode(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x

    def quantize(self, x: torch.Tensor, *args: Any, **kwargs: Any):
        if self.vq_interface:
            return x, None, [None, None, None]
        return x

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x
