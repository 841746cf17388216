"""Reading inputs and writing samples: PNGs, grids, ``.npz`` arrays, and safe output paths.

Output names derived from user text (prompts) are sanitised, and every path is checked to lie
inside the output directory after resolving ``..`` and symbolic links, so no prompt can write
outside ``--outdir``.
"""
from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from ldm.data.image_io import IMAGE_EXTENSIONS, load_rgb

__all__ = [
    "IMAGE_SUFFIXES",
    "UnsafePathError",
    "image_to_tensor",
    "load_image",
    "load_label_map",
    "load_mask",
    "next_index",
    "safe_join",
    "safe_name",
    "save_grid",
    "save_images",
    "save_npz",
    "to_uint8",
]

PathLike = Union[str, os.PathLike]
IMAGE_SUFFIXES = IMAGE_EXTENSIONS
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


class UnsafePathError(ValueError):
    """A computed output path would lie outside the output directory."""


def safe_name(text: str, max_length: int = 80, fallback: str = "sample") -> str:
    """A file/folder name from arbitrary text: ASCII letters, digits, ``.``, ``_``, ``-`` only.

    Path separators and everything else become ``-``; leading dots/dashes are removed (no
    ``..``, no hidden files, no option-like names). Names longer than ``max_length`` are cut and
    get a short hash of the full text, so distinct long prompts stay distinct.
    """
    if max_length < 16:
        raise ValueError(f"max_length must be >= 16, got {max_length}")
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    name = _UNSAFE.sub("-", ascii_text.replace(" ", "_")).strip("._-")
    name = re.sub(r"-{2,}", "-", name)
    if len(name) > max_length:
        digest = hashlib.sha1(str(text).encode("utf-8")).hexdigest()[:8]
        name = name[: max_length - 9].rstrip("._-") + "-" + digest
    if not name or name.split(".")[0].lower() in _WINDOWS_RESERVED:
        name = f"{fallback}-{name}" if name else fallback
    return name


def safe_join(root: PathLike, *parts: str) -> Path:
    """``root / parts`` after checking that the resolved result stays inside ``root``."""
    base = Path(os.path.realpath(root))
    target = Path(os.path.realpath(base.joinpath(*parts)))
    if os.path.commonpath([base, target]) != str(base):
        raise UnsafePathError(f"output path {'/'.join(parts)!r} would lie outside the output directory {base}")
    return target


def next_index(directory: PathLike, suffix: str = ".png") -> int:
    """1 + the largest leading number of ``directory``'s ``*suffix`` files (0 if none), so that
    repeated runs into the same folder add files instead of overwriting them."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    numbers = [int(m.group(1)) for p in directory.glob(f"*{suffix}")
               if (m := re.match(r"(\d+)", p.name))]
    return max(numbers) + 1 if numbers else 0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), rounded and clipped."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
    x = ((x.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_images(x: torch.Tensor, directory: PathLike, start: Optional[int] = None, prefix: str = "") -> list[Path]:
    """One PNG per image, numbered ``<prefix><index:05d>.png`` from ``start`` (default: after
    the files already there)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index = next_index(directory) if start is None else start
    paths = []
    prefix = safe_name(prefix, fallback="") if prefix else ""
    for k, arr in enumerate(to_uint8(x)):
        path = safe_join(directory, f"{prefix}{index + k:05d}.png")
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def save_grid(x: torch.Tensor, path: PathLike, nrow: int) -> Path:
    """All images in one PNG, ``nrow`` per row."""
    grid = make_grid(x.detach().float().cpu().clamp(-1.0, 1.0), nrow=max(1, nrow), padding=2, pad_value=1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(grid[None])[0]).save(path)
    return path


def save_npz(path: PathLike, samples: np.ndarray, labels: Optional[np.ndarray] = None) -> Path:
    """uint8 samples (N, H, W, 3) under ``arr_0`` (the layout FID/IS evaluation tools read),
    class labels under ``labels`` when given."""
    if samples.dtype != np.uint8 or samples.ndim != 4 or samples.shape[-1] != 3:
        raise ValueError(f"samples must be uint8 (N, H, W, 3), got {samples.dtype} {samples.shape}")
    arrays = {"arr_0": samples}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def image_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (1, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def load_image(path: PathLike, size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """An image file as (1, 3, H, W) in [-1, 1]; ``size=(H, W)`` resizes (bicubic)."""
    arr = load_rgb(path, min_size=1)
    if size is not None:
        arr = np.asarray(Image.fromarray(arr).resize((int(size[1]), int(size[0])), Image.Resampling.BICUBIC))
    return image_to_tensor(arr)


def load_mask(path: PathLike) -> torch.Tensor:
    """A mask image as (1, 1, H, W) in {0, 1}: 1 (white) where to fill in, thresholded at 50%."""
    with Image.open(path) as img:
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy((arr >= 0.5).astype(np.float32))[None, None]


def load_label_map(path: PathLike) -> torch.Tensor:
    """A segmentation map PNG (one class index per pixel: mode L, P or I) as int64 (1, H, W)."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            raise ValueError(f"{path}: a label map must be a single-channel image of class indices "
                             f"(mode L, P or I), got mode {img.mode}")
        arr = np.asarray(img).astype(np.int64)
    return torch.from_numpy(arr)[None]


def colorize_labels(labels: torch.Tensor, n_classes: int, seed: int = 0) -> torch.Tensor:
    """(B, H, W) class indices -> (B, 3, H, W) in [-1, 1] with a fixed random colour per class."""
    palette = torch.rand(max(n_classes, int(labels.max()) + 1), 3, generator=torch.Generator().manual_seed(seed))
    return palette[labels.long()].permute(0, 3, 1, 2) * 2.0 - 1.0
