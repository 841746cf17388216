"""Synthetic shapes: a built-in dataset with labels for every task the paper trains on.

Each sample is a few coloured shapes on a plain or gradient background, drawn by pure numpy
rasterisation, with annotations for each conditioning mode of the paper:

- ``class_label``/``human_label``: class-conditional synthesis (Sec. 4.3.1, like ImageNet);
- ``caption``: text-to-image (Sec. 4.3.1, like LAION), built from a small closed vocabulary
  (``caption_vocabulary()``) so a tokenizer can be fitted offline;
- ``bboxes``/``n_objects``: layout-to-image (Sec. 4.3.1, like COCO/OpenImages), and with
  ``layout_tokens`` the token sequence ``coordinates_bbox`` a layout model's τ_θ embeds;
- ``segmentation``/``segmentation_index``: semantic synthesis (Sec. 4.3.2, like the landscapes
  data: one-hot HWC float32);
- optional ``LR_image`` (super-resolution, Sec. 4.4) and ``mask``/``masked_image`` (hole black)
  (inpainting, Sec. 4.5).

A sample depends only on ``(seed, offset + index)``: a fresh ``numpy`` Generator is seeded from
them per item, so any process or DataLoader worker produces the same arrays. The scene is drawn
in normalised coordinates, so the same index gives the same scene at every resolution.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
from torch.utils.data import Dataset

from ldm.data.layout import LayoutTokenizer
from ldm.data.masks import mask_image

__all__ = [
    "BACKGROUND_CLASS",
    "COLOURS",
    "SHAPES",
    "SyntheticShapes",
    "SyntheticShapesTrain",
    "SyntheticShapesValidation",
    "VALIDATION_OFFSET",
    "caption_vocabulary",
    "layout_boxes",
    "write_sampling_inputs",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "hexagon", "star", "cross", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
    "cyan": (40, 200, 210), "magenta": (210, 50, 190), "orange": (245, 140, 30),
    "purple": (120, 60, 170), "white": (245, 245, 245), "gray": (128, 128, 128), "black": (25, 25, 25),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
_RGB = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)
BACKGROUND_CLASS = 0  # segmentation_index of background; shape k has index k + 1

# Validation item i is stream item VALIDATION_OFFSET + i: disjoint from any training range.
VALIDATION_OFFSET = 1 << 32

# Circumradius ranges (fractions of the image side) and the adjectives captions use for them.
_DOMINANT_R, _OTHER_R = (0.22, 0.34), (0.08, 0.20)
_LARGE_R, _SMALL_R = 0.28, 0.13
_MAX_TILT = math.radians(15)  # small rotations keep a square distinguishable from a diamond
_STAR_INNER = 0.45


def caption_vocabulary() -> list[str]:
    """Every word a caption can contain, sorted; ``caption.split()`` is always a subset."""
    words = {"a", "an", "and", "on", "background", "gradient", "small", "large"}
    return sorted(words | set(SHAPES) | set(COLOUR_NAMES))


def layout_boxes(example: dict[str, Any]) -> np.ndarray:
    """An example's (n_objects, 5) boxes in layout-token order: largest box first (stable), as the
    COCO/OpenImages layout datasets order them; ``bboxes`` itself keeps the drawing order."""
    boxes = np.asarray(example["bboxes"][:example["n_objects"]], dtype=np.float32)
    area = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])
    return boxes[np.argsort(-area, kind="stable")]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# --------------------------------------------------------------------------------------------
# Shape masks in unit coordinates (u, v) = offset from the centre / circumradius, y pointing
# down. Every shape lies inside the unit disk, which is what placement keeps disjoint.
# --------------------------------------------------------------------------------------------

def _polygon(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Regular n-gon with a vertex pointing up: ``d cos(delta) <= cos(pi/n)`` for the nearest edge."""
    phi = np.arctan2(v, u) + math.pi / 2  # angle from the top vertex
    delta = np.mod(phi, 2 * math.pi / n) - math.pi / n
    return np.hypot(u, v) * np.cos(delta) <= math.cos(math.pi / n)


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Five-point star with straight edges from each tip (radius 1) to a valley (radius 0.45)."""
    half = math.pi / 5
    phi = np.arctan2(v, u) + math.pi / 2
    t = np.abs(np.mod(phi, 2 * half) - half)  # 0 at a tip, pi/5 at a valley
    p2 = (_STAR_INNER * math.cos(half), _STAR_INNER * math.sin(half))  # tip p1 = (1, 0)
    # The ray at angle t meets segment p1-p2 at radius (p1 x p2) / (e(t) x (p2 - p1)).
    radius = p2[1] / (np.cos(t) * p2[1] - np.sin(t) * (p2[0] - 1.0))
    return np.hypot(u, v) <= radius


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    name = SHAPES[shape]
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.70
    if name == "triangle":
        return _polygon(u, v, 3)
    if name == "diamond":
        return np.abs(u) / 0.7 + np.abs(v) <= 1.0
    if name == "hexagon":
        return _polygon(u, v, 6)
    if name == "star":
        return _star(u, v)
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if name == "ring":
        d2 = u * u + v * v
        return (d2 <= 1.0) & (d2 >= 0.55 ** 2)
    raise ValueError(f"unknown shape index {shape}")


class SyntheticShapes(Dataset):
    """``length`` deterministic samples of coloured shapes at ``size`` x ``size`` px.

    Class labels: with ``n_classes <= len(SHAPES)`` the label is the shape of the dominant
    (largest) object and only the first ``n_classes`` shapes appear at all; with more classes
    the label is the dominant object's (colour, shape) pair, ``colour * len(SHAPES) + shape``.
    Labels are uniform over classes.

    ``bboxes`` rows are ``(shape_id, x0, y0, x1, y1)``: the tight pixel box of the object,
    normalised by the image side (``x1 = (last column + 1) / size``), padded with -1 rows.
    Objects never overlap, so every segmentation pixel of an object lies inside its box.

    ``layout_tokens`` adds ``coordinates_bbox``: those boxes as the int64 tokens of
    :class:`ldm.data.layout.LayoutTokenizer` (class, top-left and bottom-right corners on a
    ``layout_grid`` grid, largest box first, then the full-image crop window), the scheme of the
    COCO/OpenImages layout datasets scaled down: ``3 * max_objects + 2`` tokens over a
    ``layout_vocab`` vocabulary whose last id pads.
    """

    def __init__(self,
                 size: int = 64,                    # image side in px
                 length: int = 10000,               # number of samples
                 seed: int = 0,                     # selects the stream of scenes
                 n_classes: int = len(SHAPES),      # see the class docstring; at most 8 * 11
                 max_objects: int = 3,              # objects per image, at most
                 min_objects: int = 1,              # objects per image, at least
                 gradient_prob: float = 0.5,        # share of backgrounds with a linear gradient
                 colour_jitter: float = 12.0,       # per-object RGB jitter (0-255 units)
                 noise: float = 0.0,                # std of added pixel noise (0-255 units)
                 lr_factor: Optional[int] = None,   # add LR_image, downsampled by this factor
                 inpainting_masks: bool = False,    # add mask and masked_image
                 offset: int = 0,                   # first stream index (splits use disjoint ranges)
                 layout_tokens: bool = False,       # add coordinates_bbox (layout-to-image tokens)
                 layout_grid: int = 16,             # corner positions quantised on this grid
                 layout_vocab: int = 257,           # token ids: 16^2 corner positions + the padding token
                 ):
        if size < 1 or length < 0:
            raise ValueError(f"size must be >= 1 and length >= 0, got size={size}, length={length}")
        if not 1 <= n_classes <= len(SHAPES) * len(COLOUR_NAMES):
            raise ValueError(f"n_classes must lie in [1, {len(SHAPES) * len(COLOUR_NAMES)}], got {n_classes}")
        if not 1 <= min_objects <= max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
        if lr_factor is not None and (lr_factor < 1 or size % lr_factor):
            raise ValueError(f"lr_factor must be a positive divisor of size={size}, got {lr_factor}")
        self.size, self.length, self.seed, self.offset = size, length, seed, offset
        self.n_classes, self.max_objects, self.min_objects = n_classes, max_objects, min_objects
        self.gradient_prob, self.colour_jitter, self.noise = gradient_prob, colour_jitter, noise
        self.lr_factor, self.inpainting_masks = lr_factor, inpainting_masks
        try:  # built even when unused, so that bad layout values fail at construction
            tokenizer = LayoutTokenizer(len(SHAPES), no_tokens=layout_vocab, max_objects=max_objects,
                                        grid=layout_grid, encode_crop=True)
        except ValueError as exc:
            raise ValueError(f"layout_grid={layout_grid}, layout_vocab={layout_vocab}: {exc}") from None
        self.layout_tokenizer: Optional[LayoutTokenizer] = tokenizer if layout_tokens else None
        self.n_shapes = min(n_classes, len(SHAPES))  # shapes that can appear
        self.n_semantic_classes = 1 + len(SHAPES)    # background + every shape, fixed layout
        # Pixel centres in normalised coordinates, shared by every sample.
        self._centres = (np.arange(size, dtype=np.float32) + 0.5) / size
        self._eye = np.eye(self.n_semantic_classes, dtype=np.float32)

    def __len__(self) -> int:
        return self.length

    def class_name(self, label: int) -> str:
        if self.n_classes <= len(SHAPES):
            return SHAPES[label]
        colour, shape = divmod(label, len(SHAPES))
        return f"{COLOUR_NAMES[colour]} {SHAPES[shape]}"

    # ---------------------------------------------------------------- scene sampling

    def _scene(self, rng: np.random.Generator) -> tuple[int, int, list[tuple[int, int, float, float, float, float]]]:
        """(class label, background colour, objects as (shape, colour, cx, cy, r, tilt))."""
        label = int(rng.integers(self.n_classes))
        if self.n_classes <= len(SHAPES):
            shape0, colour0 = label, int(rng.integers(len(COLOUR_NAMES)))
        else:
            colour0, shape0 = divmod(label, len(SHAPES))
        background = int(rng.choice([c for c in range(len(COLOUR_NAMES)) if c != colour0]))
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        objects: list[tuple[int, int, float, float, float, float]] = []
        for k in range(n):
            lo, hi = _DOMINANT_R if k == 0 else _OTHER_R
            r = float(rng.uniform(lo, hi))
            shape = shape0 if k == 0 else int(rng.integers(self.n_shapes))
            colour = colour0 if k == 0 else int(rng.choice([c for c in range(len(COLOUR_NAMES)) if c != background]))
            tilt = float(rng.uniform(-_MAX_TILT, _MAX_TILT))
            for _ in range(12):  # rejection sampling keeps objects disjoint (unit disks apart)
                cx, cy = rng.uniform(r, 1.0 - r, size=2)
                if all((cx - o[2]) ** 2 + (cy - o[3]) ** 2 >= (r + o[4] + 0.02) ** 2 for o in objects):
                    objects.append((shape, colour, float(cx), float(cy), r, tilt))
                    break
        return label, background, objects

    # ---------------------------------------------------------------- rasterisation

    def _background(self, rng: np.random.Generator, colour: int) -> tuple[np.ndarray, bool]:
        base = _RGB[colour]
        s = self.size
        if rng.random() >= self.gradient_prob:
            return np.broadcast_to(base, (s, s, 3)).copy(), False
        angle = rng.uniform(0, 2 * math.pi)
        dark, light = base * 0.7, base + (255.0 - base) * 0.35
        ramp = self._centres[None, :] * math.cos(angle) + self._centres[:, None] * math.sin(angle)
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
        return dark + ramp[..., None] * (light - dark), True

    def _draw(self, canvas: np.ndarray, index: np.ndarray, rng: np.random.Generator,
              obj: tuple[int, int, float, float, float, float]) -> np.ndarray:
        """Paint one object inside its bounding window; return its bbox row."""
        shape, colour, cx, cy, r, tilt = obj
        s, c = self.size, self._centres
        # Pixels whose centre can lie inside the unit disk around (cx, cy).
        x0, x1 = max(0, math.floor((cx - r) * s)), min(s, math.ceil((cx + r) * s))
        y0, y1 = max(0, math.floor((cy - r) * s)), min(s, math.ceil((cy + r) * s))
        du, dv = (c[x0:x1] - cx) / r, (c[y0:y1] - cy) / r
        cos, sin = math.cos(tilt), math.sin(tilt)
        u = cos * du[None, :] + sin * dv[:, None]
        v = -sin * du[None, :] + cos * dv[:, None]
        mask = _shape_mask(shape, u, v)
        rgb = np.clip(_RGB[colour] + rng.uniform(-self.colour_jitter, self.colour_jitter, 3), 0, 255)
        canvas[y0:y1, x0:x1][mask] = rgb
        index[y0:y1, x0:x1][mask] = shape + 1
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size:  # tight box of the drawn pixels
            box = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
            return np.array([shape, *(b / s for b in box)], dtype=np.float32)
        # Smaller than a pixel at this resolution: the analytic extent.
        return np.array([shape, max(cx - r, 0), max(cy - r, 0), min(cx + r, 1), min(cy + r, 1)], dtype=np.float32)

    # ---------------------------------------------------------------- the example

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for SyntheticShapes of length {self.length}")
        i %= self.length
        rng = np.random.default_rng([self.seed, self.offset + i])
        label, background, objects = self._scene(rng)
        canvas, gradient = self._background(rng, background)
        index = np.zeros((self.size, self.size), dtype=np.int64)
        bboxes = np.full((self.max_objects, 5), -1.0, dtype=np.float32)
        for k, obj in enumerate(objects):
            bboxes[k] = self._draw(canvas, index, rng, obj)
        if self.noise > 0:
            canvas += rng.normal(0.0, self.noise, canvas.shape).astype(np.float32)
        image = np.clip(canvas, 0, 255, out=canvas) / np.float32(127.5) - np.float32(1.0)
        example = {
            "image": image.astype(np.float32, copy=False),
            "class_label": label,
            "human_label": self.class_name(label),
            "caption": self._caption(objects, background, gradient),
            "bboxes": bboxes,
            "n_objects": len(objects),
            "segmentation": self._eye[index],
            "segmentation_index": index,
        }
        if self.lr_factor is not None:
            f, s = self.lr_factor, self.size // self.lr_factor
            example["LR_image"] = image.reshape(s, f, s, f, 3).mean(axis=(1, 3))  # box downsampling
        if self.inpainting_masks:
            example.update(self._inpainting(rng, image))
        if self.layout_tokenizer is not None:
            example["coordinates_bbox"] = self.layout_tokenizer.encode(layout_boxes(example))
        return example

    def _caption(self, objects: list, background: int, gradient: bool) -> str:
        phrases = []
        for shape, colour, _, _, r, _ in objects:
            size_word = "large" if r >= _LARGE_R else "small" if r < _SMALL_R else None
            words = ([size_word] if size_word else []) + [COLOUR_NAMES[colour], SHAPES[shape]]
            phrases.append(f"{_article(words[0])} {' '.join(words)}")
        bg = f"{COLOUR_NAMES[background]} gradient" if gradient else COLOUR_NAMES[background]
        return f"{' and '.join(phrases)} on {_article(bg)} {bg} background"

    def _inpainting(self, rng: np.random.Generator, image: np.ndarray) -> dict[str, np.ndarray]:
        """A random rectangle covering 10-50% of the image; ``mask`` is 1 where to fill in."""
        s = self.size
        area = rng.uniform(0.1, 0.5)
        aspect = math.exp(rng.uniform(-0.7, 0.7))
        h = min(s, max(1, round(s * math.sqrt(area * aspect))))
        w = min(s, max(1, round(s * math.sqrt(area / aspect))))
        top, left = int(rng.integers(0, s - h + 1)), int(rng.integers(0, s - w + 1))
        mask = np.zeros((s, s, 1), dtype=np.float32)
        mask[top:top + h, left:left + w] = 1.0
        return {"mask": mask, "masked_image": mask_image(image, mask)}


class SyntheticShapesTrain(SyntheticShapes):
    """Stream items ``[0, length)``."""

    def __init__(self,
                 length: int = 10000,
                 **kwargs: Any,  # every other SyntheticShapes parameter except offset
                 ):
        if "offset" in kwargs:
            raise ValueError("SyntheticShapesTrain fixes offset=0; use SyntheticShapes to choose one")
        super().__init__(length=length, offset=0, **kwargs)


class SyntheticShapesValidation(SyntheticShapes):
    """Stream items ``[VALIDATION_OFFSET, VALIDATION_OFFSET + length)``: never seen in training."""

    def __init__(self,
                 length: int = 1000,
                 **kwargs: Any,  # every other SyntheticShapes parameter except offset
                 ):
        if "offset" in kwargs:
            raise ValueError("SyntheticShapesValidation fixes its offset; use SyntheticShapes to choose one")
        super().__init__(length=length, offset=VALIDATION_OFFSET, **kwargs)


def write_sampling_inputs(folder: Any, size: int = 32, n: int = 2, lr_factor: int = 2) -> dict[str, list[Any]]:
    """Sampling inputs for the task scripts, cut from the synthetic validation set (never trained on),
    written into ``folder``: ``image``/``mask`` (inpaint.py), ``lr`` (superres.py, ``lr_factor`` times
    smaller), ``seg`` (semantic2img.py, class indices) and ``layout`` (layout2img.py: one JSON with a
    layout per example, largest box first). Returns the paths by kind."""
    import json
    from pathlib import Path

    from PIL import Image

    from ldm.data.image_io import to_uint8

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = SyntheticShapesValidation(size=size, length=n, lr_factor=lr_factor, inpainting_masks=True)
    files: dict[str, list[Path]] = {"image": [], "mask": [], "lr": [], "seg": [], "layout": []}
    layouts = []
    for i in range(n):
        ex = data[i]
        arrays = {"image": to_uint8(ex["image"]), "mask": (ex["mask"][..., 0] * 255).astype(np.uint8),
                  "lr": to_uint8(ex["LR_image"]), "seg": ex["segmentation_index"].astype(np.uint8)}
        for kind, arr in arrays.items():
            path = folder / (f"shapes{i}.png" if kind == "image" else f"shapes{i}_{kind}.png")
            Image.fromarray(arr).save(path)
            files[kind].append(path)
        layouts.append({"objects": [{"class": int(row[0]), "bbox": [float(v) for v in row[1:]]}
                                    for row in layout_boxes(ex)]})
    files["layout"].append(folder / "boxes.json")
    files["layout"][0].write_text(json.dumps(layouts, indent=1))
    return files
