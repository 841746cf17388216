"""Robust image loading and the small geometric transforms every dataset shares.

Real photo collections contain grayscale scans, palette GIFs, transparent PNGs, CMYK JPEGs,
16-bit TIFF/PNG exports, phone photos stored sideways with an EXIF rotation tag, truncated
downloads and 1x1 tracking pixels. ``load_rgb`` turns all of the readable ones into the same
thing (uint8 RGB, upright) and raises one specific error, :class:`BadImageError`, for the rest,
so a dataset can skip them without masking unrelated bugs.

Images enter the models as HWC float32 in [-1, 1] (``to_float``), the CompVis batch format.
"""
from __future__ import annotations

import io
import os
import random
from typing import BinaryIO, Literal, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "BadImageError",
    "CropMode",
    "DEFAULT_MIN_SIZE",
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "center_crop",
    "hflip",
    "load_rgb",
    "random_crop",
    "resize_crop",
    "resize_shorter",
    "to_float",
    "to_uint8",
]

# Extensions Pillow decodes that users put in training folders (compared lower-case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")

# Shorter sides below this many pixels are icons or tracking pixels, not training images.
DEFAULT_MIN_SIZE = 8

CropMode = Literal["random", "center", "none"]

_BICUBIC = Image.Resampling.BICUBIC


class BadImageError(ValueError):
    """``path`` cannot be used as an image; ``reason`` says why (unreadable, truncated, tiny...)."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# --------------------------------------------------------------------------------------------
# Decoding and colour conversion
# --------------------------------------------------------------------------------------------

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]


def _source_name(source: ImageSource, name: Optional[str]) -> str:
    """What errors call the image: ``name`` if given, else the path, the stream's name or a tag."""
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    stream_name = getattr(source, "name", None)
    return stream_name if isinstance(stream_name, str) else "<binary stream>"


def load_rgb(source: ImageSource,
             min_size: int = DEFAULT_MIN_SIZE,  # reject images whose shorter side is smaller (px)
             draft_size: Optional[int] = None,  # JPEG only: decode at a reduced scale >= this
             name: Optional[str] = None,        # what errors call the image (default: the path)
             ) -> np.ndarray:
    """Decode ``source`` (a path, encoded bytes, or a readable binary file object) to an upright
    uint8 RGB array of shape (H, W, 3).

    Conversions: grayscale/1-bit replicate to 3 channels; palette images use their palette (and
    their transparency, if any); CMYK/YCbCr convert with Pillow's formulas; 16-bit data keep
    their high byte (``v >> 8``, the same rescaling Pillow applies to 48-bit RGB PNGs, so 65535
    maps to 255 and 257*k to k); images with alpha are composited onto WHITE (transparent
    regions of logos and cut-outs are meant to be seen on a light page, and black would bias
    the data towards dark borders); the EXIF orientation tag is applied.

    ``draft_size`` lets the JPEG decoder scale by 1/2, 1/4 or 1/8 in the DCT domain while both
    sides stay >= ``draft_size``: several times faster when images are much larger than the
    training resolution, and harmless because they are downsampled afterwards anyway.

    Every failure to produce an image raises :class:`BadImageError` whose ``path`` is ``name``
    (or the path / the stream's name), so datasets can skip the item.
    """
    label = _source_name(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    elif isinstance(source, os.PathLike):
        source = os.fspath(source)
    try:
        img = Image.open(source)
    except FileNotFoundError:
        raise BadImageError(label, "file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImageError(label, f"not a readable image ({exc})") from None
    with img:
        w, h = img.size
        if min(w, h) < min_size:
            raise BadImageError(label, f"too small: {w}x{h} px, shorter side < min_size={min_size}")
        try:
            if draft_size is not None and img.format == "JPEG":
                # never below min_size: the decoded image must pass the check the file passed
                side = max(draft_size, min_size)
                img.draft("RGB", (side, side))
            img.load()  # decode now so truncation surfaces here, not in a later conversion
            img = ImageOps.exif_transpose(img)
            return _to_rgb_array(img, label)
        except BadImageError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise BadImageError(label, f"corrupt or truncated image data ({exc})") from None


def _to_rgb_array(img: Image.Image, path: str) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        return _to_rgb_array(img, path)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_white(np.asarray(img.convert("RGBA"), dtype=np.uint8))
    if mode.startswith("I;16") or mode == "I":
        # 16-bit scans and exports: rescale by the high byte, never clip (that would saturate
        # everything above 255 to white).
        v = np.clip(np.asarray(img, dtype=np.int64), 0, 65535) >> 8
        return np.repeat(v.astype(np.uint8)[..., None], 3, axis=2)
    if mode == "F":
        # Float images: [0, 1] data are scaled to [0, 255]; anything else is taken as 8-bit.
        v = np.asarray(img, dtype=np.float64)
        if v.size and np.nanmin(v) >= 0.0 and np.nanmax(v) <= 1.0:
            v = v * 255.0
        v = np.clip(np.nan_to_num(v), 0, 255).round().astype(np.uint8)
        return np.repeat(v[..., None], 3, axis=2)
    try:  # L, 1, CMYK, YCbCr and other modes Pillow converts itself
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except ValueError as exc:
        raise BadImageError(path, f"unsupported image mode {mode!r} ({exc})") from None


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """``out = (rgb * a + 255 * (255 - a)) / 255`` rounded to nearest, in integer arithmetic."""
    rgb = rgba[..., :3].astype(np.uint32)
    a = rgba[..., 3:4].astype(np.uint32)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Geometry: resize the shorter side, crop, flip
# --------------------------------------------------------------------------------------------

def _scaled_size(h: int, w: int, size: int) -> tuple[int, int]:
    scale = size / min(h, w)
    return max(size, round(h * scale)), max(size, round(w * scale))


def resize_shorter(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size``, keeping the aspect ratio.

    Bicubic; Pillow widens the filter support when downscaling, which is the antialiasing that
    keeps downsampled photos free of moire.
    """
    h, w = arr.shape[:2]
    if min(h, w) == size:
        return arr
    nh, nw = _scaled_size(h, w, size)
    return np.asarray(Image.fromarray(arr).resize((nw, nh), _BICUBIC))


def center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    h, w = arr.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return arr[top:top + size, left:left + size]


def random_crop(arr: np.ndarray, size: int, rng: Optional[random.Random] = None) -> np.ndarray:
    """A uniformly placed ``size`` x ``size`` crop; ``rng`` defaults to the global ``random``."""
    rng = rng or random
    h, w = arr.shape[:2]
    top, left = rng.randint(0, h - size), rng.randint(0, w - size)
    return arr[top:top + size, left:left + size]


def hflip(arr: np.ndarray) -> np.ndarray:
    return arr[:, ::-1]


def resize_crop(arr: np.ndarray,
                size: Optional[int],                  # output side in px; None keeps the image as is
                crop: CropMode = "center",            # where the square window lies ("none": no crop)
                rng: Optional[random.Random] = None,  # for "random" crops; default: global ``random``
                ) -> np.ndarray:
    """Shorter side to ``size`` then a ``size`` x ``size`` crop, resampling only the crop window.

    Equivalent to ``resize_shorter`` followed by a crop, but Pillow's ``box=`` argument resamples
    just the pixels that are kept: for a 4:3 photo a quarter of the resize work is saved.
    """
    if size is None:
        return arr
    if crop == "none":
        return resize_shorter(arr, size)
    if crop not in ("center", "random"):
        raise ValueError(f"crop must be 'random', 'center' or 'none', got {crop!r}")
    h, w = arr.shape[:2]
    nh, nw = _scaled_size(h, w, size)
    if crop == "center":
        top, left = (nh - size) // 2, (nw - size) // 2
    else:
        rng = rng or random
        top, left = rng.randint(0, nh - size), rng.randint(0, nw - size)
    if (nh, nw) == (h, w):
        return arr[top:top + size, left:left + size]
    sy, sx = h / nh, w / nw  # source pixels per output pixel
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return np.asarray(Image.fromarray(arr).resize((size, size), _BICUBIC, box=box))


# --------------------------------------------------------------------------------------------
# Value range
# --------------------------------------------------------------------------------------------

def to_float(arr: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (0 -> -1, 255 -> 1), the range the models expect."""
    out = arr.astype(np.float32)
    out /= 127.5  # division, not multiplication by 1/127.5: keeps 255 -> exactly 1.0
    out -= 1.0
    return out


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_float`, rounded and clipped, for saving or inspecting samples."""
    return np.clip((np.asarray(arr, dtype=np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
