"""Image sets to score: a folder of images (recursive), an ``.npz`` as
``scripts/sample_diffusion.py`` writes it (uint8 (N, H, W, 3) under ``arr_0``, optional
``labels``), or the shards of a sampling run (``<dir>/shards/shard-*.npz``).

Every set yields uint8 (B, H, W, 3) batches in a fixed order (folders: sorted relative path;
arrays: index order), which is how paired metrics pair images, and has a fingerprint that
identifies its content for the statistics cache.
"""
from __future__ import annotations

import abc
import hashlib
import os
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from ldm.data.image_io import load_rgb, to_uint8
from ldm.data.paths import list_images

__all__ = ["ArrayImages", "DatasetImages", "FolderImages", "ImageSet", "ShardImages", "check_paired", "open_images"]

PathLike = Union[str, os.PathLike]


class ImageSet(abc.ABC):
    """A sequence of uint8 RGB images of one size."""

    path: Path
    names: list[str]
    labels: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.names)

    @abc.abstractmethod
    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """uint8 (B, H, W, 3) batches in the set's fixed order."""

    def image_size(self) -> tuple[int, int]:
        return tuple(next(self.batches(1)).shape[1:3])

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A hash identifying the set's content (keys the statistics cache)."""


class FolderImages(ImageSet):
    """Every image file under ``path`` (recursive), in sorted relative-path order."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.names = list_images(str(self.path))
        if not self.names:
            raise ValueError(f"{self.path}: no image files found (searched recursively)")

    def _load(self, name: str, size: Optional[tuple[int, ...]]) -> np.ndarray:
        arr = load_rgb(self.path / name, min_size=1)
        if size is not None and arr.shape != size:
            raise ValueError(f"{self.path / name} is {arr.shape[0]}x{arr.shape[1]} but {self.path / self.names[0]} is "
                             f"{size[0]}x{size[1]} (HxW): the images of a set must all have one size")
        return arr

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        size = None
        for start in range(0, len(self.names), batch_size):
            arrs = []
            for name in self.names[start:start + batch_size]:
                arr = self._load(name, size)
                size = size or arr.shape
                arrs.append(arr)
            yield np.stack(arrs)

    def fingerprint(self) -> str:
        """Names, sizes and modification times of the files (cheap; any change invalidates)."""
        h = hashlib.sha1()
        for name in self.names:
            st = (self.path / name).stat()
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return f"folder:{h.hexdigest()}"


class ArrayImages(ImageSet):
    """uint8 (N, H, W, 3) images from an ``.npz`` (``arr_0``, optional ``labels``)."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        with np.load(self.path, allow_pickle=False) as z:
            if "arr_0" not in z.files:
                raise ValueError(f"{self.path}: no 'arr_0' array (expected uint8 (N, H, W, 3) samples as "
                                 "scripts/sample_diffusion.py writes them)")
            self.array = z["arr_0"]
            self.labels = z["labels"] if "labels" in z.files else None
        if self.array.dtype != np.uint8 or self.array.ndim != 4 or self.array.shape[-1] != 3:
            raise ValueError(f"{self.path}: arr_0 must be uint8 (N, H, W, 3), got {self.array.dtype} "
                             f"{self.array.shape}")
        self.names = [f"{i:06d}" for i in range(len(self.array))]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.array), batch_size):
            yield self.array[start:start + batch_size]

    def fingerprint(self) -> str:
        return f"array:{hashlib.sha1(np.ascontiguousarray(self.array).tobytes()).hexdigest()}"


class ShardImages(ImageSet):
    """The samples of a sharded sampling run, read shard by shard in index order; ``key``
    "reference" reads the dataset images stored beside the outputs of paired protocols."""

    def __init__(self, path: PathLike, key: str = "images"):
        from ldm.eval.shards import ShardStore

        self.key = key
        self.store = ShardStore(path)
        self.path = self.store.root
        self.files = self.store.shards()
        counts, labels = [], []
        for f in self.files:
            with np.load(f, allow_pickle=False) as z:
                if key not in z.files:
                    raise ValueError(f"{f}: no {key!r} array in this shard")
                counts.append(len(z["indices"]))
                if "labels" in z.files:
                    labels.append(z["labels"])
        self.names = [f"{i:06d}" for i in range(sum(counts))]
        self.labels = np.concatenate(labels) if labels else None

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        pending: list[np.ndarray] = []
        for f in self.files:
            with np.load(f, allow_pickle=False) as z:
                pending.append(z[self.key])
            merged = np.concatenate(pending)
            while len(merged) >= batch_size:
                yield merged[:batch_size]
                merged = merged[batch_size:]
            pending = [merged]
        if len(pending[0]):
            yield pending[0]

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        for f in self.files:
            with np.load(f, allow_pickle=False) as z:
                h.update(np.ascontiguousarray(z[self.key]).tobytes())
        return f"shards-{self.key}:{h.hexdigest()}"


class DatasetImages(ImageSet):
    """The ``image`` of every example of a dataset split (HWC float in [-1, 1] -> uint8); items
    the dataset cannot read (it returns None and reports them) are left out."""

    def __init__(self, dataset, description: str):
        self.dataset = dataset
        self.path = Path(description)  # shown in messages
        self.description = description
        self.names = [f"{i:06d}" for i in range(len(dataset))]
        if not self.names:
            raise ValueError(f"{description}: the dataset split is empty")

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.names), batch_size):
            examples = [self.dataset[i] for i in range(start, min(len(self.names), start + batch_size))]
            images = [to_uint8(e["image"]) for e in examples if e is not None]
            if images:
                yield np.stack(images)

    def fingerprint(self) -> str:
        """The split's config and length (its files are not read again to compute it)."""
        return f"dataset:{hashlib.sha1(f'{self.description}|{len(self.names)}'.encode()).hexdigest()}"


def open_images(path: PathLike, flag: str = "--fake") -> ImageSet:
    """The image set at ``path``; errors name the flag it came from."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{flag} {p}: no such file or folder")
    if p.is_dir():
        if (p / "shards").is_dir():
            return ShardImages(p)
        return FolderImages(p)
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            if "mu" in z.files and "arr_0" not in z.files:
                raise ValueError(f"{flag} {p} is a statistics file; statistics can stand in for --real images "
                                 f"(FID only), not for {flag}")
        return ArrayImages(p)
    raise ValueError(f"{flag} {p}: expected a folder of images or an .npz (uint8 samples under arr_0)")


def check_paired(real: ImageSet, fake: ImageSet) -> None:
    """Paired metrics compare image i of one set with image i of the other: same count, same size."""
    if len(real) != len(fake):
        raise ValueError(f"paired metrics (psnr, ssim, lpips) need sets of the same size: --real {real.path} has "
                         f"{len(real)} images, --fake {fake.path} has {len(fake)}")
    rs, fs = real.image_size(), fake.image_size()
    if rs != fs:
        raise ValueError(f"paired metrics need images of the same size: --real {real.path} is {rs[0]}x{rs[1]}, "
                         f"--fake {fake.path} is {fs[0]}x{fs[1]} (HxW)")
