"""How a condition y reaches the denoiser ε_θ(z_t, t, τ_θ(y)) (paper Sec. 3.3, Fig. 3).

- ``concat``: spatially aligned conditions are concatenated to z_t along channels;
- ``crossattn``: τ_θ(y) ∈ R^{M×d_τ} is attended to by the UNet's cross-attention layers;
- ``hybrid``: both; ``adm``: a vector added to the time embedding (class-conditional ADM style).

Also here: the conditioning encoder τ_θ (the "cond stage"), the inpainting condition (paper
Sec. 4.5: the encoded masked image plus the mask, one layout for training and sampling), and the
classifier-free guidance training dropout (Ho & Salimans 2021), which replaces y by the null
condition with probability p.
"""
from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ldm.util import instantiate_from_config

__all__ = [
    "CONDITIONING_KEYS",
    "ConditioningKey",
    "NullCondition",
    "DiffusionWrapper",
    "check_rate",
    "default_null_class",
    "disabled_train",
    "drop_conditioning",
    "encode_condition",
    "freeze",
    "inpainting_condition",
    "instantiate_cond_stage",
    "mask_at_latent_size",
    "resolve_conditioning_key",
    "split_inpainting_condition",
    "to_model_kwargs",
]

ConditioningKey = Literal["concat", "crossattn", "hybrid", "adm"]  # a typo fails config validation
CONDITIONING_KEYS = (None, *typing.get_args(ConditioningKey))

FIRST_STAGE, UNCONDITIONAL = "__is_first_stage__", "__is_unconditional__"


class DiffusionWrapper(nn.Module):
    """Routes conditions into the UNet; keeps its weights under ``diffusion_model.*``."""

    def __init__(
        self,
        diff_model_config: Mapping[str, Any],  # target/params of the denoiser (a UNetModel)
        conditioning_key: Optional[ConditioningKey],  # None | concat | crossattn | hybrid | adm
    ):
        super().__init__()
        if conditioning_key not in CONDITIONING_KEYS:
            raise ValueError(f"conditioning_key {conditioning_key!r} unknown; expected one of {CONDITIONING_KEYS}")
        self.diffusion_model = instantiate_from_config(diff_model_config, path="unet_config")
        self.conditioning_key = conditioning_key

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        c_concat: Optional[list[torch.Tensor]] = None,
        c_crossattn: Optional[list[torch.Tensor]] = None,
    ) -> torch.Tensor:
        key = self.conditioning_key
        if key is None:
            return self.diffusion_model(x, t)
        if key in ("concat", "hybrid"):
            x = torch.cat([x, *_required(c_concat, "c_concat", key)], dim=1)
        if key == "concat":
            return self.diffusion_model(x, t)
        if key == "adm":
            return self.diffusion_model(x, t, y=_required(c_crossattn, "c_crossattn", key)[0])
        context = torch.cat(_required(c_crossattn, "c_crossattn", key), dim=1)
        return self.diffusion_model(x, t, context=context)


def _required(conds: Optional[list[torch.Tensor]], name: str, key: str) -> list[torch.Tensor]:
    if not conds:
        raise ValueError(f"conditioning_key={key!r} needs `{name}`, but no condition was given")
    return conds


def resolve_conditioning_key(
    conditioning_key: Optional[str],
    concat_mode: bool,
    cond_stage_config: Union[str, Mapping[str, Any]],
) -> Optional[str]:
    """The original defaulting: concat_mode picks concat vs crossattn; unconditional means None."""
    if conditioning_key is None:
        conditioning_key = "concat" if concat_mode else "crossattn"
    if isinstance(cond_stage_config, str) and cond_stage_config == UNCONDITIONAL:
        conditioning_key = None
    return conditioning_key


def to_model_kwargs(cond: Any, conditioning_key: Optional[str]) -> dict[str, Any]:
    """Normalise ``cond`` for :class:`DiffusionWrapper`: a dict passes through (hybrid), a tensor
    or list goes to c_concat for ``concat`` and to c_crossattn otherwise."""
    if isinstance(cond, Mapping):
        return dict(cond)
    if cond is None:
        return {}
    if not isinstance(cond, list):
        cond = [cond]
    return {"c_concat" if conditioning_key == "concat" else "c_crossattn": cond}


# ---- the frozen stages ----

def disabled_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement for ``train`` on frozen stages, so ``model.train()`` cannot unfreeze them."""
    return self


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode for good, no gradients: first stages and frozen conditioners (paper Sec. 3)."""
    module.eval()
    module.train = types.MethodType(disabled_train, module)
    for p in module.parameters():
        p.requires_grad = False
    return module


def instantiate_cond_stage(
    config: Union[str, Mapping[str, Any]],
    trainable: bool,
    first_stage_model: nn.Module,
) -> Optional[nn.Module]:
    """τ_θ from its config; the sentinels reuse the first stage or mean "no condition"."""
    if trainable and isinstance(config, str) and config in (FIRST_STAGE, UNCONDITIONAL):
        raise ValueError(f"cond_stage_trainable=True cannot be combined with cond_stage_config={config!r}")
    if config == FIRST_STAGE:
        return first_stage_model
    if config == UNCONDITIONAL:
        return None
    model = instantiate_from_config(config, path="cond_stage_config")
    return model if trainable else freeze(model)


def encode_condition(cond_stage_model: nn.Module, c: Any, cond_stage_forward: Optional[str] = None) -> Any:
    """τ_θ(y): ``cond_stage_forward`` names the method if given, else ``encode`` or ``forward``.

    A distribution (a KL first stage used as conditioner) is reduced to its mode.
    """
    if cond_stage_model is None:
        raise ValueError("this model is unconditional (cond_stage_config=__is_unconditional__); it has no "
                         "conditioning encoder")
    if cond_stage_forward is not None:
        fn = getattr(cond_stage_model, cond_stage_forward, None)
        if not callable(fn):
            raise AttributeError(f"cond_stage_forward={cond_stage_forward!r}: "
                                 f"{type(cond_stage_model).__name__} has no such method")
        return fn(c)
    encode = getattr(cond_stage_model, "encode", None)
    if callable(encode):
        c = encode(c)
        if not isinstance(c, torch.Tensor) and callable(getattr(c, "mode", None)):
            c = c.mode()
        return c
    return cond_stage_model(c)


# ---- inpainting (paper Sec. 4.5): c_concat = [τ(masked image), mask at latent size] ----

def mask_at_latent_size(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The pixel mask (B, 1, H, W) in [0, 1], 1 = fill, resized to ``size`` (nearest) as 2m - 1.

    {-1, 1} and nearest resizing are how the released inpainting_big model was fed its mask (the
    original inference script mapped every batch entry, the mask included, from [0, 1] to [-1, 1]).
    """
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"inpainting mask must be (B, 1, H, W), got shape {tuple(mask.shape)}")
    if mask.numel() and (float(mask.min()) < 0.0 or float(mask.max()) > 1.0):
        raise ValueError(f"inpainting mask must lie in [0, 1] (1 = fill), got range "
                         f"[{float(mask.min()):g}, {float(mask.max()):g}]")
    return F.interpolate(mask.float(), size=tuple(size)) * 2.0 - 1.0


def inpainting_condition(
    model: Any,                 # a LatentDiffusion (its τ_θ encodes the masked image)
    masked_image: torch.Tensor,  # (B, 3, H, W) in [-1, 1]; or its encoding when ``encoded``
    mask: torch.Tensor,         # (B, 1, H, W) pixel mask in [0, 1], 1 = fill
    encoded: bool = False,      # ``masked_image`` is already τ_θ(masked image)
) -> torch.Tensor:
    """The concat condition of an inpainting LDM: [τ_θ(masked image), mask↓] along channels, so the
    UNet sees [z_t, E(masked image), mask] (3 + 3 + 1 = 7 channels for inpainting_big). Training
    (``LatentDiffusion(concat_mask_key=...)``) and sampling both build it here."""
    c = masked_image if encoded else model.get_learned_conditioning(masked_image)
    if not isinstance(c, torch.Tensor) or c.ndim != 4:
        raise TypeError(f"inpainting needs a spatial (B, C, h, w) encoding of the masked image, got "
                        f"{type(c).__name__}{tuple(c.shape) if isinstance(c, torch.Tensor) else ''}")
    if mask.shape[0] != c.shape[0]:
        raise ValueError(f"inpainting mask batch size {mask.shape[0]} differs from the masked image's {c.shape[0]}")
    return torch.cat([c, mask_at_latent_size(mask.to(c.device), c.shape[-2:]).to(c.dtype)], dim=1)


def split_inpainting_condition(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`inpainting_condition`: (τ_θ(masked image), mask↓ in {-1, 1})."""
    return c[:, :-1], c[:, -1:]


# ---- classifier-free guidance: training dropout and the null condition ----

class NullCondition:
    """The null condition ∅ of classifier-free guidance (Ho & Salimans 2021) for one model: the
    raw condition that means "no condition", and the training dropout y -> ∅ with probability
    ``rate``. Training (``LatentDiffusion.get_input``) and guided sampling (its unconditional
    conditioning, the inference library) both use it, so ∅ is defined once."""

    def __init__(
        self,
        rate: float = 0.0,                 # P(y -> ∅) per sample while training
        class_key: Optional[str] = None,   # batch key of the class labels (class-conditional models)
        null_class: Optional[int] = None,  # the label meaning ∅; None: the model has none
    ):
        self.rate = check_rate(rate, "ucg_rate")
        self.class_key = class_key
        self.null_class = null_class

    def drop(self, xc: Any, rate: Optional[float] = None,
             generator: Optional[torch.Generator] = None) -> tuple[Any, torch.Tensor]:
        """``drop_conditioning`` with this model's null values; ``rate`` defaults to the training rate."""
        return drop_conditioning(xc, self.rate if rate is None else rate, self.class_key, self.null_class, generator)

    def like(self, xc: Any) -> Any:
        """∅ in the layout of the raw condition ``xc`` (no random numbers drawn)."""
        return self.drop(xc, 1.0)[0]


def default_null_class(cond_stage_model: Optional[nn.Module]) -> int:
    """The class index meaning "no class": the embedder's ``null_index`` when it has one."""
    index = getattr(cond_stage_model, "null_index", None)
    if index is None:
        raise ValueError(
            "cannot tell which class index means 'unconditional' for this conditioner: set ucg_null_class "
            "(e.g. 1000 for cin256-v2, whose ClassEmbedder has n_classes=1001) or give the ClassEmbedder "
            "null_class: true")
    return int(index)


def _batch_size(xc: Any, class_key: Optional[str]) -> int:
    if isinstance(xc, Mapping):
        if class_key not in xc:
            raise KeyError(f"condition batch has no key {class_key!r} to drop (keys: {sorted(xc)})")
        return len(xc[class_key])
    return len(xc)


def check_rate(rate: float, name: str = "conditioning dropout rate") -> float:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {rate}")
    return rate


def _drop_labels(labels: torch.Tensor, mask: torch.Tensor, null_class: Optional[int]) -> torch.Tensor:
    if null_class is None:
        raise ValueError("dropping class labels needs the null class index (ucg_null_class)")
    return labels.masked_fill(mask.to(labels.device), null_class)


def drop_conditioning(
    xc: Any,
    rate: float,
    class_key: Optional[str] = None,
    null_class: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> tuple[Any, torch.Tensor]:
    """Replace each sample's raw condition by the null condition with probability ``rate``.

    Null conditions: class index ``null_class`` (for a batch dict holding ``class_key``), the empty
    prompt "" (for a list of strings), zeros (for tensors). The draw uses the torch RNG (or
    ``generator``); rate 0 consumes no random numbers, so such runs match runs without dropout.
    Returns the new condition (the input is not modified) and the boolean drop mask.
    """
    check_rate(rate)
    n = _batch_size(xc, class_key)
    if rate == 0.0:
        return xc, torch.zeros(n, dtype=torch.bool)
    mask = torch.rand(n, generator=generator) < rate
    if isinstance(xc, Mapping):
        out = dict(xc)
        out[class_key] = _drop_labels(torch.as_tensor(xc[class_key]), mask, null_class)
        return out, mask
    if isinstance(xc, (list, tuple)) and all(isinstance(s, str) for s in xc):
        return type(xc)("" if m else s for s, m in zip(xc, mask.tolist())), mask
    if isinstance(xc, torch.Tensor) and not xc.is_floating_point():  # bare class labels
        return _drop_labels(xc, mask, null_class), mask
    if isinstance(xc, torch.Tensor):
        keep = (~mask).to(device=xc.device, dtype=xc.dtype).reshape(n, *((1,) * (xc.ndim - 1)))
        return xc * keep, mask
    raise TypeError(f"cannot drop a condition of type {type(xc).__name__}; expected a batch dict with "
                    "class labels, a list of prompts or a tensor")
