"""Tiny fake copies of the paper datasets, in the on-disk layouts their docstrings document.

Each builder writes a handful of small random images (plus the lists, labels, captions, boxes,
maps an experiment needs) under ``base/<default folder name>``, so that with
``LDM_DATA_ROOT=base`` every dataset class finds its data where a user would put it.
:data:`LAYOUT_OF` names the builder each dataset target needs.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image

__all__ = ["BUILDERS", "LAYOUT_OF", "StepProbe", "build_all", "layout_of", "write_wordpiece_vocab"]

W, H = 44, 40          # image size: a little larger than the 32 px most tests crop
N_TRAIN, N_VAL = 3, 2  # images per split
WNIDS = ("n01440764", "n01443537")
CAPTIONS = ("a red house by the sea", "two dogs on a green field", "a small boat", "a tree in the snow",
            "a cat on a chair")


def _image(path: Path, seed: int, w: int = W, h: int = H) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") else \
        Image.fromarray(arr).save(path)


def _lines(path: Path, entries: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{e}\n" for e in entries))


# ---------------------------------------------------------------------------------------- builders

def faces(root: Path, name: str) -> None:
    """``<root>/<name>train.txt``, ``<name>validation.txt`` and the images they list."""
    files = [f"img{i:05d}.png" for i in range(N_TRAIN + N_VAL)]
    for i, f in enumerate(files):
        _image(root / f, seed=i)
    _lines(root / f"{name}train.txt", files[:N_TRAIN])
    _lines(root / f"{name}validation.txt", files[N_TRAIN:])


def lsun(root: Path) -> None:
    """``<root>/{church_outdoor,bedrooms}_{train,val}.txt`` and ``churches/``, ``bedrooms/``."""
    for prefix, folder in (("church_outdoor", "churches"), ("bedrooms", "bedrooms")):
        files = [f"{i % 2}/{prefix}{i}.webp" for i in range(N_TRAIN + N_VAL)]
        for i, f in enumerate(files):
            _image(root / folder / f, seed=10 + i)
        _lines(root / f"{prefix}_train.txt", files[:N_TRAIN])
        _lines(root / f"{prefix}_val.txt", files[N_TRAIN:])


def imagenet(root: Path) -> None:
    """``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG`` and ``synset_mapping.txt``."""
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        for i in range(n):
            _image(root / split / WNIDS[i % 2] / f"{WNIDS[i % 2]}_{split}{i}.JPEG", seed=20 + i)
    _lines(root / "synset_mapping.txt", [f"{WNIDS[0]} tench, Tinca tinca", f"{WNIDS[1]} goldfish"])


def openimages(root: Path) -> None:
    """``train/``, ``validation/`` images and the box annotations of the official download."""
    ids = {"train": [f"t{i:03d}" for i in range(N_TRAIN)], "validation": [f"v{i:03d}" for i in range(N_VAL)]}
    header = "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf," \
             "IsDepiction,IsInside\n"
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    for split, names in ids.items():
        rows = []
        for i, image_id in enumerate(names):
            _image(root / split / f"{image_id}.jpg", seed=30 + i)
            rows.append(f"{image_id},xclick,/m/0{i % 2},1,0.1,0.6,0.2,0.9,0,0,0,0,0\n")
        (ann / f"{split}-annotations-bbox.csv").write_text(header + "".join(rows))
    (ann / "class-descriptions-boxable.csv").write_text("LabelName,DisplayName\n/m/00,Cat\n/m/01,Dog\n")


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def laion(root: Path) -> None:
    """img2dataset webdataset shards: ``{train,validation}/00000.tar`` with ``<key>.jpg`` + ``<key>.txt``."""
    for split, n in (("train", N_TRAIN), ("validation", N_VAL)):
        (root / split).mkdir(parents=True, exist_ok=True)
        with tarfile.open(root / split / "00000.tar", "w") as tar:
            for i in range(n):
                add_member(tar, f"{i:09d}.jpg", _jpeg_bytes(40 + i))
                if i % 2:
                    add_member(tar, f"{i:09d}.json", json.dumps({"caption": CAPTIONS[i]}).encode())
                else:
                    add_member(tar, f"{i:09d}.txt", CAPTIONS[i].encode())


def landscapes(root: Path) -> None:
    """``images/``, ``segmentations/`` (one label id per pixel) and ``{train,validation}.txt``."""
    files = [f"{i:05d}.jpg" for i in range(N_TRAIN + N_VAL)]
    for i, f in enumerate(files):
        _image(root / "images" / f, seed=50 + i)
        seg = np.zeros((H, W), np.uint8)
        seg[:, W // 2:] = 5 + i          # labels below the 182 COCO-Stuff classes
        seg[: H // 3] = 181
        (root / "segmentations").mkdir(parents=True, exist_ok=True)
        Image.fromarray(seg, mode="L").save(root / "segmentations" / f.replace(".jpg", ".png"))
    _lines(root / "train.txt", files[:N_TRAIN])
    _lines(root / "validation.txt", files[N_TRAIN:])


def places(root: Path) -> None:
    """Places365 high-resolution folders ``train/`` and ``val/`` (masks are drawn on the fly)."""
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        for i in range(n):
            _image(root / split / "a" / "airfield" / f"{i:08d}.jpg", seed=60 + i)


def coco(root: Path) -> None:
    """The 2017 release: ``{train,val}2017/`` with ``annotations/{captions,instances}_*2017.json``."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, n in (("train2017", N_TRAIN), ("val2017", N_VAL)):
        images, captions, boxes = [], [], []
        for i in range(n):
            name = f"{i + 1:012d}.jpg"
            _image(root / split / name, seed=70 + i)
            images.append({"id": i + 1, "file_name": name, "width": W, "height": H})
            captions.append({"id": 10 + i, "image_id": i + 1, "caption": CAPTIONS[i]})
            boxes.append({"image_id": i + 1, "category_id": 1 + i % 2, "bbox": [2, 2, 20, 16], "iscrowd": 0})
        categories = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}]
        stem = split.removesuffix("2017")
        (root / "annotations" / f"captions_{stem}2017.json").write_text(
            json.dumps({"images": images, "annotations": captions}))
        (root / "annotations" / f"instances_{stem}2017.json").write_text(
            json.dumps({"images": images, "categories": categories, "annotations": boxes}))


# folder under the data root -> builder
BUILDERS: dict[str, Callable[[Path], None]] = {
    "celebahq": lambda root: faces(root, "celebahq"),
    "ffhq": lambda root: faces(root, "ffhq"),
    "lsun": lsun,
    "imagenet": imagenet,
    "openimages": openimages,
    "laion": laion,
    "previews": laion,  # the original text2img256 data name reads the same shards
    "rfw": landscapes,
    "sflckr": landscapes,
    "places": places,
    "coco": coco,
}

# dataset target (module.Class, legacy names included) -> folder under the data root
LAYOUT_OF: dict[str, str] = {
    "ldm.data.faceshq.CelebAHQ": "celebahq",
    "taming.data.faceshq.CelebAHQ": "celebahq",
    "ldm.data.faceshq.FFHQ": "ffhq",
    "taming.data.faceshq.FFHQ": "ffhq",
    "ldm.data.lsun.LSUN": "lsun",
    "ldm.data.imagenet.ImageNet": "imagenet",
    "ldm.data.openimages.": "openimages",
    "ldm.data.laion.LAION": "laion",
    "ldm.data.previews.": "previews",
    "ldm.data.landscapes.RFW": "rfw",
    "ldm.data.landscapes.SFLCKR": "sflckr",
    "ldm.data.places.": "places",
    "ldm.data.coco.": "coco",
}


def layout_of(target: str) -> str | None:
    """The data-root folder a dataset target reads; None for datasets that need no files."""
    if target.startswith("ldm.data.synthetic."):
        return None
    for prefix, folder in LAYOUT_OF.items():
        if target.startswith(prefix):
            return folder
    raise KeyError(f"no fake data tree for dataset {target!r}: add a builder to tests/fake_data_trees.py")


def build_all(base: Path) -> Path:
    """Every layout under ``base`` (use as ``LDM_DATA_ROOT``)."""
    for folder, builder in BUILDERS.items():
        builder(base / folder)
    return base


def write_wordpiece_vocab(path: Path) -> Path:
    """A small BERT WordPiece ``vocab.txt`` covering the fake captions (for offline tokenization)."""
    words = sorted({w for c in CAPTIONS for w in c.split()})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    path.write_text("\n".join(specials + words + ["##s", "##ed"]) + "\n")
    return path


# ---------------------------------------------------------------------------------------- probe

class StepProbe(pl.Callback):
    """A Lightning callback recording what one training step did (results on the class)."""

    records: list[dict] = []

    def __init__(self) -> None:
        self.record = {"optimizer_steps": 0, "grads_finite": True, "nonzero_grad": False, "train_batches": 0,
                       "losses": []}
        super().__init__()
        StepProbe.records.append(self.record)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.record["optimizer_steps"] += 1
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not torch.isfinite(p.grad).all():
                    self.record["grads_finite"] = False
                if p.grad.abs().sum() > 0:
                    self.record["nonzero_grad"] = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record["train_batches"] += 1
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self.record["losses"].append(float(loss.detach()))
