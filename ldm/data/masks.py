"""Inpainting masks in the style of the LaMa protocol the paper evaluates with (Sec. 4.5).

Masks are (H, W) float32 arrays with 1 where the image is to be filled in. Kinds:

* ``thin`` / ``medium`` / ``thick``: irregular brush strokes (polylines with round joints)
  whose widths grow from kind to kind;
* ``box``: axis-aligned rectangles;
* ``hard``: the paper's "40-50 % masked" split (Tab. 7): thick strokes or boxes covering
  between 40 and 50 % of the image;
* ``mixed``: per mask, one of thin/medium/thick/box drawn uniformly (training).

Each kind draws a target coverage uniformly from its range (:data:`COVERAGE`) and adds stroke
segments or boxes until the target is reached; a segment that would overshoot the range is
retried smaller. So every mask's coverage lies inside its kind's range, by construction. All
randomness comes from a ``numpy.random.Generator``: a seed fixes the mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["COVERAGE", "MASK_KINDS", "MaskGenerator", "make_mask", "mask_coverage"]


@dataclass(frozen=True)
class _Spec:
    coverage: tuple[float, float]            # fraction of the image masked, [lo, hi]
    width: Optional[tuple[float, float]]     # stroke width range (fraction of the shorter side); None: boxes


_SPECS: dict[str, _Spec] = {
    "thin": _Spec((0.05, 0.25), (0.02, 0.05)),
    "medium": _Spec((0.15, 0.40), (0.05, 0.10)),
    "thick": _Spec((0.25, 0.55), (0.10, 0.20)),
    "box": _Spec((0.10, 0.45), None),
    "hard": _Spec((0.40, 0.50), (0.10, 0.20)),
}
MASK_KINDS: tuple[str, ...] = ("thin", "medium", "thick", "box", "hard", "mixed")
COVERAGE: dict[str, tuple[float, float]] = {k: s.coverage for k, s in _SPECS.items()}
COVERAGE["mixed"] = (0.05, 0.55)

_MAX_ANGLE = math.radians(70)   # turn between consecutive stroke segments, at most
_SEGMENT = (0.05, 0.25)         # segment length range (fraction of the shorter side)
_BOX_SIDE = (0.10, 0.50)        # box side range (fraction of the side it spans)
_RETRIES = 8                    # shrinking retries before a new stroke/box is started elsewhere
_HARD_BOX_PROB = 0.3            # share of hard masks made of boxes instead of strokes


def mask_coverage(mask: np.ndarray) -> float:
    return float(np.count_nonzero(mask)) / mask.size


class _Canvas:
    """A PIL drawing surface that tracks coverage and can undo the last primitive."""

    def __init__(self, h: int, w: int):
        self.img = Image.new("L", (w, h), 0)
        self.covered = 0
        self.area = h * w

    def try_draw(self, draw_fn, hi: float) -> bool:
        trial = self.img.copy()
        draw_fn(ImageDraw.Draw(trial))
        covered = int(np.count_nonzero(np.asarray(trial)))
        if covered > hi * self.area:
            return False
        self.img, self.covered = trial, covered
        return True

    @property
    def coverage(self) -> float:
        return self.covered / self.area


def _strokes(canvas: _Canvas, h: int, w: int, rng: np.random.Generator, spec: _Spec, target: float) -> None:
    side = min(h, w)
    hi = spec.coverage[1]
    while canvas.coverage < target:
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        angle = rng.uniform(0, 2 * math.pi)
        width = rng.uniform(*spec.width) * side
        for _ in range(int(rng.integers(2, 8))):  # segments of this stroke
            if canvas.coverage >= target:
                return
            angle += rng.uniform(-_MAX_ANGLE, _MAX_ANGLE)
            length = rng.uniform(*_SEGMENT) * side
            for _ in range(_RETRIES):
                x1 = float(np.clip(x + length * math.cos(angle), 0, w - 1))
                y1 = float(np.clip(y + length * math.sin(angle), 0, h - 1))
                r = max(width / 2, 0.5)

                def draw(d: ImageDraw.ImageDraw, x0=x, y0=y, x1=x1, y1=y1, r=r) -> None:
                    d.line([(x0, y0), (x1, y1)], fill=255, width=max(1, round(2 * r)))
                    for cx, cy in ((x0, y0), (x1, y1)):  # round joints and ends
                        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)

                if canvas.try_draw(draw, hi):
                    x, y = x1, y1
                    break
                length, width = length * 0.5, width * 0.7  # too much: retry smaller
            else:
                break  # start a new stroke elsewhere


def _boxes(canvas: _Canvas, h: int, w: int, rng: np.random.Generator, spec: _Spec, target: float) -> None:
    hi = spec.coverage[1]
    while canvas.coverage < target:
        bh, bw = rng.uniform(*_BOX_SIDE) * h, rng.uniform(*_BOX_SIDE) * w
        for _ in range(_RETRIES):
            top, left = rng.uniform(0, h - bh), rng.uniform(0, w - bw)

            def draw(d: ImageDraw.ImageDraw, t=top, l=left, bh=bh, bw=bw) -> None:
                d.rectangle([l, t, l + bw - 1, t + bh - 1], fill=255)

            if canvas.try_draw(draw, hi):
                break
            bh, bw = max(bh * 0.7, 1.0), max(bw * 0.7, 1.0)


def make_mask(kind: str,
              size: Union[int, tuple[int, int]],   # side, or (height, width), in px
              rng: np.random.Generator,
              ) -> np.ndarray:
    """One (H, W) float32 mask in {0, 1} of the given kind; 1 = to fill in."""
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; choose from {MASK_KINDS}")
    h, w = (size, size) if isinstance(size, int) else size
    if min(h, w) < 4:
        raise ValueError(f"mask size must be at least 4 x 4 px, got {h} x {w}")
    if kind == "mixed":
        kind = ("thin", "medium", "thick", "box")[int(rng.integers(4))]
    spec = _SPECS[kind]
    lo, hi = spec.coverage
    # Aim below hi so that the last primitive has room to land inside the range.
    target = rng.uniform(lo, lo + 0.8 * (hi - lo))
    canvas = _Canvas(h, w)
    use_boxes = spec.width is None or (kind == "hard" and rng.random() < _HARD_BOX_PROB)
    (_boxes if use_boxes else _strokes)(canvas, h, w, rng, spec, target)
    return (np.asarray(canvas.img) > 0).astype(np.float32)


class MaskGenerator:
    """Masks of one kind; ``index`` given, mask ``i`` depends only on ``(seed, i)`` (fixed eval sets)."""

    def __init__(self,
                 kind: str = "mixed",   # one of MASK_KINDS
                 seed: int = 0,         # with an index: selects the fixed set of masks
                 ):
        if kind not in MASK_KINDS:
            raise ValueError(f"unknown mask kind {kind!r}; choose from {MASK_KINDS}")
        self.kind, self.seed = kind, seed

    def __call__(self,
                 size: Union[int, tuple[int, int]],
                 index: Optional[int] = None,                # None: draw from ``rng``
                 rng: Optional[np.random.Generator] = None,  # used when index is None
                 ) -> np.ndarray:
        if index is not None:
            rng = np.random.default_rng([self.seed, index])
        elif rng is None:
            rng = np.random.default_rng()
        return make_mask(self.kind, size, rng)


def mask_image(image, mask):
    """The inpainting input: ``image`` in [-1, 1] with the hole (``mask`` == 1) set to black (-1).

    One convention for datasets, training and sampling, the one the released ``inpainting_big``
    was trained with. Works on numpy arrays and torch tensors alike (broadcasting the mask).
    """
    return (1.0 - mask) * (image + 1.0) - 1.0
