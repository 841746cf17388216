"""Build a diffusion model from its config and load a checkpoint for sampling.

A run directory written by the trainer looks like ``<run>/configs/<now>-project.yaml`` (plus
``<now>-lightning.yaml``) and ``<run>/checkpoints/last.ckpt``. ``load_run`` finds those; a bare
``.ckpt``/``.safetensors`` file needs its config passed to ``load_model``.

Checkpoints are read through :mod:`ldm.checkpoint`, which never executes pickled code, and are
loaded strictly by default, so a checkpoint that does not fit the config is an error rather
than a silently half-random model.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from omegaconf import DictConfig, OmegaConf

from ldm.checkpoint import ema_weights, load_into, load_state_dict
from ldm.config.errors import ConfigError
from ldm.config.loading import merge_configs
from ldm.inference.runtime import select_device
from ldm.trainer.rundir import config_order, versioned_last_ahead
from ldm.util import instantiate_from_config

__all__ = ["RunFiles", "ema_weights", "find_run", "load_model", "load_run", "model_config", "strip_ckpt_paths"]

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth")
ConfigSource = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], Mapping, DictConfig]


@dataclass
class RunFiles:
    """What ``find_run`` located: the run directory, its saved configs and the checkpoint."""

    logdir: Path
    ckpt: Path
    configs: list[Path] = field(default_factory=list)


def find_run(run_dir_or_ckpt: Union[str, os.PathLike]) -> RunFiles:
    """Locate ``<run>/configs/*.yaml`` and ``<run>/checkpoints/last.ckpt`` (or the given file)."""
    path = Path(run_dir_or_ckpt)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run directory or checkpoint")
    if path.is_file():
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise ValueError(f"{path}: not a checkpoint (expected one of {', '.join(CHECKPOINT_SUFFIXES)})")
        # <run>/checkpoints/x.ckpt, <run>/checkpoints/trainstep_checkpoints/x.ckpt (periodic
        # snapshots), or a file anywhere else, which is taken to sit in its run directory.
        if path.parent.name == "trainstep_checkpoints" and path.parent.parent.name == "checkpoints":
            logdir = path.parent.parent.parent
        elif path.parent.name == "checkpoints":
            logdir = path.parent.parent
        else:
            logdir = path.parent
        ckpt = path
    else:
        logdir = path
        ckpt = path / "checkpoints" / "last.ckpt"
        if ckpt.is_file():
            ckpt = versioned_last_ahead(ckpt.parent, ckpt, action="loading") or ckpt
        else:
            found = sorted((path / "checkpoints").glob("*")) if (path / "checkpoints").is_dir() else []
            found = [p for p in found if p.suffix in CHECKPOINT_SUFFIXES]
            if len(found) != 1:
                listing = ", ".join(p.name for p in found) or "none"
                raise FileNotFoundError(f"{ckpt}: checkpoint not found (checkpoints in the run: {listing}); "
                                        "pass the checkpoint file itself")
            ckpt = found[0]
    configs = sorted((logdir / "configs").glob("*.yaml"), key=config_order)  # invocation order
    return RunFiles(logdir=logdir, ckpt=ckpt, configs=configs)


def model_config(config: ConfigSource) -> DictConfig:
    """The ``model`` section from YAML path(s) (merged left to right) or a config object; a
    mapping with ``target`` at the top is taken to be the model config itself."""
    if isinstance(config, (str, os.PathLike)):
        config = [config]
    if isinstance(config, Sequence) and not isinstance(config, (str, Mapping)):
        if not config:
            raise ConfigError("--config", "no config files given")
        cfg = merge_configs(list(config))
        where = ", ".join(map(str, config))
    else:
        cfg = config if isinstance(config, DictConfig) else OmegaConf.create(dict(config))
        where = "config"
    if "model" in cfg:
        cfg = cfg.model
    if "target" not in cfg:
        raise ConfigError(where, "no `model` section (with target/params) to build")
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    return cfg


def strip_ckpt_paths(node: Any) -> None:
    """Drop every ``ckpt_path`` entry: the checkpoint being loaded holds all weights, and the
    files a training config pointed at (e.g. the autoencoder's) need not exist any more."""
    if isinstance(node, DictConfig):
        for key in list(node.keys()):
            if key == "ckpt_path":
                del node[key]
            else:
                strip_ckpt_paths(node[key])
    elif OmegaConf.is_list(node):
        for item in node:
            strip_ckpt_paths(item)


def load_model(
    config_path_or_cfg: ConfigSource,
    ckpt: Union[str, os.PathLike, None] = None,
    device: Union[str, torch.device, None] = None,
    prefer_ema: bool = True,
    strict: bool = True,
) -> torch.nn.Module:
    """Instantiate the config's model, load ``ckpt`` and return it in eval mode on ``device``.

    prefer_ema: sample with the EMA weights when the checkpoint has them (as the original
        scripts did through ``ema_scope``); the EMA copy itself is not kept in memory.
    strict: missing, unexpected or mis-shaped keys raise with a readable summary.
    Without ``ckpt`` the weights come from the config's own ``ckpt_path`` entries (or random
    initialisation), which is announced with a warning.
    """
    cfg = model_config(config_path_or_cfg)
    if cfg.get("params") is None:
        cfg.params = {}
    params = cfg.params
    if ckpt is not None:
        ckpt = Path(ckpt)
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint not found: {ckpt}")
        strip_ckpt_paths(cfg)
        if "use_ema" in params or _is_diffusion(cfg):
            params["use_ema"] = False  # EMA weights are copied into the model below instead
    else:
        warnings.warn("load_model without a checkpoint: weights come from the config's ckpt_path "
                      "entries, or are random", stacklevel=2)
    model = instantiate_from_config(cfg, path="model")
    if ckpt is not None:
        sd = load_state_dict(ckpt)
        if prefer_ema:
            sd, replaced = ema_weights(sd)
            log.info("%s: %s", ckpt, f"using EMA weights for {replaced} tensors" if replaced
                     else "no EMA weights in the checkpoint; using the trained weights")
        report = load_into(model, sd, strict=strict, path=str(ckpt))
        log.info("%s", report)
        if not report.ok:
            warnings.warn(str(report), stacklevel=2)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(select_device(device))


def _is_diffusion(cfg: DictConfig) -> bool:
    return str(cfg.get("target", "")).endswith((".DDPM", ".LatentDiffusion"))


def load_run(
    run_dir_or_ckpt: Union[str, os.PathLike],
    config: Optional[ConfigSource] = None,
    device: Union[str, torch.device, None] = None,
    prefer_ema: bool = True,
    strict: bool = True,
) -> torch.nn.Module:
    """``load_model`` on a run directory (or a checkpoint inside ``<run>/checkpoints``): its saved
    configs, merged in order, and ``last.ckpt``. ``config`` overrides the saved configs."""
    run = find_run(run_dir_or_ckpt)
    configs = config if config is not None else run.configs
    if not configs:
        raise ConfigError(str(run.logdir / "configs"), f"no saved configs for {run.ckpt}; pass --config")
    return load_model(configs, run.ckpt, device=device, prefer_ema=prefer_ema, strict=strict)
