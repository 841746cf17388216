"""Training glue of the diffusion models: optimizers, checkpoint initialisation, latent rescaling."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ldm import checkpoint as ckpt
from ldm.perf import adamw_options
from ldm.models.diffusion.first_stage import FirstStage
from ldm.modules.ema import LitEma
from ldm.util import instantiate_from_config

__all__ = ["OPTIMIZER_PARAMS", "check_optimizer_params", "configure_optimizers", "init_from_ckpt",
           "rescale_latents_by_std"]

log = logging.getLogger(__name__)


OPTIMIZER_PARAMS = ("betas", "eps", "weight_decay")  # the AdamW options a config may set


def check_optimizer_params(options: Optional[Mapping[str, Any]],
                           path: str = "model.params.optimizer_params") -> dict[str, Any]:
    """AdamW keyword arguments of a config's ``optimizer_params`` (None: torch's defaults), checked
    here so that a typo fails when the model is built, not after its first batch."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"{path} must be a mapping of {', '.join(OPTIMIZER_PARAMS)}, got {options!r}")
    unknown = sorted(set(options) - set(OPTIMIZER_PARAMS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}; "
                         f"expected {', '.join(OPTIMIZER_PARAMS)}")
    out: dict[str, Any] = {}
    if "betas" in options:
        betas = options["betas"]
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2 \
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
            raise ValueError(f"{path}.betas must be two numbers in [0, 1), got {betas!r}")
        out["betas"] = (float(betas[0]), float(betas[1]))
    for key in ("eps", "weight_decay"):
        if key in options:
            value = options[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
                    or (key == "eps" and value == 0):
                raise ValueError(f"{path}.{key} must be a number {'> 0' if key == 'eps' else '>= 0'}, got {value!r}")
            out[key] = float(value)
    return out


def train_only(unet: nn.Module, prefixes: Optional[Sequence[str]],
               path: str = "model.params.unet_trainable") -> Optional[tuple[str, ...]]:
    """Freeze the UNet parameters whose names in the UNet (``input_blocks.1.1.proj_out.weight``) start
    with none of ``prefixes`` (``requires_grad`` off, so backward skips their gradients); returns the
    checked prefixes (None: the whole UNet trains). Fine-tuning part of a started UNet, e.g. blocks
    that the checkpoint did not have. Each prefix must name at least one parameter."""
    if prefixes is None:
        return None
    if isinstance(prefixes, (str, bytes)) or not isinstance(prefixes, Sequence) or not prefixes \
            or not all(isinstance(p, str) and p for p in prefixes):
        raise ValueError(f"{path} must be a non-empty list of parameter-name prefixes, got {prefixes!r}")
    named = dict(unet.named_parameters())
    unmatched = [p for p in prefixes if not any(name.startswith(p) for name in named)]
    if unmatched:
        blocks = sorted({".".join(n.split(".")[:2]) for n in named})
        raise ValueError(f"{path}: no UNet parameter starts with {', '.join(map(repr, unmatched))} "
                         f"(its blocks: {', '.join(blocks[:12])}, ...)")
    prefixes = tuple(prefixes)
    for name, param in named.items():
        param.requires_grad_(name.startswith(prefixes))
    return prefixes


def unet_parameters(unet: nn.Module, prefixes: Optional[tuple[str, ...]]) -> list[nn.Parameter]:
    """The UNet parameters to optimise: those under ``prefixes`` (:func:`train_only`), or all."""
    return [p for name, p in unet.named_parameters() if prefixes is None or name.startswith(prefixes)]


def configure_optimizers(model: Any, params: Iterable[nn.Parameter]):
    """AdamW on ``model.learning_rate``; with ``model.scheduler_config``, a per-step LambdaLR whose
    multiplier is an ``ldm.lr_scheduler`` object (the original setup)."""
    lr = getattr(model, "learning_rate", None)
    if lr is None:
        raise AttributeError(f"{type(model).__name__}.learning_rate is not set; the trainer sets it from "
                             "model.base_learning_rate (set it yourself when training without it)")
    params = list(params)
    options = {**getattr(model, "optimizer_params", {}), **adamw_options(params)}  # fused on CUDA and CPU (ldm.perf)
    opt = torch.optim.AdamW(params, lr=lr, **options)
    if model.scheduler_config is None:
        return opt
    multiplier = instantiate_from_config(model.scheduler_config, path="model.params.scheduler_config")
    scheduler = {"scheduler": LambdaLR(opt, lr_lambda=multiplier.schedule), "interval": "step", "frequency": 1}
    return [opt], [scheduler]


def init_from_ckpt(model: Any, path: str, ignore_keys: Sequence[str] = (), only_model: bool = False) -> None:
    """Load weights from ``path`` without unpickling code (``ldm.checkpoint``).

    Keys under ``ignore_keys`` keep their initialisation; every other key must match (the original
    loaded non-strictly and silently kept random weights). An EMA absent from the file restarts
    from the loaded weights instead of the random ones. ``only_model``: load into the
    DiffusionWrapper, from a full checkpoint (``model.*``) or a bare one.
    """
    target = model.model if only_model else model
    if not os.path.isfile(path):
        ckpt.init_from_ckpt(target, path)  # raises, or warns when LDM_ALLOW_MISSING_CKPT=1
        return
    sd = ckpt.load_state_dict(path)
    if only_model and any(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    report = ckpt.load_into(target, sd, strict=False, ignore_keys=ignore_keys, path=path)
    missing = [k for k in report.missing if not k.startswith(("model_ema.", *ignore_keys))]
    if missing or report.unexpected or report.mismatched:
        raise RuntimeError(f"checkpoint does not match {type(target).__name__}:\n{report}")
    if model.use_ema and not any(k.startswith("model_ema.") for k in sd):
        model.model_ema = LitEma(model.model)
    log.info("%s", report)
    if not only_model:  # the UNet alone brings no latent scale: scale_by_std still estimates it
        model.restarted_from_ckpt = True


@torch.no_grad()
def rescale_latents_by_std(first_stage: FirstStage, scale_factor: torch.Tensor, x: torch.Tensor) -> None:
    """Set the ``scale_factor`` buffer so the latents of images ``x`` have unit standard deviation
    (paper Sec. 4.3.2 and App. C.1). Under DDP every rank takes rank 0's estimate."""
    new = first_stage.unit_std_scale(x).to(scale_factor)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast(new, src=0)
    scale_factor.copy_(new)
    log.info("scale_by_std: scale_factor set to %.6f", float(scale_factor))
