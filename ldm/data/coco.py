"""MS-COCO: image-caption pairs (text-to-image evaluation, Tab. 2) and instance boxes
(layout-to-image finetuning, Sec. 4.3.1).

On-disk layout (``root`` defaults to ``$LDM_DATA_ROOT/coco`` or ``data/coco``), as the official
2017 download (https://cocodataset.org/#download) unpacks::

    data/coco/
      train2017/000000000009.jpg ...
      val2017/000000000139.jpg ...
      annotations/captions_train2017.json   captions_val2017.json
                  instances_train2017.json  instances_val2017.json

Captions: training draws one of an image's (about five) captions at random, validation always
uses the first by annotation id. Boxes: the 80 thing categories, indexed in order of their
COCO category id; crowd annotations are left out.
"""
from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from typing import Any, Callable, Optional

import numpy as np

from ldm.data.folder import ImageFolder
from ldm.data.image_io import BadImageError
from ldm.data.layout import LayoutSplit
from ldm.data.paths import ExpectedLayout, data_root
from ldm.data.variants import dataset_variant

__all__ = ["CocoBBox", "CocoBBoxTrain", "CocoBBoxValidation", "CocoCaptions", "CocoCaptionsTrain",
           "CocoCaptionsValidation", "read_coco_instances"]

_LAYOUT = """{root}/
  train2017/*.jpg, val2017/*.jpg
  annotations/captions_train2017.json, captions_val2017.json,
              instances_train2017.json, instances_val2017.json"""
_PREPARE = """download and unzip train2017.zip, val2017.zip and annotations_trainval2017.zip
from https://cocodataset.org/#download into {root}"""
_SPLITS = {"train": "train2017", "validation": "val2017"}


def _split_paths(name: str, root: Optional[str], split: str, kind: str) -> tuple[str, str]:
    """(image folder, ``<kind>_<split>2017.json``) of a split, or the missing-data error."""
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    root = data_root("coco", root)
    expected = ExpectedLayout(name, _LAYOUT.format(root=root), _PREPARE.format(root=root))
    folder = expected.dir(os.path.join(root, _SPLITS[split]))
    return folder, expected.file(os.path.join(root, "annotations", f"{kind}_{_SPLITS[split]}.json"))


def _load_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class CocoCaptions(ImageFolder):
    """``image`` and ``caption`` (plus ``file_path_``/``relpath``); images without captions are skipped."""

    def __init__(self,
                 split: str,                    # "train" or "validation"
                 size: Optional[int] = 256,
                 root: Optional[str] = None,
                 random_crop: bool = False,
                 flip: bool = False,
                 random_caption: bool = True,   # else always the first caption
                 ):
        folder, annotations = _split_paths(type(self).__name__, root, split, "captions")
        super().__init__(root=folder, size=size, crop="random" if random_crop else "center", flip=flip)
        data = _load_json(annotations)
        files = {im["id"]: im["file_name"] for im in data["images"]}
        captions: dict[str, list[str]] = defaultdict(list)
        for ann in sorted(data["annotations"], key=lambda a: a["id"]):
            captions[files[ann["image_id"]]].append(" ".join(ann["caption"].split()))
        self.caption_lists = dict(captions)
        self.random_caption = random_caption

    def caption(self, j: int) -> Optional[str]:
        options = self.caption_lists.get(self.relpath(j))
        if not options:
            raise BadImageError(self.path(j), "no caption in the annotation file")
        return random.choice(options) if self.random_caption else options[0]


CocoCaptionsTrain = dataset_variant(CocoCaptions, "CocoCaptionsTrain", fixed={"split": "train"},
                                    defaults={"random_crop": True})
CocoCaptionsValidation = dataset_variant(CocoCaptions, "CocoCaptionsValidation", fixed={"split": "validation"},
                                         defaults={"random_caption": False})


def read_coco_instances(path: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """(file name -> (N, 5) float32 normalised boxes, class names), crowd boxes excluded."""
    data = _load_json(path)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    images = {im["id"]: im for im in data["images"]}
    rows: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        W, H = im["width"], im["height"]
        rows[im["file_name"]].append((index[ann["category_id"]], x / W, y / H, (x + w) / W, (y + h) / H))
    boxes = {name: np.array(r, dtype=np.float32) for name, r in rows.items()}
    return boxes, [c["name"] for c in categories]


class _BoxLookup:
    """file name -> boxes; a class rather than a lambda so datasets pickle into spawned workers."""

    def __init__(self, boxes: dict[str, np.ndarray]):
        self.boxes = boxes

    def __call__(self, relpath: str) -> np.ndarray:
        return self.boxes.get(relpath, np.zeros((0, 5), dtype=np.float32))


class CocoBBox(LayoutSplit):
    """Layout-to-image on COCO: same keys and token format as the OpenImages layout datasets."""

    def read_annotations(self, split: str, root: Optional[str]) -> tuple[str, Callable[[str], np.ndarray], list[str]]:
        folder, annotations = _split_paths(type(self).__name__, root, split, "instances")
        boxes, names = read_coco_instances(annotations)
        return folder, _BoxLookup(boxes), names


CocoBBoxTrain = dataset_variant(CocoBBox, "CocoBBoxTrain", fixed={"split": "train"},
                                defaults={"random_crop": True, "random_flip": True})
CocoBBoxValidation = dataset_variant(CocoBBox, "CocoBBoxValidation", fixed={"split": "validation"})
