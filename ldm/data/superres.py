"""The HR/LR pair of the super-resolution experiments (Sec. 4.4), shared by the ImageNet and
OpenImages datasets with the original parameters.

From a decoded photo: a square crop whose side is a random fraction in
``[min_crop_f, max_crop_f]`` of the shorter side (placed randomly or centrally) is resized to
``size`` (the HR target ``image``); ``degradation`` turns it into ``LR_image`` of side
``size // downscale_f``. Both are HWC float32 in [-1, 1]. Degradations:

* ``bsrgan`` / ``bsrgan_light``: the BSR degradation pipeline (random blur, resizing, noise, JPEG);
* ``bicubic``: fixed MATLAB-style antialiased bicubic downsampling (SR3's protocol);
* ``cv_<method>``: OpenCV-style resizing without antialiasing (nearest, bilinear, bicubic, area, lanczos);
* ``pil_<method>``: Pillow resizing (nearest, bilinear, bicubic, box, hamming, lanczos).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ldm.data.image_io import to_float
from ldm.data.paths import example_rng
from ldm.modules.image_degradation import BSR, BSR_LIGHT, bicubic_downsample, bsr_degrade, pil_resize, resize
from ldm.modules.image_degradation.resize import CV_METHODS, PIL_METHODS

__all__ = ["DEGRADATIONS", "SuperResolutionExamples", "SuperResolutionPair"]

DEGRADATIONS: tuple[str, ...] = (("bsrgan", "bsrgan_light", "bicubic")
                                 + tuple(f"cv_{m}" for m in CV_METHODS)
                                 + tuple(f"pil_{m}" for m in PIL_METHODS))


class SuperResolutionPair:
    """Callable ``(uint8 photo, rng) -> {"image", "LR_image"}``; validated at construction."""

    def __init__(self,
                 size: int,                           # HR side in px
                 degradation: str = "bsrgan_light",   # one of DEGRADATIONS
                 downscale_f: int = 4,                # LR side = size // downscale_f
                 min_crop_f: float = 0.5,             # crop side, as a fraction of the shorter side
                 max_crop_f: float = 1.0,
                 random_crop: bool = True,            # else the crop is centred
                 ):
        if degradation not in DEGRADATIONS:
            raise ValueError(f"degradation must be one of {DEGRADATIONS}, got {degradation!r}")
        if size is None or downscale_f < 1 or size % downscale_f:
            raise ValueError(f"size ({size}) must be given and divisible by downscale_f ({downscale_f})")
        if not 0.0 < min_crop_f <= max_crop_f <= 1.0:
            raise ValueError(f"need 0 < min_crop_f <= max_crop_f <= 1, got {min_crop_f}, {max_crop_f}")
        self.size, self.degradation, self.downscale_f = size, degradation, downscale_f
        self.min_crop_f, self.max_crop_f, self.random_crop = min_crop_f, max_crop_f, random_crop

    def __call__(self, arr: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        hr = self._crop(arr, rng)
        lr = self._degrade(hr, rng)
        return {"image": to_float(hr), "LR_image": to_float(lr)}

    def _crop(self, arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = arr.shape[:2]
        side = max(1, int(min(h, w) * rng.uniform(self.min_crop_f, self.max_crop_f)))
        if self.random_crop:
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        else:
            top, left = (h - side) // 2, (w - side) // 2
        crop = arr[top:top + side, left:left + side]
        if side == self.size:
            return crop
        # Area averaging when shrinking (no aliasing in the HR target), bicubic when enlarging.
        return resize(crop, (self.size, self.size), "area" if side > self.size else "bicubic")

    def _degrade(self, hr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        d, f = self.degradation, self.downscale_f
        lr_size = (self.size // f, self.size // f)
        if d in ("bsrgan", "bsrgan_light"):
            return bsr_degrade(hr, f, rng, BSR if d == "bsrgan" else BSR_LIGHT)
        if d == "bicubic":
            return bicubic_downsample(hr, f)
        if d.startswith("cv_"):
            return resize(hr, lr_size, d[3:])
        return pil_resize(hr, lr_size, d[4:])


class SuperResolutionExamples:
    """Mixin for an :class:`~ldm.data.folder.ImageFolder`: example j is the HR/LR pair of its
    full-resolution photo, plus ``file_path_``/``relpath``. Call :meth:`use_pair` in ``__init__``.
    """

    def use_pair(self,
                 pair: SuperResolutionPair,
                 seed: Optional[int],  # fixes crop and degradation per index (validation); None: fresh
                 ) -> None:
        self.pair, self.seed = pair, seed
        self.draft_size = None  # the crop is a fraction of the photo: decode it at full resolution

    def load_example(self, j: int) -> dict[str, Any]:
        example = self.pair(self.read_image(j), example_rng(j, self.seed))
        example.update(file_path_=self.path(j), relpath=self.relpath(j))
        return example
