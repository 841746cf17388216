"""Classifier-free guidance (Ho & Salimans 2021) and autoguidance (Karras et al. 2024) as
wrappers around any denoiser.

D_w(x) = D(x | uncond) + w * (D(x | cond) - D(x | uncond)); w = 1 is plain conditional sampling.
Autoguidance adds a pull away from a weaker "guide" model of the same task (an earlier snapshot,
a smaller net): D(x) = CFG_w(x) + a * (D(x | cond) - D_guide(x | cond)); where the guide errs
more than the model, the difference points away from those errors.
Composition adds a second model's own classifier-free guidance direction (Liu et al. 2022, Composable
Diffusion): D(x) = D_main(x) + b * (D_2(x | cond_2) - D_2(x | uncond_2)), so that two models trained
for different things (one knows the prompt's colours, the other its shapes) each pull the sample
towards what it knows: the product of their conditionals over their unconditionals.
Combining x0 estimates equals combining eps or v outputs as the original samplers do, because for
fixed (x, sigma) each is an affine function of the others with the same coefficients.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ._common import Denoiser

__all__ = ["AutoGuidance", "ClassifierFreeGuidance", "ComposedGuidance", "cat_conditioning"]


def cat_conditioning(uncond: Any, cond: Any, path: str = "cond") -> Any:
    """Stack unconditional and conditional inputs along the batch: [uncond, cond].

    Handles ``None``, tensors, lists/tuples (element-wise) and dicts (key-wise, e.g.
    ``{"c_concat": [...], "c_crossattn": [...]}``); structures must match.
    """
    if cond is None and uncond is None:
        return None
    if isinstance(cond, torch.Tensor) and isinstance(uncond, torch.Tensor):
        if cond.shape[1:] != uncond.shape[1:]:
            raise ValueError(f"{path}: conditional shape {tuple(cond.shape)} and unconditional shape "
                             f"{tuple(uncond.shape)} differ beyond the batch dimension")
        return torch.cat([uncond, cond])
    if isinstance(cond, dict) and isinstance(uncond, dict):
        if set(cond) != set(uncond):
            raise ValueError(f"{path}: conditional keys {sorted(cond)} != unconditional keys {sorted(uncond)}")
        return {k: cat_conditioning(uncond[k], cond[k], f"{path}[{k!r}]") for k in cond}
    if isinstance(cond, (list, tuple)) and isinstance(uncond, (list, tuple)):
        if len(cond) != len(uncond):
            raise ValueError(f"{path}: {len(cond)} conditional entries but {len(uncond)} unconditional")
        return [cat_conditioning(u, c, f"{path}[{i}]") for i, (u, c) in enumerate(zip(uncond, cond))]
    raise TypeError(f"{path}: cannot batch unconditional {type(uncond).__name__} with conditional "
                    f"{type(cond).__name__}; both must be tensors, lists or dicts of the same layout")


class ClassifierFreeGuidance:
    """Wrap ``denoiser`` so that every call returns the guided x0 estimate.

    Both branches run in one forward pass over the doubled batch [uncond, cond], as the original
    samplers do. With ``scale == 1`` only the conditional branch is evaluated.
    """

    def __init__(
        self,
        denoiser: Denoiser,  # D(x, sigma, cond=...) -> x0
        scale: float,        # guidance weight w; 1 = conditional model
        uncond: Any,         # unconditional input, same layout as the `cond` passed at call time
    ):
        if uncond is None and scale != 1.0:
            raise ValueError(f"guidance scale {scale} needs an unconditional conditioning `uncond`")
        self.denoiser = denoiser
        self.scale = float(scale)
        self.uncond = uncond

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if self.scale == 1.0:
            return self.denoiser(x, sigma, cond=cond)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        c_in = cat_conditioning(self.uncond, cond)
        out = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=c_in)
        d_uncond, d_cond = out.chunk(2)
        return d_uncond + self.scale * (d_cond - d_uncond)


class AutoGuidance:
    """Classifier-free guidance plus autoguidance: ``cfg(x) + weight * (D(x|c) - D_guide(x|c_guide))``.

    ``weight = 0`` is :class:`ClassifierFreeGuidance`; with ``scale = 1`` it is the autoguidance of
    Karras et al. (2024), ``D_guide + (1 + weight) * (D - D_guide)`` in their notation w = 1 + weight.
    The guide brings its own conditioning (``guide_cond``: its encoder is its own) and is called
    once per step; the model's two branches share one forward pass as in classifier-free guidance.
    """

    def __init__(
        self,
        denoiser: Denoiser,      # the sampled model: D(x, sigma, cond=...) -> x0
        guide: Denoiser,         # the weaker model of the same latents, D_guide(x, sigma, cond=...) -> x0
        weight: float,           # a >= 0: strength of the pull away from the guide
        guide_cond: Any = None,  # the guide's conditioning for this batch
        scale: float = 1.0,      # classifier-free guidance weight w of the sampled model
        uncond: Any = None,      # its unconditional input, needed when scale != 1
    ):
        if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"autoguidance weight must be a finite number >= 0, got {weight!r}")
        self.cfg = ClassifierFreeGuidance(denoiser, scale, uncond)
        self.guide, self.weight, self.guide_cond = guide, float(weight), guide_cond

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        cfg = self.cfg
        if cfg.scale == 1.0:
            d_cond = guided = cfg.denoiser(x, sigma, cond=cond)
        else:
            out = cfg.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=cat_conditioning(cfg.uncond, cond))
            d_uncond, d_cond = out.chunk(2)
            guided = d_uncond + cfg.scale * (d_cond - d_uncond)
        if self.weight == 0.0:
            return guided
        return guided + self.weight * (d_cond - self.guide(x, sigma, cond=self.guide_cond))


class ComposedGuidance:
    """``denoiser`` (any guided denoiser of the sampled model) plus ``weight`` times a second model's
    classifier-free guidance direction, ``D_2(x | cond) - D_2(x | uncond)``, at the noise levels
    within ``sigma_range`` (the second model's schedule); outside it ``denoiser`` answers alone.
    The second model brings its own conditioning (its encoder is its own) and runs both branches
    in one forward pass over the doubled batch."""

    def __init__(
        self,
        denoiser: Denoiser,      # the sampled model, guided as it is: D(x, sigma, cond=...) -> x0
        partner: Denoiser,       # the second model of the same latents
        weight: float,           # b >= 0: the strength of its direction
        cond: Any,               # the partner's conditional input for this batch
        uncond: Any,             # and its unconditional one
        sigma_range: tuple[float, float] = (0.0, math.inf),  # levels at which the partner is asked
    ):
        if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"composition weight must be a finite number >= 0, got {weight!r}")
        if cond is None or uncond is None:
            raise ValueError("composition needs the second model's conditional and unconditional inputs")
        lo, hi = (float(v) for v in sigma_range)
        if not 0.0 <= lo <= hi:
            raise ValueError(f"sigma_range must be (lo, hi) with 0 <= lo <= hi, got {sigma_range!r}")
        self.denoiser, self.partner, self.weight = denoiser, partner, float(weight)
        self.cond, self.uncond, self.sigma_range = cond, uncond, (lo, hi)
        self.calls = {"composed": 0, "alone": 0}  # network calls with and without the partner

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        out = self.denoiser(x, sigma, cond=cond)
        lo, hi = self.sigma_range
        inside = (sigma >= lo) & (sigma <= hi)
        if self.weight == 0.0 or not bool(inside.any()):
            self.calls["alone"] += 1
            return out
        if not bool(inside.all()):
            raise ValueError(f"composition needs one noise level per call; this batch straddles {self.sigma_range}")
        self.calls["composed"] += 1
        d_uncond, d_cond = self.partner(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                        cond=cat_conditioning(self.uncond, self.cond)).chunk(2)
        return out + self.weight * (d_cond - d_uncond)
