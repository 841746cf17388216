"""Run directories: `logs/<timestamp>_<name>/{configs,checkpoints,images}` and resuming from them."""
from __future__ import annotations

import datetime
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from ldm.checkpoint import DamagedCheckpointError, UnsafeCheckpointError, atomic_path, load_training_checkpoint
from ldm.config.errors import ConfigError
from ldm.trainer.checkpoint_io import previous_path


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
    """Resume from a run directory or from a checkpoint file inside ``<run>/checkpoints``.

    A run directory resumes from the newest intact checkpoint: ``last.ckpt``, else
    ``last-previous.ckpt``, else the ``epoch=…-step=….ckpt`` with the most steps; skipping a
    damaged one is announced on stderr. A named file must itself be intact. A checkpoint that holds
    more than tensors and plain data is refused outright (it could run code).
    """
    path = Path(resume)
    if not path.exists():
        raise ConfigError("--resume", f"cannot find {resume!r} (expected a run directory or a .ckpt file)")
    if path.is_file():
        if path.parent.name != "checkpoints":
            raise ConfigError("--resume", f"{resume!r}: a checkpoint to resume must lie in <run>/checkpoints/")
        logdir = path.parent.parent
        problem = _checkpoint_problem(path)
        if problem:
            raise ConfigError("--resume", f"cannot resume from {problem}")
        ckpt = path
    else:
        logdir = path
        ckpt = newest_intact_checkpoint(logdir / "checkpoints", resume)
    saved = sorted((logdir / "configs").glob("*.yaml"), key=config_order)
    if not saved and not base:
        raise ConfigError("--resume", f"{logdir}/configs holds no saved configs and no --base was given")
    return RunDir(logdir=logdir, now=now or timestamp(), resume_ckpt=ckpt,
                  base_configs=saved + [Path(b) for b in base])


_STEP = re.compile(r"step=(\d+)")


def resume_candidates(ckptdir: Path) -> list[Path]:
    """Checkpoints a run could resume from, newest first (see :func:`resume_run`)."""
    last = ckptdir / "last.ckpt"
    stepped = sorted((p for p in ckptdir.glob("*.ckpt") if _STEP.search(p.name) and "last" not in p.name),
                     key=lambda p: (int(_STEP.search(p.name).group(1)), p.name), reverse=True)
    return [p for p in (last, Path(previous_path(last))) if p.is_file()] + stepped


def newest_intact_checkpoint(ckptdir: Path, resume: str = "") -> Path:
    candidates = resume_candidates(ckptdir)
    if not candidates:
        raise ConfigError("--resume", f"{resume or ckptdir.parent}: no checkpoints/last.ckpt (nor any other "
                          "checkpoint) to resume from")
    problems = []
    for ckpt in candidates:
        problem = _checkpoint_problem(ckpt)
        if problem is None:
            if problems:
                print("WARNING: " + "; ".join(problems) + f". RESUMING FROM THE OLDER CHECKPOINT {ckpt} instead.",
                      file=sys.stderr, flush=True)
            return versioned_last_ahead(ckptdir, ckpt) or ckpt
        problems.append(f"skipping {problem}")
    raise ConfigError("--resume", f"no intact checkpoint to resume from in {ckptdir}: " + "; ".join(problems))


def versioned_last_ahead(ckptdir: Path, chosen: Path, action: str = "resuming from") -> Optional[Path]:
    """An intact ``last-v<N>.ckpt`` with more steps than ``chosen``, announced on stderr; else None.

    Runs written before the run's ModelCheckpoint stopped numbering its saves can hold an older
    ``last.ckpt`` (the state saved when a run ended) next to newer ``last-v<N>.ckpt`` files (the
    saves of the run that extended it). Resuming and loading a run for sampling both take the
    newest; ``action`` words the warning."""
    def steps(ckpt: Path) -> Optional[int]:  # one read per file; None: not a training state to take
        try:
            state, _ = _resumable_state(ckpt)
        except ConfigError:  # a file that would run code is passed over, never loaded
            return None
        return None if state is None else int(state["global_step"])

    versioned = [p for p in ckptdir.glob("last-v*.ckpt") if re.fullmatch(r"last-v\d+\.ckpt", p.name)]
    ahead = [(n, p.name, p) for p in versioned if (n := steps(p)) is not None]
    if not ahead:
        return None
    best_steps, _, best = max(ahead)
    chosen_steps = steps(chosen)
    if chosen_steps is None or best_steps <= chosen_steps:
        return None
    print(f"WARNING: {best} holds {best_steps} steps, {chosen} only {chosen_steps} (a run directory written by "
          f"an earlier version); {action} {best}.", file=sys.stderr, flush=True)
    return best


def _checkpoint_problem(ckpt: Path) -> Optional[str]:
    """None when ``ckpt`` can be resumed from; else what is wrong, starting with its path.

    Raises ConfigError for a checkpoint that would run code: that is not damage to route around.
    """
    return _resumable_state(ckpt)[1]


def _resumable_state(ckpt: Path) -> tuple[Optional[dict], Optional[str]]:
    """(the training state, None), or (None, what is wrong); ConfigError for a file that would run code."""
    try:
        state = load_training_checkpoint(ckpt, mmap=True)
    except UnsafeCheckpointError as exc:
        raise ConfigError("--resume", str(exc)) from None
    except DamagedCheckpointError as exc:
        return None, f"damaged checkpoint {exc}"
    if not isinstance(state, dict) or "optimizer_states" not in state or "global_step" not in state:
        return None, f"checkpoint {ckpt}: holds weights only, not a training state to resume"
    return state, None


_CONFIG_NAME = re.compile(r"^(?P<now>.*?)(?:\.(?P<n>\d+))?-(?P<kind>project|lightning)\.yaml$")


def config_order(path: Path) -> tuple:
    """Saved configs in invocation order: by timestamp, then by the ``.<n>`` that tells apart
    invocations of the same second (names are ``<now>[.<n>]-project.yaml``)."""
    m = _CONFIG_NAME.match(path.name)
    if m is None:
        return (path.name, 0, "")
    return (m["now"], int(m["n"] or 0), m["kind"])


def write_configs(cfgdir: Path, now: str, project: Any, lightning: Any) -> tuple[Path, Path]:
    """Write ``<now>-project.yaml`` and ``<now>-lightning.yaml`` into ``cfgdir``, atomically.

    An earlier invocation's record is never overwritten: when either name exists (a resumed run
    started in the same second), ``<now>.1-…``, ``<now>.2-…`` are used instead. Names are claimed
    by exclusive creation, so two processes cannot pick the same one.
    """
    cfgdir.mkdir(parents=True, exist_ok=True)
    paths = _claim_config_names(cfgdir, now)
    for path, cfg in zip(paths, (project, OmegaConf.create({"lightning": lightning}))):
        with atomic_path(path) as tmp:
            OmegaConf.save(cfg, tmp)
    return paths


def _claim_config_names(cfgdir: Path, now: str) -> tuple[Path, Path]:
    n = 0
    while True:
        stamp = now if n == 0 else f"{now}.{n}"
        paths = (cfgdir / f"{stamp}-project.yaml", cfgdir / f"{stamp}-lightning.yaml")
        claimed = []
        try:
            for p in paths:
                os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                claimed.append(p)
            return paths
        except FileExistsError:
            for p in claimed:  # only the lightning name was taken: give the project name back
                p.unlink()
            n += 1


def save_configs(run: RunDir, config: DictConfig) -> tuple[Path, Path]:
    """Write the resolved project and lightning configs of ``config`` into ``<run>/configs``."""
    project = OmegaConf.masked_copy(config, [k for k in config.keys() if k != "lightning"])
    return write_configs(run.cfgdir, run.now, project, config.get("lightning", {}))
