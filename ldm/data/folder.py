"""A folder of the user's own images as a dataset, for every task the paper trains on.

    root/
      cats/001.jpg   cats/001.txt   <- optional sidecar caption, same stem
      dogs/xyz.png   ...

``labels_from_subfolders`` turns the first-level folders into class labels (class-conditional
synthesis), ``captions="sidecar"`` reads ``<stem>.txt`` beside each image (text-to-image).

Listing the folder is the only work done up front: nothing is decoded until it is needed, so a
million-image folder is ready in seconds. A file that turns out unreadable, truncated or tiny is
skipped with one warning naming it and recorded in ``skipped``: its item is None, which the
DataModule's collate function drops, so a bad file never stops a training run and no other image
takes its place (each readable image is served exactly once per epoch;
:class:`~ldm.data.skipping.SkipBadImages`).

With a ``file_list`` (a text file or a list of relative paths) the folder is not scanned at all:
the listed files are the dataset, checked with one ``stat`` each (or not at all with
``verify_file_list=False``, in which case a missing file is skipped when it is first read).

Datasets built on this class (the paper datasets) change what an example holds through public
hooks rather than by reimplementing the class: ``relpath(j)``/``path(j)`` locate item j,
``read_image(j)`` decodes it, ``transform(arr)`` crops and flips, ``caption(j)`` supplies a
caption, and ``load_example(j)`` assembles the example dict.
"""
from __future__ import annotations

import hashlib
import os
import random
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal, Optional, Union

import numpy as np
from torch.utils.data import Dataset

from ldm.data.image_io import (
    DEFAULT_MIN_SIZE,
    IMAGE_EXTENSIONS,
    BadImageError,
    CropMode,
    hflip,
    load_rgb,
    resize_crop,
    to_float,
)
from ldm.data.skipping import BadImageWarning, SkipBadImages
from ldm.data.variants import dataset_variant

__all__ = ["BadImageWarning", "FileList", "ImageFolder", "ImageFolderTrain", "ImageFolderValidation",
           "read_file_list"]

# A text file of relative paths (one a line, '#' comments), or the paths themselves.
FileList = Union[str, os.PathLike, Sequence[str]]


class _PathTable:
    """Relative paths packed into one byte buffer plus offsets.

    A Python list of a million strings is touched by reference counting in every forked
    DataLoader worker, which copies its pages (copy-on-read); two numpy arrays are not.
    """

    def __init__(self, paths: Sequence[str]):
        encoded = [p.encode("utf-8") for p in paths]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._buffer[self._offsets[i]:self._offsets[i + 1]].tobytes().decode("utf-8")


def _scan(root: str, recursive: bool, extensions: tuple[str, ...]) -> tuple[list[str], set[str], Counter]:
    """Relative image paths (sorted, '/'-separated), caption stems, and a tally of other files.

    Hidden entries are skipped: macOS writes ``._photo.jpg`` resource forks that look like
    images by name but are not. Symlinked folders are followed once each.
    """
    images: list[str] = []
    caption_stems: set[str] = set()
    others: Counter = Counter()
    visited: set[str] = set()
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(root, rel_dir)
        real = os.path.realpath(abs_dir)
        if real in visited:
            continue
        visited.add(real)
        with os.scandir(abs_dir) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if entry.is_dir():
                    if recursive:
                        stack.append(rel)
                    continue
                stem, ext = os.path.splitext(rel)
                ext = ext.lower()
                if ext in extensions:
                    images.append(rel)
                else:
                    others[ext or "<no extension>"] += 1
                    if ext == ".txt":
                        caption_stems.add(stem)
    images.sort()
    return images, caption_stems, others


def _in_validation(rel: str, seed: int, fraction: float) -> bool:
    """Stable split: a file's side depends only on its own path, so adding files moves nothing."""
    digest = hashlib.blake2b(f"{seed}:{rel}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64 < fraction


def read_file_list(file_list: FileList) -> tuple[list[str], str]:
    """(sorted unique '/'-separated relative paths, a description for errors) of a file list."""
    if isinstance(file_list, (str, os.PathLike)):
        with open(file_list, encoding="utf-8") as f:
            lines = f.read().splitlines()
        label = repr(os.fspath(file_list))
    else:
        lines = list(file_list)
        bad = [e for e in lines if not isinstance(e, str)]
        if bad:
            raise TypeError(f"file_list entries must be strings, got {type(bad[0]).__name__} {bad[0]!r}")
        label = f"[{len(lines)} path(s)]"
    entries = (line.strip().replace(os.sep, "/").removeprefix("./") for line in lines)
    return sorted({e for e in entries if e and not e.startswith("#")}), label


class ImageFolder(SkipBadImages, Dataset):
    """Images under ``root`` as CompVis examples: ``image`` (HWC float32 in [-1, 1]) and, as
    configured, ``class_label``/``human_label`` and ``caption``; plus ``file_path_``/``relpath``.
    """

    def __init__(self,
                 root: str,                                     # folder to read (searched recursively)
                 size: Optional[int] = 256,                     # output side in px; None: native size
                 crop: CropMode = "center",                     # "random" (training), "center", "none"
                 flip: bool = False,                            # random horizontal flips (p = 0.5)
                 recursive: bool = True,                        # descend into subfolders
                 extensions: Sequence[str] = IMAGE_EXTENSIONS,  # file endings that are images
                 labels_from_subfolders: bool = False,          # class = first-level folder name
                 captions: Optional[Literal["sidecar"]] = None,  # "sidecar": <stem>.txt beside image
                 min_size: int = DEFAULT_MIN_SIZE,              # skip images with a shorter side below
                 split: Optional[Literal["train", "validation"]] = None,  # None: every file
                 val_fraction: float = 0.05,                    # share of files hashed to validation
                 split_seed: int = 0,                           # changes which files are held out
                 file_list: Optional[FileList] = None,          # the files to use, relative to root
                 verify_file_list: bool = True,                 # stat each listed file up front
                 ):
        if crop not in ("random", "center", "none"):
            raise ValueError(f"crop must be 'random', 'center' or 'none', got {crop!r}")
        if captions not in (None, "sidecar"):
            raise ValueError(f"captions must be None or 'sidecar', got {captions!r}")
        if split not in (None, "train", "validation"):
            raise ValueError(f"split must be None, 'train' or 'validation', got {split!r}")
        if not 0.0 <= val_fraction <= 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1], got {val_fraction}")
        if not os.path.isdir(root):
            raise ValueError(f"ImageFolder root {root!r} is not a directory")
        super().__init__()
        self.root = os.path.abspath(root)
        self.size, self.crop, self.flip, self.min_size = size, crop, flip, min_size
        self.draft_size = size  # JPEG draft decoding bound for read_image; subclasses may change it
        self.captions = captions
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)

        if file_list is not None:
            files, found = self._listed_files(file_list, exts, verify_file_list)
            caption_stems = None  # sidecar captions of listed files are read (or found missing) lazily
        else:
            files, caption_stems, others = _scan(self.root, recursive, exts)
            found = self._describe_found(files, others, exts)

        # Classes come from every file before splitting, so train and validation share indices;
        # with a file list, from the class folders under root, for the same reason.
        self.classes: list[str] = []
        if labels_from_subfolders:
            in_root = [f for f in files if "/" not in f]
            if in_root:
                warnings.warn(f"{self.root}: ignoring {len(in_root)} image(s) directly in the root "
                              f"folder (e.g. {in_root[0]!r}); with labels_from_subfolders each image "
                              "must lie in a class folder", BadImageWarning, stacklevel=2)
            files = [f for f in files if "/" in f]
            folders = {f.split("/", 1)[0] for f in files}
            if file_list is not None:
                with os.scandir(self.root) as entries:
                    folders |= {e.name for e in entries if e.is_dir() and not e.name.startswith(".")}
            self.classes = sorted(folders)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        if captions == "sidecar" and caption_stems is not None:
            uncaptioned = [f for f in files if os.path.splitext(f)[0] not in caption_stems]
            if uncaptioned and len(uncaptioned) < len(files):
                warnings.warn(f"{self.root}: ignoring {len(uncaptioned)} image(s) without a sidecar "
                              f"caption .txt (e.g. {uncaptioned[0]!r})", BadImageWarning, stacklevel=2)
            files = [f for f in files if os.path.splitext(f)[0] in caption_stems]
            found += f", {len(files)} with a sidecar .txt caption"

        if file_list is None and split is not None:
            files = [f for f in files if _in_validation(f, split_seed, val_fraction) == (split == "validation")]
            found += f", {len(files)} in split {split!r} (val_fraction={val_fraction}, split_seed={split_seed})"

        if not files:
            raise ValueError(f"ImageFolder {self.root!r} has no usable images: {found}")
        self._files = _PathTable(files)
        self._labels = np.array([self.class_to_idx[f.split("/", 1)[0]] for f in files] if self.classes else [],
                                dtype=np.int64)

    def _listed_files(self, file_list: FileList, exts: tuple[str, ...], verify: bool) -> tuple[list[str], str]:
        """The listed files, checked by name (and with one stat each when ``verify``); no scan."""
        files, label = read_file_list(file_list)
        outside = [f for f in files if os.path.isabs(f) or f == ".." or f.startswith("../")]
        if outside:
            raise ValueError(f"file_list {label} names path(s) outside root {self.root} (e.g. {outside[:3]}); "
                             "entries must be relative to root")
        not_images = [f for f in files if os.path.splitext(f)[1].lower() not in exts]
        if not_images:
            raise ValueError(f"file_list {label} names {len(not_images)} file(s) that are not images by their "
                             f"extension (e.g. {not_images[:3]}); accepted: {list(exts)}")
        if verify:
            missing = [f for f in files if not os.path.isfile(os.path.join(self.root, f))]
            if missing:
                raise ValueError(f"file_list {label} names {len(missing)} file(s) not found under {self.root} "
                                 f"(e.g. {missing[:3]}); pass verify_file_list=False to skip them when read")
        return files, f"file_list {label} lists {len(files)} image file(s)"

    @staticmethod
    def _describe_found(files: list[str], others: Counter, exts: tuple[str, ...]) -> str:
        text = f"found {len(files)} image file(s) with extensions {list(exts)}"
        if others:
            text += " and other files: " + ", ".join(f"{n} x {e}" for e, n in others.most_common(5))
        return text

    def __len__(self) -> int:
        return len(self._files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # ---------------------------------------------------------------- hooks for subclasses

    def relpath(self, j: int) -> str:
        """Item ``j``'s path relative to ``root``, '/'-separated (the example's ``relpath``)."""
        return self._files[j]

    def path(self, j: int) -> str:
        """Item ``j``'s absolute path (the example's ``file_path_``)."""
        return os.path.join(self.root, self._files[j])

    def read_image(self, j: int) -> np.ndarray:
        """Item ``j`` decoded to upright uint8 RGB; raises ``BadImageError`` for unusable files."""
        return load_rgb(self.path(j), min_size=self.min_size, draft_size=self.draft_size)

    def transform(self, arr: np.ndarray) -> np.ndarray:
        """Geometry of one image: shorter side to ``size``, the ``crop``, then maybe a flip."""
        arr = resize_crop(arr, self.size, self.crop)
        if self.flip and random.random() < 0.5:
            arr = hflip(arr)
        return arr

    def caption(self, j: int) -> Optional[str]:
        """Item ``j``'s caption (None: the examples have none); ``BadImageError`` skips the item."""
        if self.captions != "sidecar":
            return None
        path = self.path(j)
        txt = os.path.splitext(path)[0] + ".txt"
        try:
            with open(txt, encoding="utf-8", errors="replace") as f:
                return " ".join(f.read().split())
        except OSError as exc:
            raise BadImageError(path, f"caption file {txt} unreadable ({exc})") from None

    def load_example(self, j: int) -> dict[str, Any]:
        """Example ``j``: ``caption`` (if any), ``image``, class labels (if any), paths."""
        example: dict[str, Any] = {}
        caption = self.caption(j)
        if caption is not None:
            example["caption"] = caption
        example["image"] = to_float(self.transform(self.read_image(j)))
        if self.classes:
            label = int(self._labels[j])
            example["class_label"] = label
            example["human_label"] = self.classes[label]
        example["file_path_"] = self.path(j)
        example["relpath"] = self.relpath(j)
        return example


ImageFolderTrain = dataset_variant(
    ImageFolder, "ImageFolderTrain", fixed={"split": "train"}, defaults={"crop": "random", "flip": True},
    doc="The training share of ``root`` (hash split, or ``file_list``); random crops and flips.")
ImageFolderValidation = dataset_variant(
    ImageFolder, "ImageFolderValidation", fixed={"split": "validation"},
    doc="The held-out share of ``root``: the files the training split leaves out; center crops.")
