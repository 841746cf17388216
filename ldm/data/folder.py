"""A folder of the user's own images as a dataset, for every task the paper trains on.

    root/
      cats/001.jpg   cats/001.txt   <- optional sidecar caption, same stem
      dogs/xyz.png   ...

``labels_from_subfolders`` turns the first-level folders into class labels (class-conditional
synthesis), ``captions="sidecar"`` reads ``<stem>.txt`` beside each image (text-to-image).

Listing the folder is the only work done up front: nothing is decoded until it is needed, so a
million-image folder is ready in seconds. A file that turns out unreadable, truncated or tiny is
skipped with one warning naming it and recorded in ``skipped``; the item index then moves on to
the next readable file, so a bad file never stops a training run and never makes it random.
"""
from __future__ import annotations

import hashlib
import os
import random
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal, Optional

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

__all__ = ["BadImageWarning", "ImageFolder", "ImageFolderTrain", "ImageFolderValidation"]


class BadImageWarning(UserWarning):
    """An image was skipped; the message names the file and the reason."""


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


def _read_file_list(file_list: str) -> list[str]:
    with open(file_list, encoding="utf-8") as f:
        lines = (line.strip().replace(os.sep, "/") for line in f)
        return [line.removeprefix("./") for line in lines if line and not line.startswith("#")]


class ImageFolder(Dataset):
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
                 file_list: Optional[str] = None,               # text file of relative paths to use
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
        self.root = os.path.abspath(root)
        self.size, self.crop, self.flip, self.min_size = size, crop, flip, min_size
        self.captions = captions
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)

        files, caption_stems, others = _scan(self.root, recursive, exts)
        found = self._describe_found(files, others, exts)

        # Classes come from every file before splitting, so train and validation share indices.
        self.classes: list[str] = []
        if labels_from_subfolders:
            in_root = [f for f in files if "/" not in f]
            if in_root:
                warnings.warn(f"{self.root}: ignoring {len(in_root)} image(s) directly in the root "
                              f"folder (e.g. {in_root[0]!r}); with labels_from_subfolders each image "
                              "must lie in a class folder", BadImageWarning, stacklevel=2)
            files = [f for f in files if "/" in f]
            self.classes = sorted({f.split("/", 1)[0] for f in files})
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        if captions == "sidecar":
            uncaptioned = [f for f in files if os.path.splitext(f)[0] not in caption_stems]
            if uncaptioned and len(uncaptioned) < len(files):
                warnings.warn(f"{self.root}: ignoring {len(uncaptioned)} image(s) without a sidecar "
                              f"caption .txt (e.g. {uncaptioned[0]!r})", BadImageWarning, stacklevel=2)
            files = [f for f in files if os.path.splitext(f)[0] in caption_stems]
            found += f", {len(files)} with a sidecar .txt caption"

        if file_list is not None:
            wanted = _read_file_list(file_list)
            available = set(files)
            missing = [f for f in wanted if f not in available]
            if missing:
                raise ValueError(f"file_list {file_list!r} names {len(missing)} file(s) not usable under "
                                 f"{self.root} (e.g. {missing[:3]}); {found}")
            files = sorted(set(wanted))
        elif split is not None:
            files = [f for f in files if _in_validation(f, split_seed, val_fraction) == (split == "validation")]
            found += f", {len(files)} in split {split!r} (val_fraction={val_fraction}, split_seed={split_seed})"

        if not files:
            raise ValueError(f"ImageFolder {self.root!r} has no usable images: {found}")
        self._paths = _PathTable(files)
        self._labels = np.array([self.class_to_idx[f.split("/", 1)[0]] for f in files] if self.classes else [],
                                dtype=np.int64)
        self.skipped: dict[str, str] = {}  # absolute path -> reason, in the order found
        self._bad: set[int] = set()

    @staticmethod
    def _describe_found(files: list[str], others: Counter, exts: tuple[str, ...]) -> str:
        text = f"found {len(files)} image file(s) with extensions {list(exts)}"
        if others:
            text += " and other files: " + ", ".join(f"{n} x {e}" for e, n in others.most_common(5))
        return text

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def path(self, i: int) -> str:
        return os.path.join(self.root, self._paths[i])

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for ImageFolder of length {n}")
        i %= n
        for k in range(n):
            j = (i + k) % n
            if j in self._bad:
                continue
            try:
                return self._load(j)
            except BadImageError as exc:
                self._skip(j, exc.reason)
        reasons = Counter(r.split(" (")[0] for r in self.skipped.values())
        raise ValueError(f"ImageFolder {self.root!r}: none of its {n} image file(s) could be read "
                         f"({dict(reasons)}); e.g. {next(iter(self.skipped.items()))}")

    def _skip(self, j: int, reason: str) -> None:
        path = self.path(j)
        self._bad.add(j)
        self.skipped[path] = reason
        warnings.warn(f"skipping image {path}: {reason}", BadImageWarning, stacklevel=3)

    def _load(self, j: int) -> dict[str, Any]:
        rel = self._paths[j]
        path = os.path.join(self.root, rel)
        example: dict[str, Any] = {}
        if self.captions == "sidecar":
            txt = os.path.splitext(path)[0] + ".txt"
            try:
                with open(txt, encoding="utf-8", errors="replace") as f:
                    example["caption"] = " ".join(f.read().split())
            except OSError as exc:
                raise BadImageError(path, f"caption file {txt} unreadable ({exc})") from None
        arr = load_rgb(path, min_size=self.min_size, draft_size=self.size)
        arr = resize_crop(arr, self.size, self.crop)
        if self.flip and random.random() < 0.5:
            arr = hflip(arr)
        example["image"] = to_float(arr)
        if self.classes:
            label = int(self._labels[j])
            example["class_label"] = label
            example["human_label"] = self.classes[label]
        example["file_path_"] = path
        example["relpath"] = rel
        return example


class ImageFolderTrain(ImageFolder):
    """The training share of ``root`` (hash split, or ``file_list``); random crops and flips."""

    def __init__(self,
                 root: str,
                 crop: CropMode = "random",
                 flip: bool = True,
                 **kwargs: Any,  # every other ImageFolder parameter
                 ):
        if "split" in kwargs:
            raise ValueError(f"{type(self).__name__} is the 'train' split; use ImageFolder to choose split")
        super().__init__(root=root, crop=crop, flip=flip, split="train", **kwargs)


class ImageFolderValidation(ImageFolder):
    """The held-out share of ``root``: the files the training split leaves out; center crops."""

    def __init__(self,
                 root: str,
                 crop: CropMode = "center",
                 flip: bool = False,
                 **kwargs: Any,  # every other ImageFolder parameter
                 ):
        if "split" in kwargs:
            raise ValueError(f"{type(self).__name__} is the 'validation' split; use ImageFolder to choose split")
        super().__init__(root=root, crop=crop, flip=flip, split="validation", **kwargs)
