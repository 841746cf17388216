"""LSUN-Churches and LSUN-Bedrooms at 256^2 (unconditional LDMs, Tab. 1), with the original
parameters ``txt_file``, ``data_root``, ``size``, ``interpolation`` and ``flip_p``.

On-disk layout (defaults under ``$LDM_DATA_ROOT`` or ``data/``)::

    data/lsun/
      church_outdoor_train.txt   church_outdoor_val.txt   <- image paths relative to the folder
      churches/...                                         <- the exported church_outdoor images
      bedrooms_train.txt         bedrooms_val.txt
      bedrooms/...

LSUN ships as LMDB databases; export them to image files with the LSUN tools
(https://github.com/fyu/lsun, ``python data.py export <lmdb> --out_dir data/lsun/churches``), then
write the lists with ``python scripts/prepare_lsun.py --category church_outdoor``.

Each image is center-cropped to a square, resized to ``size`` with ``interpolation`` and flipped
with probability ``flip_p`` (0 for the validation splits).
"""
from __future__ import annotations

import os
import random
from typing import Optional

import numpy as np

from ldm.data.folder import ImageFolder
from ldm.data.image_io import center_crop, hflip
from ldm.data.paths import ExpectedLayout
from ldm.data.paths import data_root as default_root  # `data_root` is the original parameter name
from ldm.data.variants import dataset_variant
from ldm.modules.image_degradation.resize import pil_resize

__all__ = ["LSUNBase", "LSUNBedroomsTrain", "LSUNBedroomsValidation", "LSUNChurchesTrain",
           "LSUNChurchesValidation"]

# The original names ("linear" is bilinear) -> Pillow filters.
_INTERPOLATIONS = {"linear": "bilinear", "bilinear": "bilinear", "bicubic": "bicubic", "lanczos": "lanczos",
                   "nearest": "nearest", "box": "box", "hamming": "hamming"}


class LSUNBase(ImageFolder):
    """The images listed in ``txt_file`` under ``data_root``: ``image``, ``file_path_``, ``relpath``."""

    def __init__(self,
                 txt_file: str,                  # list of image paths relative to data_root
                 data_root: str,                 # folder of the exported images
                 size: Optional[int] = None,     # output side in px; None keeps the square crop
                 interpolation: str = "bicubic",  # linear | bilinear | bicubic | lanczos | nearest
                 flip_p: float = 0.5,            # probability of a horizontal flip
                 ):
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must lie in [0, 1], got {flip_p}")
        layout = (f"{os.path.dirname(txt_file) or '.'}/\n  {os.path.basename(txt_file)}   image paths relative to "
                  f"{data_root}\n{data_root}/\n  <the exported LSUN images>")
        prepare = ("export the LSUN LMDB with https://github.com/fyu/lsun (python data.py export ...),\n"
                   f"then: python scripts/prepare_lsun.py --data-root {data_root} --train-list {txt_file} ...")
        expected = ExpectedLayout(type(self).__name__, layout, prepare)
        expected.dir(data_root)
        super().__init__(root=data_root, size=size, crop="center", file_list=expected.file(txt_file))
        self.interpolation = _INTERPOLATIONS[interpolation]
        self.flip_p = flip_p

    def transform(self, arr: np.ndarray) -> np.ndarray:
        """The original geometry: the central square, resized with ``interpolation``, flipped."""
        arr = center_crop(arr, min(arr.shape[:2]))
        if self.size is not None and arr.shape[0] != self.size:
            arr = pil_resize(arr, (self.size, self.size), self.interpolation)
        if random.random() < self.flip_p:
            arr = hflip(arr)
        return arr


class _LSUNCategory(LSUNBase):
    """One category's split, with the list and image folder defaulting under ``data/lsun``."""

    def __init__(self,
                 list_name: str,                 # default list file name under data/lsun
                 folder: str,                    # default image folder name under data/lsun
                 txt_file: Optional[str] = None,
                 data_root: Optional[str] = None,
                 size: Optional[int] = None,
                 interpolation: str = "bicubic",
                 flip_p: float = 0.5,
                 ):
        lsun = default_root("lsun")
        super().__init__(txt_file or os.path.join(lsun, list_name), data_root or os.path.join(lsun, folder),
                         size=size, interpolation=interpolation, flip_p=flip_p)


LSUNChurchesTrain = dataset_variant(
    _LSUNCategory, "LSUNChurchesTrain", fixed={"list_name": "church_outdoor_train.txt", "folder": "churches"})
LSUNChurchesValidation = dataset_variant(
    _LSUNCategory, "LSUNChurchesValidation", fixed={"list_name": "church_outdoor_val.txt", "folder": "churches"},
    defaults={"flip_p": 0.0})
LSUNBedroomsTrain = dataset_variant(
    _LSUNCategory, "LSUNBedroomsTrain", fixed={"list_name": "bedrooms_train.txt", "folder": "bedrooms"})
LSUNBedroomsValidation = dataset_variant(
    _LSUNCategory, "LSUNBedroomsValidation", fixed={"list_name": "bedrooms_val.txt", "folder": "bedrooms"},
    defaults={"flip_p": 0.0})
