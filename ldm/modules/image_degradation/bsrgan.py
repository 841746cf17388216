"""The BSR degradation model (Zhang et al. 2021) used to train LDM-BSR, the paper's generic
super-resolution model (Sec. 4.4): blur, downsampling, noise and JPEG compression applied in a
random order, so the model learns to invert many degradations instead of bicubic alone.

One call turns an HR uint8 image (H, W, 3) into an LR uint8 image of exactly
(H // sf, W // sf, 3). All randomness comes from the ``numpy.random.Generator`` passed in, so a
seed fixes the degradation. :data:`BSR` holds the full parameter ranges, :data:`BSR_LIGHT` (see
``bsrgan_light``) the milder ones of the released ``bsr_sr`` model.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image
from scipy import ndimage

from ldm.modules.image_degradation.resize import resize

__all__ = ["BSR", "BSRConfig", "anisotropic_gaussian", "bsr_degrade", "degradation_bsrgan_variant",
           "isotropic_gaussian"]

_RESIZE_METHODS = ("bilinear", "bicubic", "area")  # drawn uniformly at each random resize


@dataclass(frozen=True)
class BSRConfig:
    """Ranges of one degradation model; noise levels in 8-bit units (0-255)."""

    blur_aniso_sigma: float = 4.0     # anisotropic blur: eigen-sigmas up to this + sf
    blur_iso_sigma: float = 2.0       # isotropic blur: sigma up to this + 0.2 sf
    prescale_prob: float = 0.25       # sf = 4 only: halve first, leaving a x2 chain
    random_resize_prob: float = 0.75  # random-scale resize, else shifted-Gaussian blur + decimation
    gauss_noise: tuple[int, int] = (2, 25)
    jpeg_prob: float = 0.9            # JPEG inside the chain (one more always comes at the end)
    jpeg_quality: tuple[int, int] = (30, 95)
    poisson_prob: float = 0.1         # photon noise, 10^[2, 4] photons at full intensity
    speckle_prob: float = 0.1         # multiplicative noise, same levels as gauss_noise


BSR = BSRConfig()


# --------------------------------------------------------------------------------------------
# Blur kernels
# --------------------------------------------------------------------------------------------

def _grid(ksize: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(ksize) - (ksize - 1) / 2
    return np.meshgrid(r, r, indexing="xy")


def isotropic_gaussian(ksize: int, sigma: float) -> np.ndarray:
    x, y = _grid(ksize)
    k = np.exp(-(x ** 2 + y ** 2) / (2 * max(sigma, 0.1) ** 2))
    return k / k.sum()


def anisotropic_gaussian(ksize: int, theta: float, sigma1: float, sigma2: float) -> np.ndarray:
    """Gaussian with eigen-sigmas (sigma1, sigma2) along axes rotated by ``theta`` (radians)."""
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    cov = rot @ np.diag([max(sigma1, 0.1) ** 2, max(sigma2, 0.1) ** 2]) @ rot.T
    x, y = _grid(ksize)
    xy = np.stack([x, y], axis=-1)
    k = np.exp(-0.5 * np.einsum("...i,ij,...j->...", xy, np.linalg.inv(cov), xy))
    return k / k.sum()


def _convolve(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    return ndimage.convolve(img, k[..., None], mode="mirror")


def _add_blur(img: np.ndarray, sf: int, rng: np.random.Generator, cfg: BSRConfig) -> np.ndarray:
    ksize = 2 * int(rng.integers(2, 12)) + 3  # 7 ... 25 px
    if rng.random() < 0.5:
        s_max = cfg.blur_aniso_sigma + sf
        k = anisotropic_gaussian(ksize, rng.random() * np.pi, s_max * rng.random(), s_max * rng.random())
    else:
        k = isotropic_gaussian(ksize, (cfg.blur_iso_sigma + 0.2 * sf) * rng.random())
    return _convolve(img, k)


# --------------------------------------------------------------------------------------------
# Resizing
# --------------------------------------------------------------------------------------------

def _random_resize(img: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    method = _RESIZE_METHODS[int(rng.integers(len(_RESIZE_METHODS)))]
    return np.clip(resize(img, (max(size[0], 1), max(size[1], 1)), method), 0.0, 1.0)


def _random_downsample(img: np.ndarray, sf: int, rng: np.random.Generator, cfg: BSRConfig) -> np.ndarray:
    """Either a resize by a random factor in [1, 2 sf], or Gaussian blur + keep every sf-th pixel."""
    h, w = img.shape[:2]
    if rng.random() < cfg.random_resize_prob:
        f = rng.uniform(1.0, 2.0 * sf)
        return _random_resize(img, (int(h / f), int(w / f)), rng)
    k = isotropic_gaussian(25, rng.uniform(0.1, 0.6 * sf))
    # Decimating at offset (sf - 1) // 2 samples the kernel centre of each sf x sf cell.
    off = (sf - 1) // 2
    return np.clip(_convolve(img, k), 0.0, 1.0)[off::sf, off::sf]


# --------------------------------------------------------------------------------------------
# Noise and compression
# --------------------------------------------------------------------------------------------

def _add_gaussian_noise(img: np.ndarray, rng: np.random.Generator, cfg: BSRConfig) -> np.ndarray:
    """Channel-independent, grey (shared) or colour-correlated noise, as in real sensors."""
    level = rng.integers(cfg.gauss_noise[0], cfg.gauss_noise[1] + 1) / 255.0
    r = rng.random()
    if r > 0.6:
        noise = rng.normal(0.0, level, img.shape)
    elif r < 0.4:
        noise = np.repeat(rng.normal(0.0, level, img.shape[:2] + (1,)), 3, axis=2)
    else:
        q, _ = np.linalg.qr(rng.random((3, 3)))
        cov = q.T @ np.diag(rng.random(3)) @ q * level ** 2
        noise = rng.multivariate_normal(np.zeros(3), cov, img.shape[:2])
    return np.clip(img + noise, 0.0, 1.0)


def _add_speckle_noise(img: np.ndarray, rng: np.random.Generator, cfg: BSRConfig) -> np.ndarray:
    level = rng.integers(cfg.gauss_noise[0], cfg.gauss_noise[1] + 1) / 255.0
    return np.clip(img + img * rng.normal(0.0, level, img.shape), 0.0, 1.0)


def _add_poisson_noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    photons = 10 ** rng.uniform(2.0, 4.0)
    if rng.random() < 0.5:  # colour shot noise
        return np.clip(rng.poisson(img * photons) / photons, 0.0, 1.0)
    grey = img @ np.array([0.299, 0.587, 0.114])  # luminance shot noise
    noise = rng.poisson(grey * photons) / photons - grey
    return np.clip(img + noise[..., None], 0.0, 1.0)


def _add_jpeg(img: np.ndarray, rng: np.random.Generator, cfg: BSRConfig) -> np.ndarray:
    quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    buf = io.BytesIO()
    Image.fromarray(_to_uint8(img)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64) / 255.0


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------

# Steps shuffled per image; "down" (random scale) always precedes "final" (exact 1/sf size).
_STEPS = ("blur", "blur", "down", "final", "gauss", "jpeg", "sensor")


def bsr_degrade(image: np.ndarray,
                sf: int = 4,                                  # downscale factor of the LR output
                rng: Optional[np.random.Generator] = None,    # default: fresh OS entropy
                config: BSRConfig = BSR,                      # parameter ranges (BSR or BSR_LIGHT)
                ) -> np.ndarray:
    """Degrade a uint8 HR image (H, W, 3) to a uint8 LR image of exactly (H // sf, W // sf, 3)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if sf < 1 or min(image.shape[:2]) < sf:
        raise ValueError(f"sf={sf} must be >= 1 and no larger than the image sides {image.shape[:2]}")
    rng = rng if rng is not None else np.random.default_rng()
    h, w = image.shape[0] // sf, image.shape[1] // sf
    img = image[:h * sf, :w * sf].astype(np.float64) / 255.0
    cur_sf = sf
    if sf == 4 and rng.random() < config.prescale_prob:
        img = _random_resize(img, (img.shape[0] // 2, img.shape[1] // 2), rng)
        cur_sf = 2
    order = list(rng.permutation(len(_STEPS)))
    i_down, i_final = order.index(2), order.index(3)
    if i_down > i_final:
        order[i_down], order[i_final] = order[i_final], order[i_down]
    for step in (_STEPS[k] for k in order):
        if step == "blur":
            img = _add_blur(img, cur_sf, rng, config)
        elif step == "down":
            img = _random_downsample(img, cur_sf, rng, config)
        elif step == "final":
            img = _random_resize(img, (h, w), rng)
        elif step == "gauss":
            img = _add_gaussian_noise(img, rng, config)
        elif step == "jpeg" and rng.random() < config.jpeg_prob:
            img = _add_jpeg(img, rng, config)
        elif step == "sensor":
            if rng.random() < config.poisson_prob:
                img = _add_poisson_noise(img, rng)
            if rng.random() < config.speckle_prob:
                img = _add_speckle_noise(img, rng, config)
    return _to_uint8(_add_jpeg(img, rng, config))


def degradation_bsrgan_variant(image: np.ndarray,
                               sf: int = 4,
                               rng: Optional[np.random.Generator] = None,
                               ) -> dict[str, np.ndarray]:
    """The original entry point (``degradation_fn_bsr``): ``{"image": LR uint8}``."""
    return {"image": bsr_degrade(image, sf, rng, BSR)}
