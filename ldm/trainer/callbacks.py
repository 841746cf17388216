"""Training callbacks: run-directory setup, image grids, device/epoch statistics."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
import torchvision
from PIL import Image
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from ldm.config.errors import ConfigError
from ldm.perf_flops import mfu, peak_tflops, training_flops_per_sample
from ldm.trainer.rundir import write_configs


class SetupCallback(pl.Callback):
    """Creates the run directory and saves the resolved configs when fitting starts (rank 0)."""

    def __init__(self,
                 resume: bool,      # continuing an existing run (keep its directory as is)
                 now: str,          # timestamp of this invocation, names the config dumps
                 logdir: str,       # run directory
                 ckptdir: str,      # <logdir>/checkpoints
                 cfgdir: str,       # <logdir>/configs
                 config: Any,       # resolved project config (model, data)
                 lightning_config: Any):  # resolved lightning section
        super().__init__()
        self.resume, self.now = resume, now
        self.logdir, self.ckptdir, self.cfgdir = Path(logdir), Path(ckptdir), Path(cfgdir)
        self.config, self.lightning_config = config, lightning_config

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        for d in (self.logdir, self.ckptdir):
            d.mkdir(parents=True, exist_ok=True)
        write_configs(self.cfgdir, self.now, self.config, self.lightning_config)
        rank_zero_info(f"Run directory: {self.logdir}")


class ImageLogger(pl.Callback):
    """Saves grids of ``pl_module.log_images(batch)`` as PNG and sends them to the logger.

    Logs at steps 1, 2, 4, ... up to ``batch_frequency`` (when ``increase_log_steps``), then every
    ``batch_frequency`` steps, for training and (unless ``log_validation`` is false) validation.
    """

    def __init__(self,
                 batch_frequency: int,              # log every this many steps
                 max_images: int,                   # images per grid
                 clamp: bool = True,                # clamp to [-1, 1] before saving
                 increase_log_steps: bool = True,   # also log at powers of two below batch_frequency
                 rescale: bool = True,              # map [-1, 1] to [0, 1]
                 disabled: bool = False,
                 log_on_batch_idx: bool = False,    # count batches instead of global steps
                 log_first_step: bool = False,      # log at step 0 as well
                 log_validation: bool = True,       # also a grid of the first validation batch (the original)
                 log_images_kwargs: Optional[dict] = None):  # passed on to log_images
        super().__init__()
        if batch_frequency < 1:
            raise ValueError(f"ImageLogger.batch_frequency must be >= 1, got {batch_frequency}")
        self.batch_freq = batch_frequency
        self.max_images = max_images
        self.log_steps = [2 ** n for n in range(int(np.log2(batch_frequency)) + 1)] if increase_log_steps else []
        self.clamp, self.rescale, self.disabled = clamp, rescale, disabled
        self.log_on_batch_idx, self.log_first_step = log_on_batch_idx, log_first_step
        self.log_validation = log_validation
        self.log_images_kwargs = log_images_kwargs or {}
        self.save_dir: Optional[Path] = None  # the run directory; set by the trainer glue

    def check_frequency(self, check_idx: int) -> bool:
        if (check_idx % self.batch_freq == 0 or check_idx in self.log_steps) and (check_idx > 0 or self.log_first_step):
            if check_idx in self.log_steps:
                self.log_steps.remove(check_idx)
            return True
        return False

    def to_grid(self, images: torch.Tensor) -> torch.Tensor:
        grid = torchvision.utils.make_grid(images, nrow=min(len(images), 4))
        if self.rescale:
            grid = (grid + 1.0) / 2.0
        return grid.clamp(0.0, 1.0)

    @rank_zero_only
    def log_local(self, save_dir: Path, split: str, images: dict[str, torch.Tensor],
                  global_step: int, current_epoch: int, batch_idx: int) -> list[Path]:
        root = Path(save_dir) / "images" / split
        root.mkdir(parents=True, exist_ok=True)
        written = []
        for k, img in images.items():
            grid = self.to_grid(img).permute(1, 2, 0).numpy()
            path = root / f"{k}_gs-{global_step:06}_e-{current_epoch:06}_b-{batch_idx:06}.png"
            Image.fromarray((grid * 255).round().astype(np.uint8)).save(path)
            written.append(path)
        return written

    def _to_logger(self, pl_module: pl.LightningModule, split: str, images: dict[str, torch.Tensor]) -> None:
        logger = pl_module.logger
        if logger is None:
            return
        exp = getattr(logger, "experiment", None)
        step = pl_module.global_step
        for k, img in images.items():
            grid = self.to_grid(img)
            if isinstance(logger, pl.loggers.TensorBoardLogger):
                exp.add_image(f"{split}/{k}", grid, global_step=step)
            elif isinstance(logger, pl.loggers.WandbLogger):
                logger.log_image(key=f"{split}/{k}", images=[grid], step=step)

    def log_img(self, pl_module: pl.LightningModule, batch: Any, batch_idx: int, split: str = "train") -> None:
        check_idx = batch_idx if self.log_on_batch_idx else pl_module.global_step
        if self.disabled or self.max_images <= 0 or not callable(getattr(pl_module, "log_images", None)):
            return
        if not self.check_frequency(check_idx):
            return
        trainer = getattr(pl_module, "_trainer", None)
        if trainer is not None and trainer.global_rank != 0:  # rank 0 alone writes grids: others need not draw
            return
        was_training = pl_module.training
        pl_module.eval()
        start = time.perf_counter()
        with torch.no_grad():
            images = pl_module.log_images(batch, split=split, **self.log_images_kwargs)
        if was_training:
            pl_module.train()
        # Sampling for the grids can cost as much as many training steps: show what it costs.
        self.last_seconds = time.perf_counter() - start
        rank_zero_info(f"image logging ({split}, step {pl_module.global_step}): {self.last_seconds:.2f} s")
        if pl_module.logger is not None:
            pl_module.logger.log_metrics({f"{split}/image_logging_s": self.last_seconds}, step=pl_module.global_step)
        images = {k: v[: self.max_images].detach().float().cpu() for k, v in images.items()
                  if isinstance(v, torch.Tensor) and v.ndim == 4}
        if self.clamp:
            images = {k: v.clamp(-1.0, 1.0) for k, v in images.items()}
        save_dir = self.save_dir or Path(pl_module.trainer.default_root_dir)
        self.log_local(save_dir, split, images,
                       pl_module.global_step, pl_module.current_epoch, batch_idx)
        self._to_logger(pl_module, split, images)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.log_img(pl_module, batch, batch_idx, split="train")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.log_validation and batch_idx == 0 and not trainer.sanity_checking:
            self.log_img(pl_module, batch, batch_idx, split="val")


class DeviceStatsCallback(pl.Callback):
    """Epoch wall time, samples/s, model TFLOP/s, MFU and peak accelerator memory (the original's
    CUDACallback, any device).

    The denoiser's training FLOPs per sample are counted once, on the first training step: the
    UNet's real inputs (latents, timesteps, context) are caught on their way in and the UNet is run
    on their first sample under FlopCounterMode (x 3 for forward + backward). Only the UNet is
    counted: the frozen first stage and the condition encoder are left out, so MFU measures the
    denoiser, as in the papers that report it. MFU needs the device's peak for the run's precision
    (``ldm.perf_flops.PEAK_TFLOPS``, or ``peak_tflops``); CPUs and unlisted devices get TFLOP/s only.

    Nothing here waits for the device on ordinary steps: it is synchronised at the epoch end and
    every ``log_every_n_steps`` steps, where the progress bar gets the MFU (or TFLOP/s) since the
    last such point. A run resumed mid-epoch gets no `on_train_epoch_start`: its first (partial)
    epoch is measured from the start of training.
    """

    def __init__(self,
                 peak_tflops: Optional[float] = None):  # the device's peak TFLOP/s, overriding the table
        super().__init__()
        if peak_tflops is not None and (isinstance(peak_tflops, bool) or not isinstance(peak_tflops, (int, float))
                                        or not peak_tflops > 0):
            raise ConfigError("lightning.callbacks.device_stats.params.peak_tflops",
                              f"must be a positive number of TFLOP/s, got {peak_tflops!r}")
        self.peak_override = None if peak_tflops is None else float(peak_tflops)
        self.peak_tflops: Optional[float] = self.peak_override
        self.flops_per_sample: Optional[int] = None
        self._captured: Optional[tuple] = None
        self._hook = None
        self._start = self._window_start = time.perf_counter()
        self._samples = self._window_samples = 0

    # ---- FLOPs, counted once ----

    @staticmethod
    def denoiser(pl_module: pl.LightningModule) -> Optional[torch.nn.Module]:
        wrapper = getattr(pl_module, "model", None)
        return getattr(wrapper, "diffusion_model", None)

    def _catch_inputs(self, module, args, kwargs) -> None:
        if module.training and torch.is_grad_enabled() and self._captured is None and args:
            self._captured = (args, kwargs)  # references only: counted after the step

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.peak_override is None:
            self.peak_tflops = peak_tflops(pl_module.device, trainer.precision)
        unet = self.denoiser(pl_module)
        if unet is not None and self.flops_per_sample is None:
            self._hook = unet.register_forward_pre_hook(self._catch_inputs, with_kwargs=True)

    def _count_flops(self, pl_module: pl.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        args, kwargs = self._captured
        self._captured = None
        self.flops_per_sample = training_flops_per_sample(self.denoiser(pl_module), args, kwargs)
        rank_zero_info(f"denoiser training FLOPs per sample: {self.flops_per_sample / 1e9:.4g} GFLOP"
                       + (f"; peak {self.peak_tflops:g} TFLOP/s for MFU" if self.peak_tflops else
                          "; no peak FLOP/s known for this device and precision: no MFU"))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # ---- timing ----

    def _reset(self, pl_module: pl.LightningModule) -> None:
        device = pl_module.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _synchronize(device)
        self._start = self._window_start = time.perf_counter()
        self._samples = self._window_samples = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset(pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset(pl_module)

    def throughput(self, samples: int, seconds: float) -> dict[str, float]:
        """samples/s, model TFLOP/s and MFU (when the peak is known) of ``samples`` in ``seconds``."""
        rate = samples / max(seconds, 1e-9)
        out = {"samples_per_s": rate}
        if self.flops_per_sample is not None:
            out["model_tflops_per_s"] = self.flops_per_sample * rate / 1e12
            if self.peak_tflops:
                out["mfu"] = mfu(self.flops_per_sample, rate, self.peak_tflops)
        return out

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, dict):
            first = next((v for v in batch.values() if hasattr(v, "__len__")), None)
            n = len(first) if first is not None else 0
            self._samples += n
            self._window_samples += n
        if self._captured is not None:
            self._count_flops(pl_module)
        every = trainer.log_every_n_steps
        if self.flops_per_sample is None or not every or trainer.global_step % every:
            return
        _synchronize(pl_module.device)  # a logging point: the only per-step wait
        now = time.perf_counter()
        stats = self.throughput(self._window_samples, now - self._window_start)
        self._window_start, self._window_samples = now, 0
        name = "mfu" if "mfu" in stats else "model_tflops_per_s"
        pl_module.log(name, stats[name], prog_bar=True, logger=False, on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = pl_module.device
        _synchronize(device)
        elapsed = time.perf_counter() - self._start
        # Reduced over ranks: the slowest rank's time, the sum of all ranks' throughput, the mean
        # utilisation, the largest memory.
        reduce = {"samples_per_s": "sum", "model_tflops_per_s": "sum", "mfu": "mean"}
        stats = {"stats/epoch_time_s": (elapsed, "max")}
        stats.update({f"stats/{k}": (v, reduce[k]) for k, v in self.throughput(self._samples, elapsed).items()})
        if device.type == "cuda":
            stats["stats/peak_memory_MiB"] = (torch.cuda.max_memory_allocated(device) / 2 ** 20, "max")
        for name, (value, how) in stats.items():
            pl_module.log(name, float(value), sync_dist=True, reduce_fx=how)
        rank_zero_info("  ".join(f"{k.split('/')[1]}={v[0]:{_FORMATS.get(k, '.2f')}}"
                                 for k, v in stats.items())
                       + (" (rank 0; the logged values are over all ranks)" if trainer.world_size > 1 else ""))


_FORMATS = {"stats/mfu": ".1%", "stats/model_tflops_per_s": ".4g"}


def _synchronize(device: torch.device) -> None:
    """Wait for the accelerator's queued work (a no-op on CPU), so that wall time measures it."""
    if device.type != "cpu" and torch.accelerator.is_available():
        torch.accelerator.synchronize(device)


class FinalCheckpoint(pl.Callback):
    """Saves `last.ckpt` when training stops, so steps after the last validation are never lost.

    Lightning's ModelCheckpoint writes `last.ckpt` only after validation (when validation runs
    every `val_check_interval` batches); a run stopped by `max_steps` in between would otherwise
    resume from an older state than the one it reached. A run that stops mid-epoch (`max_steps`,
    preemption, too many non-finite steps) is saved at the end of its last batch, where the
    checkpoint records the position inside the epoch; a run that ends with its epoch is saved
    when training ends. One write per step: `save` skips a step already saved.
    """

    def __init__(self, ckptdir: str):
        super().__init__()
        self.path = Path(ckptdir) / "last.ckpt"
        self._saved_step: Optional[int] = None

    def save(self, trainer: pl.Trainer) -> Path:
        if self._saved_step != trainer.global_step:
            trainer.save_checkpoint(self.path)
            self._saved_step = trainer.global_step
        return self.path

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._saved_step = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        max_steps = trainer.max_steps
        if trainer.should_stop or (max_steps is not None and 0 <= max_steps <= trainer.global_step):
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.interrupted or trainer.sanity_checking:
            return
        self.save(trainer)


class RunCheckpoint(pl.callbacks.ModelCheckpoint):
    """The run's ModelCheckpoint (numbered files, top-k, `last.ckpt` after validation), which leaves
    the end-of-training `last.ckpt` to FinalCheckpoint.

    Lightning's ModelCheckpoint also writes `last.ckpt` when training ends, after the fit loop has
    marked the epoch complete. A run limited by `max_steps` that resumes from that state starts one
    epoch too far on (another data order): FinalCheckpoint's save at the last batch end resumes
    exactly, so it must stay the newest `last.ckpt`. With the version counter off, the saves of
    both callbacks go to that one file, never to `last-v1.ckpt` behind an older `last.ckpt`.
    """

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(**kwargs)

    @property
    def state_key(self) -> str:
        # A plain ModelCheckpoint's key: runs saved before this class existed keep their state on resume.
        key = super().state_key
        return "ModelCheckpoint" + key[len(type(self).__qualname__):]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not any(isinstance(cb, FinalCheckpoint) for cb in trainer.callbacks):
            super().on_train_end(trainer, pl_module)


def save_last_checkpoint(trainer: pl.Trainer, ckptdir: Path) -> Path:
    """Write `last.ckpt` now, through the run's FinalCheckpoint when there is one (one write per step)."""
    final = next((cb for cb in trainer.callbacks if isinstance(cb, FinalCheckpoint)), None)
    if final is not None:
        return final.save(trainer)
    path = Path(ckptdir) / "last.ckpt"
    trainer.save_checkpoint(path)
    return path
