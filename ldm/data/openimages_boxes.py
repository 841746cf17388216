"""The OpenImages box annotations as a compact, cached index: image id -> rows of boxes.

``train-annotations-bbox.csv`` has 14.6M rows; parsing it takes minutes and, held as Python
objects, gigabytes. It is parsed once, streaming in chunks into numpy arrays, and the result is
saved as ``<csv>.boxindex.npz`` beside the CSV (or, where that folder is read-only, in
``$XDG_CACHE_HOME/ldm/openimages``, default ``~/.cache/ldm/openimages``). The cache records the
CSV's size and modification time: an edited or replaced CSV is parsed again, an unchanged one
is loaded in about a second. The cache holds plain arrays only and is loaded with
``allow_pickle=False``.

Arrays (all sorted by image id): ``ids`` (bytes, unique), ``offsets`` (image k's boxes are rows
``offsets[k]:offsets[k + 1]``), ``labels`` (int32 codes into ``label_names``), ``boxes``
((N, 4) float32 ``x0, y0, x1, y1`` normalised to the image).
"""
from __future__ import annotations

import csv
import hashlib
import os
import warnings
import zipfile
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["BoxIndex", "box_index_cache_paths", "load_box_index", "parse_box_csv"]

COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
FORMAT_VERSION = 1
_CHUNK_ROWS = 1 << 18  # rows parsed at a time: bounded memory for any file size
_MAX_FIELD = 128       # bytes read of an id or label; OpenImages ids have 16, labels about 10
_ROW = np.dtype([("id", f"S{_MAX_FIELD}"), ("label", f"S{_MAX_FIELD}"), ("xmin", "f4"), ("xmax", "f4"),
                 ("ymin", "f4"), ("ymax", "f4")])


@dataclass
class BoxIndex:
    ids: np.ndarray          # (M,) bytes, sorted unique image ids
    offsets: np.ndarray      # (M + 1,) int64
    labels: np.ndarray       # (N,) int32 codes into label_names
    boxes: np.ndarray        # (N, 4) float32 x0, y0, x1, y1
    label_names: list[str]   # the CSV's LabelName values, in order of first appearance

    def rows(self, label_index: dict[str, int], source: str = "boxes") -> np.ndarray:
        """(N, 5) float32 ``class, x0, y0, x1, y1`` with classes numbered by ``label_index``."""
        classes = np.array([label_index.get(name, -1) for name in self.label_names], dtype=np.int64)
        unknown = np.flatnonzero(classes < 0)
        if unknown.size:
            row = int(np.flatnonzero(self.labels == unknown[0])[0])
            image = self.ids[np.searchsorted(self.offsets, row, side="right") - 1].decode()
            raise ValueError(f"{source}: label {self.label_names[unknown[0]]!r} of image {image} is not a listed class")
        out = np.empty((len(self.labels), 5), dtype=np.float32)
        out[:, 0] = classes[self.labels]
        out[:, 1:] = self.boxes
        return out


def parse_box_csv(path: str) -> BoxIndex:
    """Parse a box CSV (header naming at least :data:`COLUMNS`), streaming chunks of rows
    through numpy's C parser: only the six columns used are converted, never a Python row."""
    with open(path, "rb") as f:
        header = next(csv.reader([f.readline().decode("utf-8-sig")]), [])
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        columns = tuple(header.index(c) for c in COLUMNS)
        codes: dict[bytes, int] = {}
        ids, labels, boxes = [], [], []
        done = 1
        while True:
            chunk = _read_chunk(f, columns, path, done)
            if len(chunk):
                ids.append(_shrink(chunk["id"], path, "ImageID"))
                names = _shrink(chunk["label"], path, "LabelName").tolist()
                labels.append(np.fromiter((codes.setdefault(name, len(codes)) for name in names),
                                          np.int32, len(names)))
                boxes.append(np.stack([chunk["xmin"], chunk["ymin"], chunk["xmax"], chunk["ymax"]], axis=1))
                done += len(chunk)
            if len(chunk) < _CHUNK_ROWS:
                break
    ids_all = np.concatenate(ids) if ids else np.zeros(0, dtype="S1")
    order = np.argsort(ids_all, kind="stable")
    unique, starts = np.unique(ids_all[order], return_index=True)
    return BoxIndex(ids=unique,
                    offsets=np.append(starts, len(order)).astype(np.int64),
                    labels=(np.concatenate(labels) if labels else np.zeros(0, np.int32))[order],
                    boxes=(np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32))[order],
                    label_names=[name.decode("utf-8") for name in codes])


def _read_chunk(f, columns: tuple[int, ...], path: str, line: int) -> np.ndarray:
    """Up to ``_CHUNK_ROWS`` rows of the six used columns; ``line`` rows were read before."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data" at the end
            return np.loadtxt(f, delimiter=",", quotechar='"', usecols=columns, dtype=_ROW, max_rows=_CHUNK_ROWS,
                              ndmin=1, encoding=None)
    except ValueError as exc:
        raise ValueError(f"{path}: malformed row after line {line} ({exc}); expected the columns "
                         f"{list(COLUMNS)} of the header") from None


def _shrink(values: np.ndarray, path: str, column: str) -> np.ndarray:
    """Fixed-width bytes as narrow as the longest value; a value filling the field was cut."""
    width = int(np.strings.str_len(values).max()) if len(values) else 1
    if width >= _MAX_FIELD:
        raise ValueError(f"{path}: a {column} value is {_MAX_FIELD} bytes or longer; not an OpenImages id")
    return values.astype(f"S{max(width, 1)}")


def box_index_cache_paths(csv_path: str, cache_dir: Optional[str] = None) -> list[str]:
    """Where the index of ``csv_path`` is looked for and written, in order of preference."""
    name = f"{os.path.basename(csv_path)}.boxindex.npz"
    if cache_dir is not None:
        return [os.path.join(cache_dir, name)]
    user_cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ldm", "openimages")
    key = hashlib.blake2b(os.path.abspath(csv_path).encode("utf-8"), digest_size=8).hexdigest()
    return [f"{csv_path}.boxindex.npz", os.path.join(user_cache, f"{key}-{name}")]


def _stamp(csv_path: str) -> tuple[int, int]:
    st = os.stat(csv_path)
    return st.st_size, st.st_mtime_ns


def _read_cache(path: str, stamp: tuple[int, int]) -> Optional[BoxIndex]:
    """The cached index if ``path`` holds one for a CSV of this size and mtime, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if (int(z["format_version"]), int(z["source_size"]), int(z["source_mtime_ns"])) != (FORMAT_VERSION, *stamp):
                return None
            return BoxIndex(ids=z["ids"], offsets=z["offsets"], labels=z["labels"], boxes=z["boxes"],
                            label_names=[str(n) for n in z["label_names"]])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # absent, unreadable or from an older format: rebuild


def _write_cache(path: str, index: BoxIndex, stamp: tuple[int, int]) -> None:
    """Write atomically (temporary file + rename): concurrent ranks never read a partial file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, ids=index.ids, offsets=index.offsets, labels=index.labels, boxes=index.boxes,
                     label_names=np.array(index.label_names, dtype=str), format_version=FORMAT_VERSION,
                     source_size=stamp[0], source_mtime_ns=stamp[1])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_box_index(csv_path: str, cache_dir: Optional[str] = None) -> BoxIndex:
    """The index of ``csv_path``: from a cache made for this exact file, or parsed and cached."""
    stamp = _stamp(csv_path)
    candidates = box_index_cache_paths(csv_path, cache_dir)
    for path in candidates:
        cached = _read_cache(path, stamp)
        if cached is not None:
            return cached
    index = parse_box_csv(csv_path)
    errors = []
    for path in candidates:
        try:
            _write_cache(path, index, stamp)
            break
        except OSError as exc:  # a read-only dataset folder: try the user cache
            errors.append(f"{path}: {exc}")
    else:
        warnings.warn(f"could not cache the box index of {csv_path} ({'; '.join(errors)}); it will be parsed "
                      "again next time", RuntimeWarning, stacklevel=2)
    return index
