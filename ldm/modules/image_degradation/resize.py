"""Separable image resampling written as two small matrices, so one mechanism covers every
interpolation the degradation pipelines and super-resolution datasets need.

Each output pixel ``i`` samples the input around ``c = (i + 0.5) * scale - 0.5`` (pixel centres
aligned) with a kernel; borders replicate the edge pixel. Two families:

* OpenCV-style (``bilinear``, ``bicubic``, ``lanczos``): the kernel is evaluated at unit scale,
  so downsampling aliases exactly as ``cv2.resize`` does; ``nearest`` picks input pixel
  ``floor(i * scale)``; ``area`` averages the input pixels each output pixel covers.
* MATLAB ``imresize`` bicubic (``matlab_bicubic``): the kernel is stretched by the scale factor
  when downsampling (antialiasing); this is the "bicubic x4" degradation of SR3 and of the
  paper's ImageNet super-resolution model (Sec. 4.4).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import Image

__all__ = ["CV_METHODS", "PIL_METHODS", "bicubic_downsample", "pil_resize", "resize", "resize_matrix"]

Kernel = Callable[[np.ndarray], np.ndarray]


def _cubic(a: float) -> Kernel:
    """Keys' cubic convolution kernel; a = -0.75 in OpenCV, -0.5 in MATLAB."""
    def k(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return np.where(x <= 1, near, np.where(x < 2, far, 0.0))
    return k


def _linear(x: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(x), 0.0, None)


def _lanczos4(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 4, np.sinc(x) * np.sinc(x / 4), 0.0)


# name -> (kernel, support radius at unit scale, stretch the kernel when downsampling)
_KERNELS: dict[str, tuple[Kernel, float, bool]] = {
    "bilinear": (_linear, 1.0, False),
    "bicubic": (_cubic(-0.75), 2.0, False),
    "lanczos": (_lanczos4, 4.0, False),
    "matlab_bicubic": (_cubic(-0.5), 2.0, True),
}
CV_METHODS: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "area", "lanczos")

PIL_METHODS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS,
}


def resize_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    """The (n_out, n_in) matrix whose rows are the normalised sampling weights."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resize {n_in} px to {n_out} px")
    scale = n_in / n_out
    if method == "nearest":
        m = np.zeros((n_out, n_in))
        m[np.arange(n_out), np.minimum(np.floor(np.arange(n_out) * scale).astype(int), n_in - 1)] = 1.0
        return m
    if method == "area":  # weight = overlap of input pixel [j, j + 1) with [i * scale, (i + 1) * scale)
        edges = np.arange(n_out + 1) * scale
        j = np.arange(n_in)
        lo = np.maximum(edges[:-1, None], j[None, :])
        hi = np.minimum(edges[1:, None], j[None, :] + 1)
        m = np.clip(hi - lo, 0.0, None)
        return m / m.sum(axis=1, keepdims=True)
    if method not in _KERNELS:
        raise ValueError(f"unknown resize method {method!r}; choose from {CV_METHODS + ('matlab_bicubic',)}")
    kernel, support, stretch = _KERNELS[method]
    width = scale if stretch and scale > 1 else 1.0  # kernel stretch: antialiasing when downsampling
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    taps = np.arange(-math.ceil(support * width) - 1, math.ceil(support * width) + 2)
    idx = np.floor(centres)[:, None].astype(int) + taps[None, :]
    w = kernel((idx - centres[:, None]) / width)
    w /= w.sum(axis=1, keepdims=True)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.repeat(np.arange(n_out), len(taps)), np.clip(idx, 0, n_in - 1).ravel()), w.ravel())
    return m


def resize(img: np.ndarray, size: tuple[int, int], method: str = "bicubic") -> np.ndarray:
    """Resize an HW or HWC float array to ``size = (height, width)``; float64 math, input dtype out."""
    h, w = size
    mh = resize_matrix(img.shape[0], h, method)
    mw = resize_matrix(img.shape[1], w, method)
    out = np.tensordot(mh, img.astype(np.float64), axes=(1, 0))           # (h, W, ...)
    out = np.moveaxis(np.tensordot(mw, out, axes=(1, 1)), 0, 1)           # (h, w, ...)
    if img.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(img.dtype)


def bicubic_downsample(img: np.ndarray, sf: int = 4) -> np.ndarray:
    """MATLAB-style antialiased bicubic downsampling by an integer factor ``sf``.

    The image is first cropped to a multiple of ``sf`` so the output is exactly (H // sf, W // sf).
    """
    if sf < 1:
        raise ValueError(f"sf must be a positive integer, got {sf}")
    h, w = img.shape[0] // sf, img.shape[1] // sf
    if h < 1 or w < 1:
        raise ValueError(f"image of shape {img.shape[:2]} is smaller than the factor sf={sf}")
    return resize(img[:h * sf, :w * sf], (h, w), "matlab_bicubic")


def pil_resize(img: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """Pillow's resize of a uint8 HWC image (Pillow antialiases when downsampling)."""
    if method not in PIL_METHODS:
        raise ValueError(f"unknown PIL resize method {method!r}; choose from {sorted(PIL_METHODS)}")
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), PIL_METHODS[method]))
