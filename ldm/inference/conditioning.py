"""What a user gives (prompts, class ids, masks, low-res images, label maps, boxes) turned into
the conditioning c = τ_θ(y) of paper Sec. 3.3, plus its unconditional counterpart for guidance."""
from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from ldm.inference.checks import check_prompts

__all__ = ["ModelKind", "class_conditioning", "encode_image", "model_kind", "prompt_conditioning", "require_kind",
           "semantic_classes", "semantic_onehot", "user_conditioning"]

ModelKind = str  # unconditional | class | text | layout | inpainting | superres | semantic | concat | other


def model_kind(model: Any) -> ModelKind:
    """Which task a LatentDiffusion model was trained for, read from its conditioning setup."""
    key = getattr(getattr(model, "model", None), "conditioning_key", None)
    if key is None:
        return "unconditional"
    cond_key = getattr(model, "cond_stage_key", None)
    encoder = getattr(model, "cond_stage_model", None)
    if key == "concat":
        return {"masked_image": "inpainting", "LR_image": "superres", "segmentation": "semantic"}.get(cond_key, "concat")
    if type(encoder).__name__ == "ClassEmbedder" or cond_key in ("class_label", "class"):
        return "class"
    if cond_key == "coordinates_bbox":
        return "layout"
    if cond_key in ("caption", "txt", "text") or hasattr(encoder, "tknz_fn") or hasattr(encoder, "tokenize"):
        return "text"
    return "other"


def require_kind(model: Any, allowed: Sequence[ModelKind], script: str) -> ModelKind:
    kind = model_kind(model)
    if kind not in allowed:
        raise ValueError(f"{script} needs a model conditioned for {' or '.join(allowed)}; this checkpoint's "
                         f"model is {kind!r} (cond_stage_key={getattr(model, 'cond_stage_key', None)!r}). "
                         "See docs/sampling.md for the script that fits it.")
    return kind


@torch.no_grad()
def prompt_conditioning(model: Any, prompts: Sequence[str]) -> tuple[Any, Any]:
    """(τ_θ(prompts), τ_θ("")) for each prompt; over-long prompts warn and are truncated."""
    prompts = check_prompts(model, prompts)
    with warnings.catch_warnings():  # check_prompts already reported truncation, with the prompt
        warnings.filterwarnings("ignore", message=r".*is truncated to max_length")
        c = model.get_learned_conditioning(prompts)
        uc = model.get_unconditional_conditioning(list(prompts))
    return c, uc


@torch.no_grad()
def class_conditioning(model: Any, labels: Sequence[int]) -> tuple[Any, Optional[Any]]:
    """(τ_θ(labels), τ_θ(null class)); the second is None when the model has no null class."""
    encoder = model.cond_stage_model
    n_classes = getattr(encoder, "n_classes", None)
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    if n_classes is not None and labels_t.numel() and (int(labels_t.min()) < 0 or int(labels_t.max()) >= n_classes):
        raise ValueError(f"--classes: class ids must lie in [0, {n_classes}), got {labels_t.tolist()}")
    device = model.alphas_cumprod.device
    c = model.get_learned_conditioning(labels_t.to(device))
    try:
        return c, model.get_unconditional_conditioning(labels_t.to(device))
    except ValueError:  # no null class: conditional sampling only
        return c, None


@torch.no_grad()
def encode_image(model: Any, x: torch.Tensor) -> torch.Tensor:
    """z = scale_factor * E(x), with the posterior's mode for KL first stages (deterministic)."""
    return model.first_stage.encode(x, sample=False)


def semantic_onehot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B, H, W) class indices -> (B, n_classes, H, W) one-hot floats, as the datasets deliver."""
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"label map values must lie in [0, {n_classes}) for this model, got [{lo}, {hi}]")
    return F.one_hot(labels.long(), n_classes).permute(0, 3, 1, 2).float()


def semantic_classes(model: Any) -> int:
    """Number of label channels the SpatialRescaler conditioner expects."""
    mapper = getattr(model.cond_stage_model, "channel_mapper", None)
    if mapper is None:
        raise ValueError("cannot infer the number of classes: the conditioner has no channel_mapper; "
                         "pass --n-classes")
    return int(mapper.in_channels)


def user_conditioning(model: Any, n: int, prompt: Optional[str] = None,
                      class_label: Optional[int] = None) -> tuple[Any, Any]:
    """(cond, uncond) for ``n`` samples of an unconditional, class or text model, from the
    prompt or class the user gave; errors say which of them the model needs."""
    kind = model_kind(model)
    if kind == "unconditional":
        if prompt is not None or class_label is not None:
            raise ValueError("this model is unconditional: drop --prompt/--class")
        return None, None
    if kind == "text":
        if prompt is None:
            raise ValueError("this model is text-conditioned: pass --prompt")
        return prompt_conditioning(model, [prompt] * n)
    if kind == "class":
        if class_label is None:
            raise ValueError("this model is class-conditional: pass --class")
        return class_conditioning(model, [class_label] * n)
    raise ValueError(f"a {kind!r} model is not conditioned on a prompt or class")
