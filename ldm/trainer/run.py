"""`main.py`: build model, data and trainer from configs, then train and/or test.

Reads as the original's flow — parse, resolve run dir, merge configs, build, fit, test — with each
piece in its own module so that this file stays a table of contents.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Optional, Sequence

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_info

from ldm.checkpoint import allow_missing_checkpoints
from ldm.perf import enable_tf32
from ldm.config import ConfigError, check_config_tree, set_trust_all_targets
from ldm.config.loading import load_experiment
from ldm.trainer.callbacks import FinalCheckpoint, RunCheckpoint
from ldm.trainer.checkpoint_io import AtomicCheckpointIO
from ldm.trainer.cli import parse_args
from ldm.trainer.distributed import RUN_NOW_ENV, BatchNormStats, RankSeeds, shared_now
from ldm.trainer.loggers import build_logger
from ldm.trainer.nonfinite import NonFiniteGuard
from ldm.trainer.preemption import PreemptionCheckpoint
from ldm.trainer.rundir import RunDir, new_run, resume_run
from ldm.trainer.trainer_config import command_line_settings, fsdp_strategy, normalise_trainer_config, num_devices
from ldm.util import count_params, instantiate_from_config


def default_callbacks(run: RunDir, config: DictConfig, lightning_config: DictConfig,
                      resume: bool) -> dict[str, Any]:
    return {
        "setup_callback": {"target": "ldm.trainer.callbacks.SetupCallback",
                           "params": {"resume": resume, "now": run.now, "logdir": str(run.logdir),
                                      "ckptdir": str(run.ckptdir), "cfgdir": str(run.cfgdir),
                                      "config": config, "lightning_config": lightning_config}},
        "image_logger": {"target": "ldm.trainer.callbacks.ImageLogger",
                         "params": {"batch_frequency": 750, "max_images": 4, "clamp": True}},
        "learning_rate_logger": {"target": "pytorch_lightning.callbacks.LearningRateMonitor",
                                 "params": {"logging_interval": "step"}},
        "device_stats": {"target": "ldm.trainer.callbacks.DeviceStatsCallback"},
        # Exact resume: RNG states in every checkpoint (the data position is saved by the loader).
        "rng_state": {"target": "ldm.trainer.resume.RNGState"},
        # SIGTERM/SIGUSR1: save last.ckpt after the current batch and stop (docs/reliability.md).
        "preemption": {"target": "ldm.trainer.preemption.PreemptionCheckpoint",
                       "params": {"ckptdir": str(run.ckptdir), "signals": ["SIGTERM", "SIGUSR1"]}},
        # NaN/inf loss or gradients: skip the update; stop with last.ckpt after max_consecutive in a row.
        "nonfinite_guard": {"target": "ldm.trainer.nonfinite.NonFiniteGuard",
                            "params": {"ckptdir": str(run.ckptdir), "max_consecutive": 10}},
        # Periodic weights-only snapshots, kept forever: a run's history for later evaluation.
        "step_checkpoint": {"target": "pytorch_lightning.callbacks.ModelCheckpoint",
                            "params": {"dirpath": str(run.ckptdir / "trainstep_checkpoints"),
                                       "filename": "{epoch:06}-{step:09}", "verbose": True,
                                       "save_top_k": -1, "every_n_train_steps": 10000,
                                       "save_weights_only": True}},
    }


def checkpoint_callback(run: RunDir, model: pl.LightningModule, lightning_config: DictConfig) -> pl.Callback:
    # No version counter (RunCheckpoint): FinalCheckpoint writes last.ckpt too; numbered files are
    # named by epoch and step, so the same name is the same state.
    params: dict[str, Any] = {"dirpath": str(run.ckptdir), "filename": "{epoch:06}-{step:09}", "verbose": True,
                              "save_last": True}
    monitor = getattr(model, "monitor", None)
    if monitor:
        params.update(monitor=monitor, save_top_k=3)
    params.update(_section(lightning_config, "modelcheckpoint", "params"))
    return RunCheckpoint(**params)


def _section(config: DictConfig, *keys: str) -> dict:
    """A nested config section as a plain dict ({} when absent)."""
    node: Any = config
    for key in keys:
        node = node.get(key) if node is not None else None
    if node is None:
        return {}
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def build_callbacks(run: RunDir, model, config, lightning_config, resume: bool,
                    seed: int = 23) -> list[pl.Callback]:
    specs = OmegaConf.merge(default_callbacks(run, config, lightning_config, resume),
                            lightning_config.get("callbacks", {}))
    callbacks = []
    for name, spec in specs.items():
        if spec is None:  # `lightning.callbacks.<name>: null` disables a default
            continue
        cb = instantiate_from_config(spec, path=f"lightning.callbacks.{name}")
        if hasattr(cb, "save_dir"):
            cb.save_dir = run.logdir
        callbacks.append(cb)
    callbacks.append(checkpoint_callback(run, model, lightning_config))
    callbacks.append(FinalCheckpoint(str(run.ckptdir)))
    callbacks.append(RankSeeds(seed))  # not optional: ranks drawing the same noise would waste the batch
    # First: checkpoints written at a batch end must hold the averaged statistics the run continues with.
    callbacks.insert(0, BatchNormStats())  # BatchNorm statistics alike on all ranks (a no-op in one process)
    return callbacks


def learning_rate(config: DictConfig, trainer_kwargs: dict, model, scale: bool) -> float:
    """The optimizer's learning rate, printed with the rule that produced it.

    ``data.params.batch_size`` is per process; one optimizer step sees accumulate * devices * nodes
    * batch_size examples (DDP averages the gradients over ranks). With --scale_lr the rate grows
    linearly with that global batch, as in the original; without, base_learning_rate is used as is.
    """
    base_lr = float(config.model.get("base_learning_rate", 1e-4))
    accumulate = int(trainer_kwargs.get("accumulate_grad_batches", getattr(model, "accumulate_grad_batches", 1)))
    batch_size = int(config.data.params.batch_size) if "data" in config else 1
    ngpu = num_devices(trainer_kwargs) * int(trainer_kwargs.get("num_nodes", 1) or 1)
    if not scale:
        rank_zero_info(f"Learning rate {base_lr:.2e} (base_learning_rate; --scale_lr is off); global batch "
                       f"{accumulate * ngpu * batch_size} = {accumulate} (accumulate_grad_batches) * {ngpu} "
                       f"(devices x nodes) * {batch_size} (batch size per device)")
        return base_lr
    lr = accumulate * ngpu * batch_size * base_lr
    rank_zero_info(f"Learning rate {lr:.2e} = {accumulate} (accumulate_grad_batches) * {ngpu} (devices) * "
                   f"{batch_size} (batch size) * {base_lr:.2e} (base_learning_rate)")
    return lr


def describe(model, data, config: DictConfig) -> str:
    lines = ["Resolved config:", OmegaConf.to_yaml(config), f"Model: {type(model).__module__}.{type(model).__name__}"]
    total = count_params(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines.append(f"  parameters: {total / 1e6:.2f} M ({trainable / 1e6:.2f} M trainable)")
    for name, child in model.named_children():
        lines.append(f"  {name}: {type(child).__name__}, {count_params(child) / 1e6:.2f} M")
    if data is not None:
        data.prepare_data()
        data.setup("fit")
        for split, ds in getattr(data, "datasets", {}).items():
            lines.append(f"Data {split}: {type(ds).__name__}, {len(ds)} examples")
    return "\n".join(lines)


def run(argv: Optional[Sequence[str]] = None) -> int:
    opt, overrides = parse_args(argv)
    set_trust_all_targets(opt.trust_config_targets)
    previous = allow_missing_checkpoints(True) if opt.allow_missing_ckpt else None
    inherited_now = os.environ.get(RUN_NOW_ENV)
    try:
        return _run(opt, overrides)
    finally:  # in-process callers (tests, notebooks) get the process-wide switches back
        if inherited_now is None:
            os.environ.pop(RUN_NOW_ENV, None)
        set_trust_all_targets(False)
        if opt.allow_missing_ckpt:
            allow_missing_checkpoints(previous)


def _run(opt, overrides: list[str]) -> int:
    run_dir = resume_run(opt.resume, opt.base, now=shared_now()) if opt.resume else new_run(
        opt.logdir, opt.base, opt.name, opt.postfix, opt.debug, now=shared_now())
    config = load_experiment(run_dir.base_configs, overrides)
    lightning_config = config.pop("lightning", OmegaConf.create())
    check_config_tree(OmegaConf.masked_copy(config, [k for k in ("model", "data") if k in config]))
    trainer_kwargs = normalise_trainer_config(_section(lightning_config, "trainer"), opt)
    lightning_config.trainer = OmegaConf.merge(lightning_config.get("trainer") or {},
                                               command_line_settings(trainer_kwargs, opt))
    if lightning_config.get("fsdp") is not None:  # FSDP with block-wise wrapping (docs/distributed.md)
        trainer_kwargs["strategy"] = fsdp_strategy(_section(lightning_config, "fsdp"), trainer_kwargs.get("strategy"))
    pl.seed_everything(opt.seed, workers=True)
    enable_tf32()  # TF32 tensor cores for float32 work on Ampere+ GPUs (ldm/perf.py); a no-op on CPU

    model = instantiate_from_config(config.model, path="model")
    data_config = config.get("data")
    if opt.latent_cache and data_config is not None:  # latents encoded once (scripts/cache_latents.py)
        from ldm.data.latent_cache import cached_data_config
        data_config = cached_data_config(config, model, opt.latent_cache)
    data = instantiate_from_config(data_config, path="data") if data_config is not None else None
    if data is not None and getattr(data, "seed", False) is None:
        data.seed = opt.seed  # the data order: one permutation shared by all ranks (ldm.trainer.distributed)
    accumulate = int(trainer_kwargs.get("accumulate_grad_batches", 1))
    if not model.automatic_optimization and accumulate > 1:
        # Lightning 2 refuses trainer-level accumulation with manual optimisation: the model does it.
        model.accumulate_grad_batches = trainer_kwargs.pop("accumulate_grad_batches")
    model.learning_rate = learning_rate(config, trainer_kwargs, model, opt.scale_lr)
    strategy = expect_unused_parameters(trainer_kwargs)
    if not model.automatic_optimization and strategy != trainer_kwargs.get("strategy"):
        # GAN autoencoders alternate generator and discriminator steps: each backward leaves the other
        # network's parameters without gradients, which DDP must be told to expect.
        trainer_kwargs["strategy"] = strategy
    if opt.dry_run:
        print(describe(model, data, config))
        print(f"Trainer: {trainer_kwargs}\nRun directory would be: {run_dir.logdir}")
        return 0
    if data is None:
        raise ConfigError("data", "no `data` section: nothing to train or test on")

    logger_kind = opt.logger or _section(lightning_config, "logger").get("kind", "tensorboard")
    logger = build_logger(logger_kind, run_dir.logdir, run_dir.logdir.name, opt.project, opt.wandb_offline)
    trainer = pl.Trainer(default_root_dir=str(run_dir.logdir), logger=logger if logger is not None else False,
                         callbacks=build_callbacks(run_dir, model, config, lightning_config, bool(opt.resume),
                                                   seed=opt.seed),
                         plugins=[AtomicCheckpointIO()], **trainer_kwargs)
    # Processes Lightning starts for the other ranks re-run this command: they inherit the run's name.
    os.environ.setdefault(RUN_NOW_ENV, run_dir.now)
    if opt.train:
        try:
            trainer.fit(model, data, ckpt_path=str(run_dir.resume_ckpt) if run_dir.resume_ckpt else None)
        except Exception:
            # Saving is a collective under DDP/FSDP: after one rank failed it could wait forever.
            if not opt.debug and trainer.world_size == 1 and trainer.global_step > 0:
                _save_crash_checkpoint(trainer, run_dir)
            raise
        stopped = _stop_reason(trainer)
        if stopped is not None:
            return stopped
    if not opt.no_test and not trainer.interrupted and _has_split(data, "test"):
        trainer.test(model, data)
    return 0


DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def expect_unused_parameters(trainer_kwargs: dict) -> Any:
    """The strategy, switched to its ``find_unused_parameters`` variant where it is plain DDP (asked
    for, or what Lightning picks for several devices); any other strategy is returned as is."""
    strategy = trainer_kwargs.get("strategy", "auto")
    processes = num_devices(trainer_kwargs) * int(trainer_kwargs.get("num_nodes", 1) or 1)
    if strategy in (None, "auto") and processes > 1:
        strategy = "ddp"
    return f"{strategy}_find_unused_parameters_true" if strategy in DDP_STRATEGIES else trainer_kwargs.get("strategy")


# Exit status of a run that stopped because of too many non-finite steps (preemption exits 0).
EXIT_NONFINITE = 3


def _stop_reason(trainer: pl.Trainer) -> Optional[int]:
    """The exit status of a run its own callbacks stopped early (testing is skipped), else None."""
    for cb in trainer.callbacks:
        if isinstance(cb, NonFiniteGuard) and cb.stopped_at is not None:
            return EXIT_NONFINITE
        if isinstance(cb, PreemptionCheckpoint) and cb.saved_at is not None:
            return 0
    return None


def _has_split(data, split: str) -> bool:
    return split in getattr(data, "dataset_configs", {})


def _save_crash_checkpoint(trainer: pl.Trainer, run_dir: RunDir) -> None:
    """Keep the state reached before a crash beside (never over) the regular checkpoints."""
    path = run_dir.ckptdir / f"crash-{run_dir.now}.ckpt"
    try:
        trainer.save_checkpoint(path)
        print(f"Saved the state before the crash to {path}", file=sys.stderr)
    except Exception:  # the real error matters more than this checkpoint
        traceback.print_exc()


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return run(argv)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
