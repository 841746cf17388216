"""Degradations that turn HR images into the LR inputs of the super-resolution models (Sec. 4.4).

``degradation_fn_bsr`` / ``degradation_fn_bsr_light`` keep the original names; ``bsr_degrade``
takes the parameter ranges explicitly; ``bicubic_downsample`` is the fixed bicubic x4 of SR3.
"""
from ldm.modules.image_degradation.bsrgan import BSR, BSRConfig, bsr_degrade
from ldm.modules.image_degradation.bsrgan import degradation_bsrgan_variant as degradation_fn_bsr
from ldm.modules.image_degradation.bsrgan_light import BSR_LIGHT
from ldm.modules.image_degradation.bsrgan_light import degradation_bsrgan_variant as degradation_fn_bsr_light
from ldm.modules.image_degradation.resize import bicubic_downsample, pil_resize, resize

__all__ = ["BSR", "BSR_LIGHT", "BSRConfig", "bicubic_downsample", "bsr_degrade", "degradation_fn_bsr",
           "degradation_fn_bsr_light", "pil_resize", "resize"]
