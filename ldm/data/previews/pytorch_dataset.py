"""``PreviewsTrain`` / ``PreviewsValidation``, named by the original ``text2img256`` config.

The original repository never shipped this module: it read an internal image-caption
collection. Here the names map onto LAION-style webdataset shards
(:class:`ldm.data.laion.WebDatasetCaptions`), so the config trains on any image-caption data
in that format::

    data/previews/              (or $LDM_DATA_ROOT/previews, or the `root` parameter)
      train/*.tar               <key>.jpg + <key>.txt (or <key>.json with "caption")
      validation/*.tar

Examples: ``image`` (HWC float32 in [-1, 1]) and ``caption``, the config's ``cond_stage_key``.
"""
from __future__ import annotations

import os
from typing import Optional

from ldm.data.laion import WebDatasetCaptions
from ldm.data.paths import data_root

__all__ = ["PreviewsTrain", "PreviewsValidation"]


class PreviewsTrain(WebDatasetCaptions):
    def __init__(self, size: Optional[int] = 256, root: Optional[str] = None, random_crop: bool = True,
                 flip: bool = False):
        super().__init__(os.path.join(data_root("previews", root), "train"), size, random_crop, flip)


class PreviewsValidation(WebDatasetCaptions):
    def __init__(self, size: Optional[int] = 256, root: Optional[str] = None, random_crop: bool = False,
                 flip: bool = False):
        super().__init__(os.path.join(data_root("previews", root), "validation"), size, random_crop, flip)
