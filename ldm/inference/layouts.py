"""Layout-to-image inputs (paper Sec. 4.3.1): boxes from JSON -> the token sequence of
``ldm.data.layout.LayoutTokenizer`` that the BERT-style τ_θ of the layout model embeds.

JSON accepted by ``read_layouts`` (coordinates normalised to [0, 1], (x0, y0) top-left):

    {"objects": [{"class": 3, "bbox": [0.1, 0.2, 0.5, 0.9]}, [7, 0.5, 0.5, 1.0, 1.0]],
     "crop": [0, 0, 1, 1]}

or a list of such layouts (one image each), or a bare list of ``[class, x0, y0, x1, y1]`` rows.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from ldm.data.layout import LayoutTokenizer

__all__ = ["Layout", "draw_layout", "layout_tokenizer", "layout_tokens", "null_layout_conditioning", "read_layouts"]

Layout = tuple[np.ndarray, tuple[float, float, float, float]]  # (N, 5) boxes, crop window


def _box(obj: Any, where: str) -> list[float]:
    if isinstance(obj, dict):
        if "class" not in obj or "bbox" not in obj:
            raise ValueError(f"{where}: an object needs 'class' and 'bbox', got keys {sorted(obj)}")
        row = [obj["class"], *obj["bbox"]]
    else:
        row = list(obj)
    if len(row) != 5:
        raise ValueError(f"{where}: expected [class, x0, y0, x1, y1], got {row}")
    c, x0, y0, x1, y1 = (float(v) for v in row)
    if c != int(c) or c < 0:
        raise ValueError(f"{where}: class must be a non-negative integer, got {row[0]}")
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise ValueError(f"{where}: bbox must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {row[1:]}")
    return [c, x0, y0, x1, y1]


def _layout(obj: Any, where: str) -> Layout:
    crop = (0.0, 0.0, 1.0, 1.0)
    if isinstance(obj, dict):
        if "objects" not in obj:
            raise ValueError(f"{where}: a layout needs an 'objects' list")
        crop = tuple(float(v) for v in obj.get("crop", crop))
        if len(crop) != 4:
            raise ValueError(f"{where}: crop must be [x0, y0, x1, y1], got {list(crop)}")
        obj = obj["objects"]
    rows = [_box(o, f"{where}: object {i}") for i, o in enumerate(obj)]
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5), crop  # type: ignore[return-value]


def read_layouts(path: Union[str, os.PathLike]) -> list[Layout]:
    """Layouts from a JSON file (see the module docstring for the format)."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    is_batch = isinstance(data, list) and data and all(isinstance(d, dict) and "objects" in d for d in data)
    layouts = [_layout(d, f"{path}: layout {i}") for i, d in enumerate(data)] if is_batch else [_layout(data, str(path))]
    return layouts


def layout_tokenizer(model: Any, n_classes: Optional[int] = None, grid: int = 64) -> LayoutTokenizer:
    """A LayoutTokenizer matching the model's token embedder (vocabulary, sequence length)."""
    encoder = model.cond_stage_model
    vocab = int(getattr(encoder, "vocab_size"))
    seq_len = int(encoder.transformer.max_seq_len)
    if (seq_len - 2) % 3 == 0:
        encode_crop, max_objects = True, (seq_len - 2) // 3
    elif seq_len % 3 == 0:
        encode_crop, max_objects = False, seq_len // 3
    else:
        raise ValueError(f"the layout encoder's max_seq_len={seq_len} is neither 3k nor 3k+2 tokens")
    # class ids and corner positions share the vocabulary; any id below the padding token is a class
    return LayoutTokenizer(n_classes or vocab - 1, no_tokens=vocab, max_objects=max_objects, grid=grid,
                           encode_crop=encode_crop)


def layout_tokens(tokenizer: LayoutTokenizer, layout: Layout) -> torch.Tensor:
    boxes, crop = layout
    if len(boxes) > tokenizer.max_objects:
        raise ValueError(f"a layout has {len(boxes)} objects; the model takes at most {tokenizer.max_objects}")
    return torch.from_numpy(tokenizer.encode(boxes, crop))


@torch.no_grad()
def null_layout_conditioning(model: Any, tokenizer: LayoutTokenizer, batch: int) -> Any:
    """τ_θ of an empty layout (no objects, full crop): the unconditional branch for guidance."""
    tokens = layout_tokens(tokenizer, (np.zeros((0, 5), dtype=np.float32), (0.0, 0.0, 1.0, 1.0)))
    return model.get_learned_conditioning(tokens[None].repeat(batch, 1).to(model.alphas_cumprod.device))


def draw_layout(layout: Layout, height: int, width: int) -> torch.Tensor:
    """The boxes drawn on white, (1, 3, H, W) in [-1, 1], for the grid beside the samples."""
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, x0, y0, x1, y1 in layout[0]:
        colour = tuple(int(v) for v in np.random.default_rng(int(c)).integers(0, 200, 3))
        draw.rectangle([x0 * (width - 1), y0 * (height - 1), x1 * (width - 1), y1 * (height - 1)],
                       outline=colour, width=max(1, min(height, width) // 64))
    arr = np.asarray(canvas, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]
