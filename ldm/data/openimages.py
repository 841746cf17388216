"""OpenImages: image-only crops for the autoencoders (Tab. 8), boxes for layout-to-image
(Sec. 4.3.1) and HR/LR pairs for LDM-BSR (Sec. 4.4), with the original class names.

On-disk layout (``root`` defaults to ``$LDM_DATA_ROOT/openimages`` or ``data/openimages``), as the
official download (https://storage.googleapis.com/openimages/web/download.html) leaves it::

    data/openimages/
      train/<ImageID>.jpg
      validation/<ImageID>.jpg
      annotations/                                 (layout-to-image only)
        train-annotations-bbox.csv                 or oidv6-train-annotations-bbox.csv
        validation-annotations-bbox.csv
        class-descriptions-boxable.csv             or oidv7-class-descriptions-boxable.csv

The box CSVs have a header naming ``ImageID, LabelName, XMin, XMax, YMin, YMax`` (normalised);
the class descriptions list ``LabelName,DisplayName``, one class per line: line k is class k.
The first construction parses a box CSV once and caches a compact index beside it
(:mod:`ldm.data.openimages_boxes`); later constructions load the index in about a second.
"""
from __future__ import annotations

import csv
import os
import random
from typing import Callable, Optional

import numpy as np

from ldm.data.folder import ImageFolder
from ldm.data.image_io import center_crop, hflip, random_crop, resize_shorter
from ldm.data.layout import LayoutSplit
from ldm.data.openimages_boxes import BoxIndex, load_box_index, parse_box_csv
from ldm.data.paths import ExpectedLayout, data_root
from ldm.data.superres import SuperResolutionExamples, SuperResolutionPair
from ldm.data.variants import dataset_variant

__all__ = ["FullOpenImagesTrain", "FullOpenImagesValidation", "OpenImagesBBox", "OpenImagesBBoxTrain",
           "OpenImagesBBoxValidation", "OpenImagesCrops", "SuperresOpenImages", "SuperresOpenImagesAdvancedTrain",
           "SuperresOpenImagesAdvancedValidation", "read_openimages_boxes"]

_LAYOUT = """{root}/
  train/<ImageID>.jpg
  validation/<ImageID>.jpg
  annotations/train-annotations-bbox.csv, validation-annotations-bbox.csv,
              class-descriptions-boxable.csv   (layout-to-image only)"""
_PREPARE = """download the images and box annotations as described on
https://storage.googleapis.com/openimages/web/download.html (e.g. the AWS CLI:
aws s3 --no-sign-request sync s3://open-images-dataset/validation {root}/validation)"""
_ANNOTATIONS = {
    "train": ("train-annotations-bbox.csv", "oidv6-train-annotations-bbox.csv"),
    "validation": ("validation-annotations-bbox.csv",),
    "classes": ("class-descriptions-boxable.csv", "oidv7-class-descriptions-boxable.csv"),
}


def _expected(name: str, root: Optional[str]) -> tuple[str, ExpectedLayout]:
    root = data_root("openimages", root)
    return root, ExpectedLayout(name, _LAYOUT.format(root=root), _PREPARE.format(root=root))


def _split_dir(name: str, root: Optional[str], split: str) -> str:
    root, expected = _expected(name, root)
    return expected.dir(os.path.join(root, split))


class OpenImagesCrops(ImageFolder):
    """``image``: shorter side to ``size`` (if given; never below ``crop_size``), then a crop."""

    def __init__(self,
                 split: str,                   # "train" or "validation"
                 size: Optional[int] = None,   # shorter side before cropping (None: native)
                 crop_size: int = 256,         # output side in px
                 random_crop: bool = False,
                 flip: bool = False,           # random horizontal flips (p = 0.5)
                 root: Optional[str] = None,   # default: $LDM_DATA_ROOT/openimages or data/openimages
                 ):
        folder = _split_dir(type(self).__name__, root, split)
        super().__init__(root=folder, size=crop_size, crop="random" if random_crop else "center", flip=flip)
        self.short_side = size
        self.draft_size = max(size or 0, crop_size)

    def transform(self, arr: np.ndarray) -> np.ndarray:
        short = self.short_side if self.short_side is not None else min(arr.shape[:2])
        arr = resize_shorter(arr, max(short, self.size))
        arr = random_crop(arr, self.size) if self.crop == "random" else center_crop(arr, self.size)
        return hflip(arr) if self.flip and random.random() < 0.5 else arr


FullOpenImagesTrain = dataset_variant(OpenImagesCrops, "FullOpenImagesTrain", fixed={"split": "train"},
                                      defaults={"random_crop": True})
FullOpenImagesValidation = dataset_variant(OpenImagesCrops, "FullOpenImagesValidation", fixed={"split": "validation"})


# --------------------------------------------------------------------------------------------
# Layout-to-image
# --------------------------------------------------------------------------------------------

def _read_classes(path: str) -> tuple[list[str], list[str]]:
    labels, names = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if row and row[0] != "LabelName":  # the v7 file has a header, v6 has none
                labels.append(row[0])
                names.append(row[1] if len(row) > 1 else row[0])
    return labels, names


def read_openimages_boxes(path: str, label_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted unique image ids, offsets into rows, rows (N, 5) float32 class/x0/y0/x1/y1), parsed
    without the cache."""
    index = parse_box_csv(path)
    return index.ids.astype(str), index.offsets, index.rows(label_index, path)


class _OpenImagesBoxes:
    """Box lookup by image id (the file stem) over sorted arrays: no per-image Python objects."""

    def __init__(self, index: BoxIndex, label_index: dict[str, int], source: str):
        self.ids, self.offsets, self.rows = index.ids, index.offsets, index.rows(label_index, source)

    def __call__(self, relpath: str) -> np.ndarray:
        image_id = os.path.splitext(os.path.basename(relpath))[0].encode("utf-8")
        k = int(np.searchsorted(self.ids, image_id))
        if k == len(self.ids) or self.ids[k] != image_id:
            return np.zeros((0, 5), dtype=np.float32)
        return self.rows[self.offsets[k]:self.offsets[k + 1]]


class OpenImagesBBox(LayoutSplit):
    """Layout-to-image on OpenImages (see :class:`~ldm.data.layout.LayoutSplit` for parameters)."""

    def read_annotations(self, split: str, root: Optional[str]) -> tuple[str, Callable[[str], np.ndarray], list[str]]:
        root, expected = _expected(type(self).__name__, root)
        folder = expected.dir(os.path.join(root, split))
        candidates = {kind: [os.path.join(root, "annotations", f) for f in files]
                      for kind, files in _ANNOTATIONS.items()}
        labels, names = _read_classes(expected.first_file(candidates["classes"]))
        boxes_csv = expected.first_file(candidates[split])
        boxes = _OpenImagesBoxes(load_box_index(boxes_csv), {lab: i for i, lab in enumerate(labels)}, boxes_csv)
        return folder, boxes, names


OpenImagesBBoxTrain = dataset_variant(OpenImagesBBox, "OpenImagesBBoxTrain", fixed={"split": "train"},
                                      defaults={"random_crop": True, "random_flip": True})
OpenImagesBBoxValidation = dataset_variant(OpenImagesBBox, "OpenImagesBBoxValidation", fixed={"split": "validation"})


# --------------------------------------------------------------------------------------------
# Super-resolution (LDM-BSR)
# --------------------------------------------------------------------------------------------

class SuperresOpenImages(SuperResolutionExamples, ImageFolder):
    """``image`` (HR) and ``LR_image`` (see :mod:`ldm.data.superres` for the parameters)."""

    def __init__(self,
                 split: str,                          # "train" or "validation"
                 size: int = 256,                     # HR side in px
                 degradation: str = "bsrgan_light",   # see ldm.data.superres.DEGRADATIONS
                 downscale_f: int = 4,
                 min_crop_f: float = 0.5,
                 max_crop_f: float = 1.0,
                 random_crop: bool = True,
                 root: Optional[str] = None,
                 seed: Optional[int] = None,          # None: fresh draws each epoch
                 ):
        pair = SuperResolutionPair(size, degradation, downscale_f, min_crop_f, max_crop_f, random_crop)
        super().__init__(root=_split_dir(type(self).__name__, root, split), size=size)
        self.use_pair(pair, seed)


SuperresOpenImagesAdvancedTrain = dataset_variant(SuperresOpenImages, "SuperresOpenImagesAdvancedTrain",
                                                  fixed={"split": "train"})
SuperresOpenImagesAdvancedValidation = dataset_variant(SuperresOpenImages, "SuperresOpenImagesAdvancedValidation",
                                                       fixed={"split": "validation"}, defaults={"seed": 0})
