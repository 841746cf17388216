"""The milder BSR degradation of the released ``bsr_sr`` model (``degradation: bsrgan_light``):
a quarter of the blur, little noise, high-quality JPEG and no sensor noise, so the model
sharpens mildly degraded photos without hallucinating away real texture."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ldm.modules.image_degradation.bsrgan import BSRConfig, bsr_degrade

__all__ = ["BSR_LIGHT", "degradation_bsrgan_variant"]

BSR_LIGHT = BSRConfig(
    blur_aniso_sigma=1.0,
    blur_iso_sigma=0.5,
    gauss_noise=(1, 2),
    jpeg_quality=(80, 95),
    poisson_prob=0.0,
    speckle_prob=0.0,
)


def degradation_bsrgan_variant(image: np.ndarray,
                               sf: int = 4,
                               rng: Optional[np.random.Generator] = None,
                               ) -> dict[str, np.ndarray]:
    """The original entry point (``degradation_fn_bsr_light``): ``{"image": LR uint8}``."""
    return {"image": bsr_degrade(image, sf, rng, BSR_LIGHT)}
