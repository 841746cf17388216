"""ImageNet for the class-conditional LDM (``cin256``, Tab. 3) and the super-resolution models
(``ImageNetSR*``, Sec. 4.4, also the autoencoder configs).

On-disk layout (``root`` defaults to ``$LDM_DATA_ROOT/imagenet`` or ``data/imagenet``)::

    data/imagenet/
      synset_mapping.txt     "n01440764 tench, Tinca tinca": line k is class k (LOC_synset_mapping.txt)
      train/n01440764/n01440764_10026.JPEG ...
      val/n01440764/ILSVRC2012_val_00000293.JPEG ...
      train.txt  val.txt     optional: the images to use, relative to train/ or val/

``python scripts/prepare_imagenet.py --root data/imagenet [--val-labels LOC_val_solution.csv]
[--synset-mapping LOC_synset_mapping.txt]`` sorts a flat ``val/`` into class folders and writes
``synset_mapping.txt`` and the two lists from the standard ILSVRC2012 folders.

Examples: ``image``, ``class_label`` (index in the synset mapping), ``human_label``, ``synset``,
``relpath``, ``file_path_``; the SR variants give ``image`` and ``LR_image`` instead.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional

from ldm.data.folder import ImageFolder
from ldm.data.paths import ExpectedLayout, data_root
from ldm.data.superres import SuperResolutionExamples, SuperResolutionPair
from ldm.data.variants import dataset_variant

__all__ = ["ImageNetBase", "ImageNetSR", "ImageNetSRTrain", "ImageNetSRValidation", "ImageNetTrain",
           "ImageNetValidation", "read_synset_mapping"]

SPLIT_DIRS = {"train": "train", "validation": "val"}
_LAYOUT = """{root}/
  synset_mapping.txt   one "<wnid> <human label>" per line; line k is class k
  train/<wnid>/*.JPEG
  val/<wnid>/*.JPEG
  train.txt, val.txt   optional lists of images relative to train/ or val/"""
_PREPARE = """python scripts/prepare_imagenet.py --root {root} [--val-labels LOC_val_solution.csv] \\
    [--synset-mapping LOC_synset_mapping.txt]
(ILSVRC2012 train/val images from https://image-net.org/download.php)"""


def read_synset_mapping(path: str) -> tuple[list[str], list[str]]:
    """(wnids, human labels) in class-index order from ``<wnid> <label>`` lines."""
    wnids, labels = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            wnid, _, label = line.partition(" ")
            if not (wnid.startswith("n") and wnid[1:].isdigit()):
                raise ValueError(f"{path}:{n}: expected '<wnid> <human label>', got {line!r}")
            wnids.append(wnid)
            labels.append(label.strip() or wnid)
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"{path}: a synset is listed twice")
    return wnids, labels


def _merge_config(config: Optional[Mapping], **values: Any) -> dict[str, Any]:
    """The original classes took ``config: {size: ...}``; explicit parameters fill the rest."""
    merged = dict(values)
    for key, value in (config or {}).items():
        if key not in merged:
            raise ValueError(f"unknown ImageNet config key {key!r}; accepted: {sorted(merged)}")
        merged[key] = value
    return merged


class ImageNetBase(ImageFolder):
    """One split of ImageNet with labels from ``synset_mapping.txt``."""

    def __init__(self,
                 split: str,                          # "train" or "validation"
                 config: Optional[Mapping] = None,    # the original form: {size: 256, random_crop: false}
                 root: Optional[str] = None,          # default: $LDM_DATA_ROOT/imagenet or data/imagenet
                 size: Optional[int] = 256,           # output side in px; None keeps the native size
                 random_crop: bool = False,           # random instead of center crops
                 ):
        if split not in SPLIT_DIRS:
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        opts = _merge_config(config, root=root, size=size, random_crop=random_crop)
        root = data_root("imagenet", opts["root"])
        expected = ExpectedLayout(type(self).__name__, _LAYOUT.format(root=root), _PREPARE.format(root=root))
        split_dir = expected.dir(os.path.join(root, SPLIT_DIRS[split]))
        mapping = expected.file(os.path.join(root, "synset_mapping.txt"))
        file_list = os.path.join(root, f"{SPLIT_DIRS[split]}.txt")
        super().__init__(root=split_dir, size=opts["size"], crop="random" if opts["random_crop"] else "center",
                         file_list=file_list if os.path.isfile(file_list) else None)
        self.synsets, self.human_labels = read_synset_mapping(mapping)
        self.synset_to_index = {s: i for i, s in enumerate(self.synsets)}
        unknown = sorted({self.relpath(i).split("/", 1)[0] for i in range(len(self))} - set(self.synsets))
        if unknown:
            raise ValueError(f"{split_dir}: class folder(s) {unknown[:5]} are not in {mapping}; "
                             "images must lie in <wnid>/ folders named in the synset mapping")

    def load_example(self, j: int) -> dict[str, Any]:
        example = super().load_example(j)
        synset = example["relpath"].split("/", 1)[0]
        label = self.synset_to_index[synset]
        example.update(class_label=label, human_label=self.human_labels[label], synset=synset)
        return example


ImageNetTrain = dataset_variant(ImageNetBase, "ImageNetTrain", fixed={"split": "train"})
ImageNetValidation = dataset_variant(ImageNetBase, "ImageNetValidation", fixed={"split": "validation"})


class ImageNetSR(SuperResolutionExamples, ImageNetBase):
    """HR ``image`` and degraded ``LR_image`` (see :mod:`ldm.data.superres`)."""

    def __init__(self,
                 split: str,
                 size: int = 256,                     # HR side in px
                 degradation: str = "bsrgan_light",   # see ldm.data.superres.DEGRADATIONS
                 downscale_f: int = 4,
                 min_crop_f: float = 0.5,
                 max_crop_f: float = 1.0,
                 random_crop: bool = True,
                 root: Optional[str] = None,
                 seed: Optional[int] = None,          # fixes crops/degradations per index (validation)
                 ):
        pair = SuperResolutionPair(size, degradation, downscale_f, min_crop_f, max_crop_f, random_crop)
        super().__init__(split, root=root, size=size, random_crop=random_crop)
        self.use_pair(pair, seed)


ImageNetSRTrain = dataset_variant(ImageNetSR, "ImageNetSRTrain", fixed={"split": "train"})
ImageNetSRValidation = dataset_variant(ImageNetSR, "ImageNetSRValidation", fixed={"split": "validation"},
                                       defaults={"random_crop": False, "seed": 0})
