"""Landscape photos with semantic maps for semantic synthesis (Sec. 4.3.2, Fig. 8): the
``RFWTrain``/``RFWValidation`` names of the ``semantic_synthesis`` configs and an S-FLCKR-style
dataset, both in the same layout.

On-disk layout (``root`` defaults to ``$LDM_DATA_ROOT/<rfw|sflckr>`` or ``data/<rfw|sflckr>``)::

    data/sflckr/
      train.txt  validation.txt     image paths relative to images/, one per line
      images/12345.jpg ...
      segmentations/12345.png ...   same relative path, .png: one label id per pixel
                                    (8- or 16-bit grey or palette PNG, same size as the image)

The photo's shorter side is resized to ``size`` (bicubic; the map with nearest neighbours), then
both are cropped to ``crop_size`` with one window. ``segmentation`` is the one-hot map, HWC with
``n_labels`` channels (182: the COCO-Stuff labels the released model uses), float32 with
``segmentation_to_float32`` (float64 otherwise, as the original).
"""
from __future__ import annotations

import os
import random
from typing import Any, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from ldm.data.folder import ImageFolder
from ldm.data.image_io import BadImageError, hflip, resize_shorter, to_float
from ldm.data.paths import ExpectedLayout, data_root
from ldm.data.variants import dataset_variant

__all__ = ["RFWTrain", "RFWValidation", "SFLCKRTrain", "SFLCKRValidation", "SegmentationBase"]


def load_label_map(path: str) -> np.ndarray:
    """(H, W) int64 label ids from a grey or palette PNG (palette indices are the ids)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise BadImageError(path, f"segmentation must be a single-channel label PNG, got mode {img.mode}")
            return np.asarray(img).astype(np.int64)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(path, "segmentation map missing") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadImageError(path, f"unreadable segmentation map ({exc})") from None


def _nearest(seg: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize sampling pixel centres, aligned with the photo's resize."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * seg.shape[0] / shape[0]).astype(np.int64), seg.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * seg.shape[1] / shape[1]).astype(np.int64), seg.shape[1] - 1)
    return seg[rows[:, None], cols[None, :]]


class SegmentationBase(ImageFolder):
    """Keys: ``image``, ``segmentation`` (one-hot HWC), ``file_path_``, ``relpath``."""

    def __init__(self,
                 name: str,                            # data folder name ("rfw", "sflckr")
                 split: str,                           # "train" or "validation"
                 size: Optional[int] = None,           # shorter side after resizing; None: native
                 crop_size: Optional[int] = None,      # square crop side; None: size (or no crop)
                 random_crop: bool = False,
                 flip: bool = False,
                 n_labels: int = 182,
                 shift_segmentation: bool = False,     # add 1 to every id (0 = "unlabelled" first)
                 segmentation_to_float32: bool = True,
                 root: Optional[str] = None,
                 ):
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        root = data_root(name, root)
        layout = (f"{root}/\n  train.txt, validation.txt   image paths relative to images/\n"
                  "  images/<name>.jpg\n  segmentations/<name>.png     label id per pixel, same size")
        prepare = ("place the photos and their label maps as above; write the lists with e.g.\n"
                   f"(cd {root}/images && ls) > {root}/train.txt")
        expected = ExpectedLayout(type(self).__name__, layout, prepare)
        images = expected.dir(os.path.join(root, "images"))
        self.segmentation_root = expected.dir(os.path.join(root, "segmentations"))
        file_list = expected.file(os.path.join(root, f"{split}.txt"))
        crop_size = crop_size or size
        super().__init__(root=images, size=crop_size, crop="random" if random_crop else "center", flip=flip,
                         file_list=file_list)
        self.draft_size = None  # the label map must match the decoded photo pixel for pixel
        self.resize_to, self.n_labels, self.shift = size, n_labels, int(shift_segmentation)
        self.onehot = np.eye(n_labels, dtype=np.float32 if segmentation_to_float32 else np.float64)

    def load_example(self, j: int) -> dict[str, Any]:
        path, rel = self.path(j), self.relpath(j)
        seg_path = os.path.join(self.segmentation_root, os.path.splitext(rel)[0] + ".png")
        arr, seg = self.read_image(j), load_label_map(seg_path) + self.shift
        if seg.shape != arr.shape[:2]:
            raise BadImageError(seg_path, f"label map is {seg.shape[1]}x{seg.shape[0]}, the image "
                                          f"{arr.shape[1]}x{arr.shape[0]}")
        if seg.max() >= self.n_labels:
            raise BadImageError(seg_path, f"label id {seg.max()} >= n_labels={self.n_labels}")
        if self.resize_to is not None:
            arr = resize_shorter(arr, self.resize_to)
            seg = _nearest(seg, arr.shape[:2])
        if self.size is not None:
            h, w = arr.shape[:2]
            if min(h, w) < self.size:
                raise BadImageError(path, f"{w}x{h} px after resizing is smaller than crop_size={self.size}")
            random_window = self.crop == "random"
            top = random.randint(0, h - self.size) if random_window else (h - self.size) // 2
            left = random.randint(0, w - self.size) if random_window else (w - self.size) // 2
            arr = arr[top:top + self.size, left:left + self.size]
            seg = seg[top:top + self.size, left:left + self.size]
        if self.flip and random.random() < 0.5:
            arr, seg = hflip(arr), seg[:, ::-1]
        return {"image": to_float(arr), "segmentation": self.onehot[seg], "file_path_": path, "relpath": rel}


RFWTrain = dataset_variant(SegmentationBase, "RFWTrain", fixed={"name": "rfw", "split": "train"},
                           defaults={"random_crop": True})
RFWValidation = dataset_variant(SegmentationBase, "RFWValidation", fixed={"name": "rfw", "split": "validation"})
SFLCKRTrain = dataset_variant(SegmentationBase, "SFLCKRTrain", fixed={"name": "sflckr", "split": "train"},
                              defaults={"random_crop": True})
SFLCKRValidation = dataset_variant(SegmentationBase, "SFLCKRValidation",
                                   fixed={"name": "sflckr", "split": "validation"})
