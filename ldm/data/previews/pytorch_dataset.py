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

from ldm.data.laion import ShardsUnderRoot
from ldm.data.variants import dataset_variant

__all__ = ["PreviewsTrain", "PreviewsValidation"]

PreviewsTrain = dataset_variant(ShardsUnderRoot, "PreviewsTrain", fixed={"name": "previews", "split": "train"},
                                defaults={"random_crop": True})
PreviewsValidation = dataset_variant(ShardsUnderRoot, "PreviewsValidation",
                                     fixed={"name": "previews", "split": "validation"})
