"""Places for inpainting (Sec. 4.5), following the LaMa protocol: image crops with masks
from :mod:`ldm.data.masks`, as the ``inpainting_big`` model consumes them (``masked_image`` is
encoded by the first stage and concatenated with the resized ``mask`` to z_t: 3 + 3 + 1 = 7
UNet input channels).

On-disk layout (``root`` defaults to ``$LDM_DATA_ROOT/places`` or ``data/places``), with the
Places365-Standard high-resolution images (http://places2.csail.mit.edu/download.html)::

    data/places/
      train/...            data_large/ unpacked (any nesting: a/airfield/00000001.jpg ...)
      val/...              val_large/ unpacked
      val_masks/...        optional: fixed evaluation masks, <image path without extension>.png,
                           non-zero = to fill (e.g. masks exported from LaMa's evaluation sets;
                           they are resized to ``size`` x ``size``, so pair them with square
                           evaluation crops such as LaMa's 512 x 512 Places test images)

Examples: ``image`` HWC float32 in [-1, 1]; ``mask`` (H, W, 1) float32 in {0, 1}, 1 = to fill;
``masked_image`` with the hole black (-1), see :func:`ldm.data.masks.mask_image`; ``file_path_``, ``relpath``.
Training masks are fresh per step; validation masks depend only on ``(mask_seed, index)``, so
every evaluation sees the same holes. ``mask_kind="hard"`` gives the paper's 40-50 % split.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from ldm.data.folder import ImageFolder
from ldm.data.image_io import BadImageError
from ldm.data.masks import MaskGenerator, mask_image
from ldm.data.paths import ExpectedLayout, data_root, example_rng
from ldm.data.variants import dataset_variant

__all__ = ["PlacesInpainting", "PlacesInpaintingTrain", "PlacesInpaintingValidation"]

_SPLITS = {"train": "train", "validation": "val"}


class PlacesInpainting(ImageFolder):
    """``image`` plus ``mask`` and ``masked_image`` (see the module docstring)."""

    def __init__(self,
                 split: str,                          # "train" or "validation"
                 size: int = 256,                     # crop side (the paper: 256 train, 512 eval)
                 mask_kind: str = "mixed",            # see ldm.data.masks.MASK_KINDS
                 mask_seed: Optional[int] = None,     # fixes mask i per index; None: fresh masks
                 random_crop: bool = False,
                 flip: bool = False,
                 use_mask_files: bool = False,        # read <root>/val_masks/<stem>.png instead
                 root: Optional[str] = None,
                 ):
        if split not in _SPLITS:
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        root = data_root("places", root)
        layout = (f"{root}/\n  train/...       Places365 data_large images\n  val/...         val_large images\n"
                  "  val_masks/...   optional fixed masks: <image path without extension>.png")
        prepare = ("download 'High resolution images' (train and val) of Places365-Standard from\n"
                   f"http://places2.csail.mit.edu/download.html and unpack them into {root}/train and {root}/val")
        expected = ExpectedLayout(type(self).__name__, layout, prepare)
        folder = expected.dir(os.path.join(root, _SPLITS[split]))
        self.mask_dir = expected.dir(os.path.join(root, f"{_SPLITS[split]}_masks")) if use_mask_files else None
        super().__init__(root=folder, size=size, crop="random" if random_crop else "center", flip=flip)
        self.masks = MaskGenerator(mask_kind)
        self.mask_seed = mask_seed

    def _mask(self, j: int) -> np.ndarray:
        if self.mask_dir is None:
            return self.masks(self.size, rng=example_rng(j, self.mask_seed))
        path = os.path.join(self.mask_dir, os.path.splitext(self.relpath(j))[0] + ".png")
        try:
            with Image.open(path) as img:
                mask = np.asarray(img.convert("L").resize((self.size, self.size), Image.Resampling.NEAREST)) > 0
        except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
            raise BadImageError(path, f"mask unreadable ({exc})") from None
        return mask.astype(np.float32)

    def load_example(self, j: int) -> dict[str, Any]:
        example = super().load_example(j)
        mask = self._mask(j)[..., None]
        example.update(mask=mask, masked_image=mask_image(example["image"], mask))
        return example


PlacesInpaintingTrain = dataset_variant(
    PlacesInpainting, "PlacesInpaintingTrain", fixed={"split": "train", "use_mask_files": False},
    defaults={"random_crop": True, "flip": True})
PlacesInpaintingValidation = dataset_variant(PlacesInpainting, "PlacesInpaintingValidation",
                                             fixed={"split": "validation"}, defaults={"size": 512, "mask_seed": 0})
