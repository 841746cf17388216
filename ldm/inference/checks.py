"""Input checks that turn shape/range mistakes into errors naming the offending input."""
from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import torch

__all__ = ["check_multiple", "check_prompts", "check_range", "check_same_size", "downsampling_factor",
           "prompt_token_limit"]


def downsampling_factor(model: Any) -> int:
    """f of the first stage (paper Sec. 3.1): image side / latent side."""
    first_stage = getattr(model, "first_stage_model", None)
    if first_stage is None:
        return 1  # pixel-space DDPM
    decoder = getattr(first_stage, "decoder", None)
    levels = getattr(decoder, "num_resolutions", None)
    if levels is not None:
        return 2 ** (int(levels) - 1)
    if type(first_stage).__name__ == "IdentityFirstStage":
        return 1
    raise TypeError(f"cannot tell the downsampling factor of first stage {type(first_stage).__name__}")


def check_multiple(name: str, size: Sequence[int], factor: int) -> None:
    """Spatial ``size`` (H, W) must be a positive multiple of ``factor``."""
    h, w = (int(s) for s in size[-2:])
    if h <= 0 or w <= 0 or h % factor or w % factor:
        raise ValueError(f"{name}: size {h}x{w} (HxW) must be a positive multiple of the first stage's "
                         f"downsampling factor f={factor}; e.g. {max(factor, h - h % factor)}x"
                         f"{max(factor, w - w % factor)}")


def check_same_size(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    if tuple(a.shape[-2:]) != tuple(b.shape[-2:]):
        raise ValueError(f"{b_name} is {b.shape[-2]}x{b.shape[-1]} but {a_name} is {a.shape[-2]}x{a.shape[-1]} "
                         "(HxW); they must have the same size")


def check_range(name: str, x: torch.Tensor, low: float, high: float) -> None:
    lo, hi = float(x.min()), float(x.max())
    if lo < low or hi > high:
        raise ValueError(f"{name}: values must lie in [{low}, {high}], got [{lo:.4g}, {hi:.4g}]")


def prompt_token_limit(model: Any) -> Optional[tuple[int, Any]]:
    """(max tokens, a function text -> untruncated token count) of the model's text encoder."""
    encoder = getattr(model, "cond_stage_model", None)
    tknz = getattr(encoder, "tknz_fn", None)  # BERTEmbedder
    inner = getattr(tknz, "tokenizer", None)
    if inner is not None and hasattr(inner, "ids") and hasattr(inner, "max_length"):  # word-level
        return inner.max_length, lambda text: len(inner.ids(text))
    max_length = getattr(tknz, "max_length", None) or getattr(encoder, "max_length", None)
    hf = getattr(tknz, "tokenizer", None) if tknz is not None else getattr(encoder, "tokenizer", None)
    if max_length is None or hf is None or not callable(hf):
        return None
    return int(max_length), lambda text: len(hf(text, add_special_tokens=True, truncation=False)["input_ids"])


def check_prompts(model: Any, prompts: Sequence[str]) -> list[str]:
    """Validate prompts; warn (once per prompt) when one exceeds the tokenizer's limit, since the
    encoder will keep only the first tokens."""
    prompts = list(prompts)
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompts must be strings, got {type(p).__name__}: {p!r}")
    limit = prompt_token_limit(model)
    if limit is None:
        return prompts
    max_tokens, count = limit
    for p in dict.fromkeys(prompts):
        with warnings.catch_warnings():  # an unknown word is reported again at encoding time
            warnings.simplefilter("ignore")
            n = count(p)
        if n > max_tokens:
            warnings.warn(f"prompt {p[:60]!r}{'...' if len(p) > 60 else ''} has {n} tokens (with start/end "
                          f"tokens); the text encoder keeps only the first {max_tokens}", stacklevel=2)
    return prompts
