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
from typing import Any, Optional

from ldm.data.folder import ImageFolder
from ldm.data.image_io import center_crop, hflip, load_rgb, to_float
from ldm.data.paths import data_root, require_dir, require_file
from ldm.modules.image_degradation.resize import pil_resize

__all__ = ["LSUNBase", "LSUNBedroomsTrain", "LSUNBedroomsValidation", "LSUNChurchesTrain",
           "LSUNChurchesValidation"]

# The original names ("linear" is bilinear) -> Pillow filters.
_INTERPOLATIONS = {"linear": "bilinear", "bilinear": "bilinear", "bicubic": "bicubic", "lanczos": "lanczos",
                   "nearest": "nearest", "box": "box", "hamming": "hamming"}


def _lsun(path: str) -> str:
    return os.path.join(data_root("lsun"), path)


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
        require_dir(type(self).__name__, data_root, layout, prepare)
        require_file(type(self).__name__, txt_file, layout, prepare)
        super().__init__(root=data_root, size=size, crop="center", file_list=txt_file)
        self.interpolation = _INTERPOLATIONS[interpolation]
        self.flip_p = flip_p

    def _load(self, j: int) -> dict[str, Any]:
        path = self.path(j)
        arr = load_rgb(path, min_size=self.min_size, draft_size=self.size)
        arr = center_crop(arr, min(arr.shape[:2]))
        if self.size is not None and arr.shape[0] != self.size:
            arr = pil_resize(arr, (self.size, self.size), self.interpolation)
        if random.random() < self.flip_p:
            arr = hflip(arr)
        return {"image": to_float(arr), "file_path_": path, "relpath": self._paths[j]}


class LSUNChurchesTrain(LSUNBase):
    def __init__(self, txt_file: Optional[str] = None, data_root: Optional[str] = None, size: Optional[int] = None,
                 interpolation: str = "bicubic", flip_p: float = 0.5):
        super().__init__(txt_file or _lsun("church_outdoor_train.txt"), data_root or _lsun("churches"),
                         size=size, interpolation=interpolation, flip_p=flip_p)


class LSUNChurchesValidation(LSUNBase):
    def __init__(self, txt_file: Optional[str] = None, data_root: Optional[str] = None, size: Optional[int] = None,
                 interpolation: str = "bicubic", flip_p: float = 0.0):
        super().__init__(txt_file or _lsun("church_outdoor_val.txt"), data_root or _lsun("churches"),
                         size=size, interpolation=interpolation, flip_p=flip_p)


class LSUNBedroomsTrain(LSUNBase):
    def __init__(self, txt_file: Optional[str] = None, data_root: Optional[str] = None, size: Optional[int] = None,
                 interpolation: str = "bicubic", flip_p: float = 0.5):
        super().__init__(txt_file or _lsun("bedrooms_train.txt"), data_root or _lsun("bedrooms"),
                         size=size, interpolation=interpolation, flip_p=flip_p)


class LSUNBedroomsValidation(LSUNBase):
    def __init__(self, txt_file: Optional[str] = None, data_root: Optional[str] = None, size: Optional[int] = None,
                 interpolation: str = "bicubic", flip_p: float = 0.0):
        super().__init__(txt_file or _lsun("bedrooms_val.txt"), data_root or _lsun("bedrooms"),
                         size=size, interpolation=interpolation, flip_p=flip_p)
