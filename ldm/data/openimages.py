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
"""
from __future__ import annotations

import csv
import os
import random
from typing import Any, Optional

import numpy as np

from ldm.data.folder import ImageFolder
from ldm.data.image_io import center_crop, hflip, load_rgb, random_crop, resize_shorter, to_float
from ldm.data.layout import BBoxImageDataset, LayoutTokenizer
from ldm.data.paths import data_root, example_rng, missing_data, require_dir
from ldm.data.superres import SuperResolutionPair

__all__ = ["FullOpenImagesTrain", "FullOpenImagesValidation", "OpenImagesBBoxTrain", "OpenImagesBBoxValidation",
           "SuperresOpenImagesAdvancedTrain", "SuperresOpenImagesAdvancedValidation", "read_openimages_boxes"]

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


def _split_dir(name: str, root: Optional[str], split: str) -> tuple[str, str]:
    root = data_root("openimages", root)
    path = require_dir(name, os.path.join(root, split), _LAYOUT.format(root=root), _PREPARE.format(root=root))
    return root, path


def _annotation(name: str, root: str, kind: str) -> str:
    for candidate in _ANNOTATIONS[kind]:
        path = os.path.join(root, "annotations", candidate)
        if os.path.isfile(path):
            return path
    raise missing_data(name, os.path.join(root, "annotations", _ANNOTATIONS[kind][0]),
                       _LAYOUT.format(root=root), _PREPARE.format(root=root))


class _OpenImagesCrops(ImageFolder):
    """``image``: shorter side to ``size`` (if given; never below ``crop_size``), then a crop."""

    def __init__(self, split: str, size: Optional[int], crop_size: int, random_crop: bool, flip: bool,
                 root: Optional[str]):
        _, folder = _split_dir(type(self).__name__, root, split)
        super().__init__(root=folder, size=crop_size, crop="random" if random_crop else "center", flip=flip)
        self.short_side = size

    def _load(self, j: int) -> dict[str, Any]:
        path = self.path(j)
        arr = load_rgb(path, min_size=self.min_size, draft_size=max(self.short_side or 0, self.size))
        short = self.short_side if self.short_side is not None else min(arr.shape[:2])
        arr = resize_shorter(arr, max(short, self.size))
        arr = random_crop(arr, self.size) if self.crop == "random" else center_crop(arr, self.size)
        if self.flip and random.random() < 0.5:
            arr = hflip(arr)
        return {"image": to_float(arr), "file_path_": path, "relpath": self._paths[j]}


class FullOpenImagesTrain(_OpenImagesCrops):
    def __init__(self,
                 size: Optional[int] = None,   # shorter side before cropping (None: native)
                 crop_size: int = 256,         # output side in px
                 random_crop: bool = True,
                 flip: bool = False,
                 root: Optional[str] = None,
                 ):
        super().__init__("train", size, crop_size, random_crop, flip, root)


class FullOpenImagesValidation(_OpenImagesCrops):
    def __init__(self, size: Optional[int] = None, crop_size: int = 256, random_crop: bool = False,
                 flip: bool = False, root: Optional[str] = None):
        super().__init__("validation", size, crop_size, random_crop, flip, root)


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
    """(sorted unique image ids, offsets into rows, rows (N, 5) float32 class/x0/y0/x1/y1)."""
    ids, rows = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        for r in reader:
            c = label_index.get(r["LabelName"])
            if c is None:
                raise ValueError(f"{path}: label {r['LabelName']!r} of image {r['ImageID']} is not a listed class")
            ids.append(r["ImageID"])
            rows.append((c, float(r["XMin"]), float(r["YMin"]), float(r["XMax"]), float(r["YMax"])))
    ids_arr = np.array(ids, dtype=str)
    order = np.argsort(ids_arr, kind="stable")
    unique, starts = np.unique(ids_arr[order], return_index=True)
    offsets = np.append(starts, len(order)).astype(np.int64)
    return unique, offsets, np.array(rows, dtype=np.float32).reshape(-1, 5)[order]


class _OpenImagesBoxes:
    """Box lookup by image id (the file stem) over sorted arrays: no per-image Python objects."""

    def __init__(self, path: str, label_index: dict[str, int]):
        self.ids, self.offsets, self.rows = read_openimages_boxes(path, label_index)

    def __call__(self, relpath: str) -> np.ndarray:
        image_id = os.path.splitext(os.path.basename(relpath))[0]
        k = int(np.searchsorted(self.ids, image_id))
        if k == len(self.ids) or self.ids[k] != image_id:
            return np.zeros((0, 5), dtype=np.float32)
        return self.rows[self.offsets[k]:self.offsets[k + 1]]


class _OpenImagesBBox(BBoxImageDataset):
    def __init__(self, split: str, size: int, random_crop: bool, random_flip: bool, min_object_area: float,
                 max_objects: int, no_tokens: int, grid: int, encode_crop: bool, root: Optional[str]):
        name = type(self).__name__
        root, folder = _split_dir(name, root, split)
        labels, names = _read_classes(_annotation(name, root, "classes"))
        boxes = _OpenImagesBoxes(_annotation(name, root, split), {lab: i for i, lab in enumerate(labels)})
        tokenizer = LayoutTokenizer(len(names), no_tokens, max_objects, grid, encode_crop)
        super().__init__(folder, boxes, names, size=size, random_crop=random_crop, random_flip=random_flip,
                         min_object_area=min_object_area, tokenizer=tokenizer)


class OpenImagesBBoxTrain(_OpenImagesBBox):
    def __init__(self,
                 size: int = 256,
                 random_crop: bool = True,
                 random_flip: bool = True,
                 min_object_area: float = 1e-4,  # drop boxes smaller than this share of the crop
                 max_objects: int = 30,          # 3 tokens each; 30 * 3 + 2 = 92 = max_seq_len
                 no_tokens: int = 8192,          # the embedder's vocab_size
                 grid: int = 64,                 # corner quantisation grid
                 encode_crop: bool = True,
                 root: Optional[str] = None,
                 ):
        super().__init__("train", size, random_crop, random_flip, min_object_area, max_objects, no_tokens, grid,
                         encode_crop, root)


class OpenImagesBBoxValidation(_OpenImagesBBox):
    def __init__(self, size: int = 256, random_crop: bool = False, random_flip: bool = False,
                 min_object_area: float = 1e-4, max_objects: int = 30, no_tokens: int = 8192, grid: int = 64,
                 encode_crop: bool = True, root: Optional[str] = None):
        super().__init__("validation", size, random_crop, random_flip, min_object_area, max_objects, no_tokens,
                         grid, encode_crop, root)


# --------------------------------------------------------------------------------------------
# Super-resolution (LDM-BSR)
# --------------------------------------------------------------------------------------------

class _SuperresOpenImages(ImageFolder):
    def __init__(self, split: str, pair: SuperResolutionPair, seed: Optional[int], root: Optional[str]):
        _, folder = _split_dir(type(self).__name__, root, split)
        super().__init__(root=folder, size=pair.size)
        self.pair, self.seed = pair, seed

    def _load(self, j: int) -> dict[str, Any]:
        path = self.path(j)
        example = self.pair(load_rgb(path, min_size=self.min_size), example_rng(j, self.seed))
        example.update(file_path_=path, relpath=self._paths[j])
        return example


class SuperresOpenImagesAdvancedTrain(_SuperresOpenImages):
    """``image`` (HR) and ``LR_image`` (see :mod:`ldm.data.superres` for the parameters)."""

    def __init__(self,
                 size: int = 256,
                 degradation: str = "bsrgan_light",
                 downscale_f: int = 4,
                 min_crop_f: float = 0.5,
                 max_crop_f: float = 1.0,
                 random_crop: bool = True,
                 root: Optional[str] = None,
                 seed: Optional[int] = None,   # None: fresh draws each epoch
                 ):
        pair = SuperResolutionPair(size, degradation, downscale_f, min_crop_f, max_crop_f, random_crop)
        super().__init__("train", pair, seed, root)


class SuperresOpenImagesAdvancedValidation(_SuperresOpenImages):
    def __init__(self, size: int = 256, degradation: str = "bsrgan_light", downscale_f: int = 4,
                 min_crop_f: float = 0.5, max_crop_f: float = 1.0, random_crop: bool = True,
                 root: Optional[str] = None, seed: Optional[int] = 0):
        pair = SuperResolutionPair(size, degradation, downscale_f, min_crop_f, max_crop_f, random_crop)
        super().__init__("validation", pair, seed, root)
