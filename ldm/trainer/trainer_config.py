"""The `lightning.trainer` section: legacy Lightning 1.x keys mapped, the rest validated, hardware resolved."""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import warnings
from typing import Any

import pytorch_lightning as pl
import torch

from ldm.config.errors import ConfigError
from ldm.trainer.cli import parse_gpus

# Lightning 1.x trainer arguments that Lightning 2 removed: renamed ones are mapped, the others
# were logging/UX knobs with no effect on results and are dropped with a warning.
RENAMED = {"replace_sampler_ddp": "use_distributed_sampler", "checkpoint_callback": "enable_checkpointing"}
DROPPED = ("weights_summary", "progress_bar_refresh_rate", "flush_logs_every_n_steps", "terminate_on_nan",
           "auto_select_gpus", "track_grad_norm", "amp_backend", "amp_level", "multiple_trainloader_mode",
           "stochastic_weight_avg", "prepare_data_per_node", "resume_from_checkpoint", "distributed_backend",
           "log_gpu_memory", "truncated_bptt_steps", "auto_scale_batch_size", "auto_lr_find")


# Trainer arguments that have a command-line flag of their own (ldm.trainer.cli); --gpus and --devices map to more.
CLI_TRAINER_KEYS = ("accelerator", "num_nodes", "strategy", "precision", "max_steps", "max_epochs")


def trainer_parameters() -> set[str]:
    return {n for n in inspect.signature(pl.Trainer.__init__).parameters if n != "self"}


def normalise_trainer_config(cfg: dict[str, Any], opt: Any) -> dict[str, Any]:
    """Return Trainer kwargs from the config section and the command line (command line wins)."""
    cfg = dict(cfg)
    for old, new in RENAMED.items():
        if old in cfg:
            cfg[new] = cfg.pop(old)
    for key in DROPPED:
        if key in cfg:
            value = cfg.pop(key)
            if key == "resume_from_checkpoint" and value:
                raise ConfigError(f"lightning.trainer.{key}", "use -r/--resume <run dir or checkpoint> instead")
            warnings.warn(f"lightning.trainer.{key} was removed in Lightning 2 and is ignored")
    legacy_gpus = cfg.pop("gpus", None)
    gpus = opt.gpus if opt.gpus is not None else (None if legacy_gpus is None else str(legacy_gpus))
    if gpus is not None:
        try:
            accelerator, devices = parse_gpus(gpus)
        except ValueError as exc:
            raise ConfigError("--gpus", str(exc)) from None
        cfg["accelerator"], cfg["devices"] = accelerator, devices
    for key in CLI_TRAINER_KEYS:
        value = getattr(opt, key, None)
        if value is not None:
            cfg[key] = value
    if opt.devices is not None:
        cfg["devices"] = _parse_devices(opt.devices)
    if cfg.get("precision") in (16, "16"):
        cfg["precision"] = "16-mixed"
    cfg.setdefault("accelerator", "auto")
    cfg.setdefault("devices", 1 if cfg["accelerator"] in ("auto", "cpu") else "auto")
    unknown = sorted(set(cfg) - trainer_parameters())
    if unknown:
        raise ConfigError(f"lightning.trainer.{unknown[0]}", "not a Lightning 2 Trainer argument")
    check_accelerator(cfg)
    return cfg


def command_line_settings(trainer_kwargs: dict[str, Any], opt: Any) -> dict[str, Any]:
    """The Trainer arguments that the command line set (``--precision``, ``--max_steps``, ``--gpus``, ...),
    as the run directory's saved lightning config should record them: a run is then read and resumed
    as it was trained, not as its config file alone says."""
    keys = [k for k in CLI_TRAINER_KEYS if getattr(opt, k, None) is not None]
    if getattr(opt, "gpus", None) is not None:
        keys += ["accelerator", "devices"]
    if getattr(opt, "devices", None) is not None:
        keys.append("devices")
    plain = (str, int, float, bool, list)  # an FSDP strategy object stays out of the YAML
    return {k: trainer_kwargs[k] for k in dict.fromkeys(keys) if isinstance(trainer_kwargs.get(k), plain)}


def _parse_devices(spec: str) -> int | str | list[int]:
    if spec == "auto":
        return spec
    if "," in spec:
        try:
            return [int(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise ConfigError("--devices", f"expected a count, 'auto' or ids like 0,1; got {spec!r}") from None
    try:
        return int(spec)
    except ValueError:
        raise ConfigError("--devices", f"expected a count, 'auto' or ids like 0,1; got {spec!r}") from None


def check_accelerator(cfg: dict[str, Any]) -> None:
    accel = cfg.get("accelerator")
    check_strategy(cfg)
    if accel in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("--gpus/--accelerator",
                          "GPUs were requested but no CUDA device is visible on this machine; "
                          "run with --accelerator cpu (or check CUDA_VISIBLE_DEVICES and the driver)")
    if accel == "gpu" and isinstance(cfg.get("devices"), list):
        n = torch.cuda.device_count()
        missing = [i for i in cfg["devices"] if i >= n]
        if missing:
            raise ConfigError("--gpus/--devices", f"GPU ids {missing} requested but only {n} visible")


def num_devices(cfg: dict[str, Any]) -> int:
    devices = cfg.get("devices", 1)
    if isinstance(devices, list):
        return len(devices)
    if devices in ("auto", -1):
        if cfg.get("accelerator") in ("gpu", "cuda") or (cfg.get("accelerator") == "auto" and torch.cuda.is_available()):
            return max(torch.cuda.device_count(), 1)
        return 1
    return int(devices)


def check_strategy(cfg: dict[str, Any]) -> None:
    """Strategies that cannot run here fail at start-up with the flag to change (docs/distributed.md)."""
    strategy = cfg.get("strategy")
    if not isinstance(strategy, str):
        return
    accel = cfg.get("accelerator")
    on_cpu = accel == "cpu" or (accel == "auto" and not torch.cuda.is_available())
    if strategy.startswith("fsdp") and on_cpu:
        # Lightning 2 implements FSDP for CUDA devices only.
        raise ConfigError("--strategy", f"{strategy!r} needs GPUs (Lightning runs FSDP on CUDA devices only); "
                          "on CPU use --strategy ddp")
    if strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("--strategy", f"{strategy!r} needs the deepspeed package (pip install deepspeed, on a "
                          "machine with CUDA), or use --strategy ddp or fsdp")


# Blocks FSDP wraps (shards, gathers and frees) one at a time by default: the UNet's residual and
# attention blocks, so that only one block's full weights live on a GPU at once.
FSDP_WRAP = ("ldm.modules.diffusionmodules.blocks.ResBlock", "ldm.modules.attention.SpatialTransformer",
             "ldm.modules.diffusionmodules.blocks.AttentionBlock")
FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD")


def fsdp_strategy(section: dict[str, Any], strategy: Any) -> Any:
    """A Lightning ``FSDPStrategy`` from the ``lightning.fsdp`` section::

        lightning:
          trainer: {strategy: fsdp}
          fsdp:
            wrap: [ldm.modules.diffusionmodules.blocks.ResBlock, ...]   # default: FSDP_WRAP
            sharding_strategy: FULL_SHARD     # FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD
            activation_checkpointing: false   # recompute the wrapped blocks in the backward pass
            state_dict_type: full             # full: one checkpoint any single process loads

    Wrapped classes must be ``torch.nn.Module`` classes of this package (``ldm.``): importing them
    runs no code a config could choose.
    """
    from pytorch_lightning.strategies import FSDPStrategy

    if strategy != "fsdp":
        raise ConfigError("lightning.fsdp", f"configures FSDP, but the strategy is {strategy!r}; "
                          "pass --strategy fsdp (or lightning.trainer.strategy: fsdp)")
    section = dict(section)
    unknown = sorted(set(section) - {"wrap", "sharding_strategy", "activation_checkpointing", "state_dict_type"})
    if unknown:
        raise ConfigError(f"lightning.fsdp.{unknown[0]}", "unknown key (wrap, sharding_strategy, "
                          "activation_checkpointing, state_dict_type)")
    wrap = {_module_class(name, f"lightning.fsdp.wrap[{i}]") for i, name in enumerate(section.get("wrap", FSDP_WRAP))}
    sharding = str(section.get("sharding_strategy", "FULL_SHARD"))
    if sharding not in FSDP_SHARDING:
        raise ConfigError("lightning.fsdp.sharding_strategy", f"expected one of {FSDP_SHARDING}, got {sharding!r}")
    state_dict_type = str(section.get("state_dict_type", "full"))
    if state_dict_type not in ("full", "sharded"):
        raise ConfigError("lightning.fsdp.state_dict_type", f"expected 'full' or 'sharded', got {state_dict_type!r}")
    return FSDPStrategy(auto_wrap_policy=wrap, sharding_strategy=sharding, state_dict_type=state_dict_type,
                        activation_checkpointing_policy=wrap if section.get("activation_checkpointing") else None)


def _module_class(name: Any, path: str) -> type:
    if not isinstance(name, str) or not name.startswith("ldm.") or "." not in name[4:]:
        raise ConfigError(path, f"expected a module class of this package like 'ldm.modules.attention."
                          f"SpatialTransformer', got {name!r}")
    module_name, attr = name.rsplit(".", 1)
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        raise ConfigError(path, f"cannot find {name!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ConfigError(path, f"{name!r} is not a torch.nn.Module class")
    return cls
