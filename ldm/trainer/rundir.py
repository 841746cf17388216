"""Run directories: `logs/<timestamp>_<name>/{configs,checkpoints,images}` and resuming from them."""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from ldm.checkpoint import atomic_path
from ldm.config.errors import ConfigError


@dataclass
class RunDir:
    logdir: Path                  # the run directory
    now: str                      # timestamp identifying this invocation (config dump names)
    resume_ckpt: Optional[Path] = None  # checkpoint to continue from, when resuming
    base_configs: list[Path] = field(default_factory=list)  # configs to merge (resumed runs: saved ones first)

    @property
    def ckptdir(self) -> Path:
        return self.logdir / "checkpoints"

    @property
    def cfgdir(self) -> Path:
        return self.logdir / "configs"

    @property
    def imagedir(self) -> Path:
        return self.logdir / "images"


def timestamp() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")


def new_run(logroot: str | Path, base: list[str], name: str = "", postfix: str = "",
            debug: bool = False, now: Optional[str] = None) -> RunDir:
    now = now or timestamp()
    if name:
        suffix = "_" + name
    elif base:
        suffix = "_" + Path(base[0]).stem
    else:
        suffix = ""
    root = Path(logroot) / "debug" if debug else Path(logroot)
    logdir = root / f"{now}{suffix}{postfix}"
    # Two runs started in the same second with the same name must not share a directory.
    n = 1
    while logdir.exists():
        logdir = root / f"{now}{suffix}{postfix}-{n}"
        n += 1
    return RunDir(logdir=logdir, now=now, base_configs=[Path(b) for b in base])


def resume_run(resume: str, base: list[str], now: Optional[str] = None) -> RunDir:
    """Resume from a run directory or from a checkpoint file inside ``<run>/checkpoints``."""
    path = Path(resume)
    if not path.exists():
        raise ConfigError("--resume", f"cannot find {resume!r} (expected a run directory or a .ckpt file)")
    if path.is_file():
        if path.parent.name != "checkpoints":
            raise ConfigError("--resume", f"{resume!r}: a checkpoint to resume must lie in <run>/checkpoints/")
        logdir, ckpt = path.parent.parent, path
    else:
        logdir = path
        ckpt = logdir / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise ConfigError("--resume", f"{resume!r} has no checkpoints/last.ckpt to resume from")
    saved = sorted((logdir / "configs").glob("*.yaml"))
    if not saved and not base:
        raise ConfigError("--resume", f"{logdir}/configs holds no saved configs and no --base was given")
    return RunDir(logdir=logdir, now=now or timestamp(), resume_ckpt=ckpt,
                  base_configs=saved + [Path(b) for b in base])


def write_configs(cfgdir: Path, now: str, project: Any, lightning: Any) -> tuple[Path, Path]:
    """Write ``<now>-project.yaml`` and ``<now>-lightning.yaml`` into ``cfgdir``, atomically."""
    cfgdir.mkdir(parents=True, exist_ok=True)
    paths = (cfgdir / f"{now}-project.yaml", cfgdir / f"{now}-lightning.yaml")
    for path, cfg in zip(paths, (project, OmegaConf.create({"lightning": lightning}))):
        with atomic_path(path) as tmp:
            OmegaConf.save(cfg, tmp)
    return paths


def save_configs(run: RunDir, config: DictConfig) -> tuple[Path, Path]:
    """Write the resolved project and lightning configs of ``config`` into ``<run>/configs``."""
    project = OmegaConf.masked_copy(config, [k for k in config.keys() if k != "lightning"])
    return write_configs(run.cfgdir, run.now, project, config.get("lightning", {}))
