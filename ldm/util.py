"""Small utilities shared across the package, under their original names.

`instantiate_from_config` is the heart of the `target:`/`params:` convention: every model, loss,
dataset and callback is built through it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, TypeVar

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ldm.config.errors import ConfigError
from ldm.config.targets import get_obj_from_str
from ldm.config.validate import SENTINELS, check_params

T = TypeVar("T")

__all__ = [
    "count_params",
    "default",
    "exists",
    "get_obj_from_str",
    "instantiate_from_config",
    "isimage",
    "ismap",
    "log_txt_as_img",
    "mean_flat",
]


def instantiate_from_config(config: Any, *, path: str = "", **extra: Any) -> Any:
    """Build ``config.target(**config.params, **extra)``.

    The original sentinels ``__is_first_stage__`` and ``__is_unconditional__`` return None (the
    caller interprets them). ``path`` names the config entry in error messages.
    """
    if isinstance(config, str) and config in SENTINELS:
        return None
    if not isinstance(config, (Mapping, DictConfig)) or "target" not in config:
        raise ConfigError(path, "expected key `target` to instantiate (a mapping with target: and params:)")
    obj = get_obj_from_str(config["target"], path=f"{path}.target" if path else "target")
    params = config.get("params", None) or {}
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    if not isinstance(params, Mapping):
        raise ConfigError(f"{path}.params" if path else "params", "params must be a mapping")
    if getattr(obj, "__module__", "").startswith("ldm."):
        check_params(obj, {**params, **extra}, path or "<config>")
    try:
        return obj(**params, **extra)
    except ConfigError as exc:
        # Constructors name paths relative to their own params (e.g. `ddconfig.ch`); prefix ours so
        # the message points at the full config path, e.g. `model.params.ddconfig.ch`.
        if not path or exc.path.startswith(path):
            raise
        raise ConfigError(f"{path}.params.{exc.path}", exc.message) from exc


def exists(x: Any) -> bool:
    return x is not None


def default(value: Optional[T], d: Any) -> T:
    """``value`` unless it is None; ``d`` may be a zero-argument callable for lazy defaults."""
    if exists(value):
        return value
    return d() if callable(d) else d


def count_params(model: torch.nn.Module, verbose: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if verbose:
        print(f"{model.__class__.__name__} has {total * 1.e-6:.2f} M params.")
    return total


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def ismap(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] > 3


def isimage(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] in (1, 3)


def log_txt_as_img(wh: tuple[int, int], xc: list[str], size: int = 10) -> torch.Tensor:
    """Render captions as images (B, 3, H, W) in [-1, 1] so they sit beside samples in a grid."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    chars_per_line = max(1, int(40 * (wh[0] / 256)))
    images = []
    for text in xc:
        canvas = Image.new("RGB", wh, color="white")
        draw = ImageDraw.Draw(canvas)
        lines = "\n".join(text[i:i + chars_per_line] for i in range(0, len(text), chars_per_line))
        draw.text((0, 0), lines, fill="black", font=font)
        images.append(np.asarray(canvas).transpose(2, 0, 1) / 127.5 - 1.0)
    return torch.tensor(np.stack(images), dtype=torch.float32)
