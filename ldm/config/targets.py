"""Resolving `target:` strings to Python objects, safely.

A config is data a user may have downloaded. Importing an arbitrary dotted path would let such a
file run code (`os.system`, `torch.load` of a pickle, `torch.hub.load` of a hubconf.py are each one
`target:` away), so only the names listed in :mod:`ldm.config.allowed_targets` resolve, unless the
user explicitly opts in with ``--trust-config-targets``.
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Any, Iterator

from ldm.config.allowed_targets import ALLOWED_TARGETS
from ldm.config.errors import ConfigError

# Names used by the original configs that live elsewhere here. `main.*` objects moved out of the
# 741-line original main.py; `taming.*` objects come from a package that no longer runs on
# Lightning 2, and we ship taming-compatible implementations of them.
LEGACY_TARGETS: dict[str, str] = {
    "main.DataModuleFromConfig": "ldm.data.base.DataModuleFromConfig",
    "main.WrappedDataset": "ldm.data.base.WrappedDataset",
    "main.ImageLogger": "ldm.trainer.callbacks.ImageLogger",
    "main.SetupCallback": "ldm.trainer.callbacks.SetupCallback",
    "main.CUDACallback": "ldm.trainer.callbacks.DeviceStatsCallback",
    "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator":
        "ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
    "taming.modules.losses.lpips.LPIPS": "ldm.modules.losses.lpips.LPIPS",
    "taming.modules.vqvae.quantize.VectorQuantizer2": "ldm.modules.vqvae.quantize.VectorQuantizer2",
    "taming.modules.vqvae.quantize.VectorQuantizer": "ldm.modules.vqvae.quantize.VectorQuantizer2",
    "taming.modules.discriminator.model.NLayerDiscriminator":
        "ldm.modules.discriminator.model.NLayerDiscriminator",
    "taming.data.faceshq.CelebAHQTrain": "ldm.data.faceshq.CelebAHQTrain",
    "taming.data.faceshq.CelebAHQValidation": "ldm.data.faceshq.CelebAHQValidation",
    "taming.data.faceshq.FFHQTrain": "ldm.data.faceshq.FFHQTrain",
    "taming.data.faceshq.FFHQValidation": "ldm.data.faceshq.FFHQValidation",
}

_trust_all = False
_extra: frozenset[str] = frozenset()  # names added in-process by extra_targets()


def set_trust_all_targets(value: bool) -> None:
    """Allow configs to name any importable object (``--trust-config-targets``)."""
    global _trust_all
    _trust_all = bool(value)


@contextlib.contextmanager
def trust_all_targets(value: bool = True) -> Iterator[None]:
    global _trust_all
    previous, _trust_all = _trust_all, value
    try:
        yield
    finally:
        _trust_all = previous


@contextlib.contextmanager
def extra_targets(*names: str) -> Iterator[None]:
    """Allow these exact dotted names as well, for the duration of the block (your own classes,
    from Python code you trust; a config cannot reach this)."""
    global _extra
    previous, _extra = _extra, _extra | frozenset(names)
    try:
        yield
    finally:
        _extra = previous


def canonical_target(name: str) -> str:
    """The dotted path a target string stands for here (legacy names mapped)."""
    return LEGACY_TARGETS.get(name, name)


def is_allowed(name: str) -> bool:
    """Whether a config may name ``name`` without ``--trust-config-targets``."""
    canonical = canonical_target(name)
    return canonical in ALLOWED_TARGETS or canonical in _extra


def get_obj_from_str(string: str, reload: bool = False, *, path: str = "target") -> Any:
    """Import `module.attr` named by ``string``; ``path`` names the config entry for errors."""
    if not isinstance(string, str) or "." not in string:
        raise ConfigError(path, f"target must be a dotted path like 'package.module.Class', got {string!r}")
    name = canonical_target(string)
    if not _trust_all and not is_allowed(string):
        # Refused before anything is imported: importing a module can itself run code.
        raise ConfigError(
            path,
            f"target {string!r} is not on the allow-list of objects a config may build "
            "(ldm/config/allowed_targets.py), so it is refused: a config must not be able to run "
            "arbitrary code. If you wrote this config and trust it, pass --trust-config-targets "
            "(in Python: ldm.config.set_trust_all_targets(True)).",
        )
    module_name, attr = name.rsplit(".", 1)
    try:
        module = importlib.import_module(module_name)
        if reload:
            module = importlib.reload(module)
    except ModuleNotFoundError as exc:
        raise ConfigError(path, f"unknown target {string!r}: module {module_name!r} not found ({exc})") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(path, f"unknown target {string!r}: {module_name!r} has no attribute {attr!r}") from None
