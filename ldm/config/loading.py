"""Loading, merging and overriding YAML experiment configs.

YAML is parsed with OmegaConf (a safe loader: no Python object tags), so reading a config never
runs code; what a config may *build* is decided later by the target allow-list.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ldm.config.errors import ConfigError

TOP_LEVEL_KEYS = ("model", "data", "lightning")


def load_yaml(path: str | Path) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "config file not found")
    try:
        cfg = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(str(path), f"cannot parse YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not a text file in UTF-8 ({exc})") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the config file ({exc})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(str(path), f"a config must be a mapping at the top level, got {type(cfg).__name__}")
    unknown = [k for k in cfg.keys() if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}",
                          f"unknown top-level section; expected only {', '.join(TOP_LEVEL_KEYS)}")
    return cfg


def merge_configs(paths: Sequence[str | Path]) -> DictConfig:
    """Merge configs left to right: later files override earlier ones key by key."""
    configs = [load_yaml(p) for p in paths]
    return OmegaConf.merge(*configs) if configs else OmegaConf.create()


def apply_overrides(config: DictConfig, dotlist: Iterable[str]) -> DictConfig:
    """Apply ``key.path=value`` overrides; values are parsed as YAML (numbers, lists, booleans)."""
    dotlist = list(dotlist)
    for item in dotlist:
        key, _, value = item.partition("=")
        if not key or not _:
            raise ConfigError(item, "override must look like key.path=value")
        if key.split(".")[0] not in TOP_LEVEL_KEYS:
            raise ConfigError(item, f"override key must start with one of {', '.join(TOP_LEVEL_KEYS)}")
    for item in dotlist:  # one at a time, so an error names the override that caused it
        try:
            config = OmegaConf.merge(config, OmegaConf.from_dotlist([item]))
        except (yaml.YAMLError, OmegaConfBaseException) as exc:
            detail = " ".join(str(exc).split())
            raise ConfigError(f"command line: {item}", f"bad override: {detail}") from None
    return config


def load_experiment(paths: Sequence[str | Path], overrides: Iterable[str] = ()) -> DictConfig:
    """The resolved experiment config: merged files, then command-line overrides."""
    config = apply_overrides(merge_configs(paths), overrides)
    if "model" not in config:
        raise ConfigError(", ".join(map(str, paths)) or "config", "no `model` section in the merged config")
    try:
        OmegaConf.resolve(config)
    except OmegaConfBaseException as exc:
        raise ConfigError("config", f"cannot resolve interpolation: {exc}") from exc
    return config
