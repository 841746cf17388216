"""Image-caption pairs for text-to-image (Sec. 4.3.1): LAION-style webdataset shards and
Conceptual-Captions-style TSV files. Examples: ``image``, ``caption``, ``file_path_``, ``relpath``
(shards: also ``metadata`` and, for labelled shards, ``class_label``).

LAION-style shards (``root`` defaults to ``$LDM_DATA_ROOT/laion`` or ``data/laion``), as written
by img2dataset (https://github.com/rom1504/img2dataset, ``--output_format webdataset``)::

    data/laion/
      train/00000.tar 00001.tar ...        each: <key>.jpg (or .png/.webp) + <key>.txt or <key>.json
      validation/00000.tar ...             (.json: {"caption": ...}), optionally <key>.cls (a label)

The shards are read with the standard library ``tarfile``: construction lists every member once
(headers only) and keeps byte offsets, so examples are random-access and shuffle like any map
dataset. In training, the resumable loader's rank-aware sampler splits them between the processes
of a distributed run and the DataLoader between its workers, and a run resumes mid-epoch
(ldm.data.resumable, docs/distributed.md). Conceptual Captions (``data/cc``)::

    data/cc/
      train.tsv          caption<TAB>image path relative to train/ (header row optional:
      train/...          "caption<TAB>file"; other columns are ignored)
      validation.tsv
      validation/...
"""
from __future__ import annotations

import csv
import json
import os
import random
import tarfile
import warnings
from typing import Any, Optional

import numpy as np
from torch.utils.data import Dataset

from ldm.data.folder import ImageFolder
from ldm.data.image_io import DEFAULT_MIN_SIZE, BadImageError, hflip, load_rgb, resize_crop, to_float
from ldm.data.paths import ExpectedLayout, data_root
from ldm.data.skipping import BadImageWarning, SkipBadImages
from ldm.data.variants import dataset_variant

__all__ = ["ConceptualCaptions", "ConceptualCaptionsTrain", "ConceptualCaptionsValidation", "LAIONTrain",
           "LAIONValidation", "ShardsUnderRoot", "WebDatasetCaptions", "decode_image", "index_tar",
           "read_caption_tsv"]

IMAGE_MEMBERS = (".jpg", ".jpeg", ".png", ".webp")
_SHARD_LAYOUT = """{root}/
  <shard>.tar ...   members <key>.jpg|.jpeg|.png|.webp and <key>.txt or <key>.json ({{"caption": ...}})"""
_SHARD_PREPARE = """img2dataset --url_list <parquet> --input_format parquet --url_col URL --caption_col TEXT \\
    --output_format webdataset --output_folder {root}   (https://github.com/rom1504/img2dataset)"""


def decode_image(data: bytes,
                 name: str,                         # what errors call the image (e.g. shard#index)
                 min_size: int = DEFAULT_MIN_SIZE,
                 draft_size: Optional[int] = None,
                 ) -> np.ndarray:
    """Encoded image bytes -> upright uint8 RGB: :func:`~ldm.data.image_io.load_rgb` on bytes."""
    return load_rgb(data, min_size=min_size, draft_size=draft_size, name=name)


def _caption_text(raw: bytes, is_json: bool) -> str:
    text = raw.decode("utf-8", errors="replace")
    if is_json:
        text = str(json.loads(text).get("caption", ""))
    return " ".join(text.split())


# Columns of the index: shard, then (offset, size) of image, caption, JSON and label members
# (-1, 0 when a sample has none), then whether the caption is the JSON's "caption".
_SHARD, _IMG, _CAP, _IS_JSON, _JSON, _CLS = 0, 1, 3, 5, 6, 8
_MISSING = (-1, 0)


def index_tar(path: str) -> tuple[dict[str, dict[str, tuple[int, int]]], Optional[str]]:
    """(samples, problem) of one WebDataset-style tar: ``samples[key][ext] = (offset, size)`` of
    each file member's data, grouped as WebDataset does (key: the member path up to the first dot
    of its base name; ext: the rest, with its dot). Only headers are read. A tar cut short (an
    interrupted download or copy) keeps the samples before the damage, reports it as ``problem``
    and drops its last sample, whose members may be cut."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    problem = None
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                base = os.path.basename(m.name)
                dot = base.find(".")
                if dot <= 0:
                    continue
                key, ext = os.path.join(os.path.dirname(m.name), base[:dot]), base[dot:]
                samples.setdefault(key, {})[ext] = (m.offset_data, m.size)
    except (tarfile.TarError, EOFError, OSError) as exc:
        problem = f"{path}: unreadable after {len(samples)} sample(s) ({exc})"
    if problem and samples:
        samples.pop(next(reversed(samples)))  # the sample being read when the damage was hit
    return samples, problem


def _index_shard(path: str) -> tuple[list[tuple[int, ...]], int, Optional[str]]:
    """(rows, samples left out, problem) of one shard (:func:`index_tar`): a row per sample with an
    image and a caption or a label (columns as above, without the shard); members without an image
    are left out and counted."""
    found, problem = index_tar(path)
    samples = {key: {ext.lower(): v for ext, v in parts.items()} for key, parts in found.items()}
    rows, left_out = [], 0
    for key in sorted(samples):
        parts = samples[key]
        image = next((parts[e] for e in IMAGE_MEMBERS if e in parts), None)
        text, as_json = (parts[".txt"], 0) if ".txt" in parts else (parts.get(".json"), 1)
        label = parts.get(".cls")
        if image is None or (text is None and label is None):
            left_out += 1
            continue
        rows.append((*image, *(text or _MISSING), as_json, *parts.get(".json", _MISSING), *(label or _MISSING)))
    return rows, left_out, problem


class WebDatasetCaptions(SkipBadImages, Dataset):
    """Every sample of the ``*.tar`` shards in ``shard_dir`` (sorted by name) with an image and a
    caption (``.txt``, or ``"caption"`` of ``.json``) or a label (``.cls``, an integer).

    Examples: ``image``, ``caption`` when the shards have captions, ``class_label`` when they have
    labels, ``metadata`` (the sample's ``.json`` text, ``"{}"`` without one: URL, size, licence,
    whatever the writer stored), ``file_path_``, ``relpath``. A sample that cannot be used (bad
    image, no caption/label where the others have one) is skipped like a bad file of an
    :class:`~ldm.data.folder.ImageFolder` and counted in ``skipped``; members without an image are
    counted in ``left_out``, shards cut short in ``damaged_shards`` (their intact samples are kept).
    """

    item_noun = "sample"

    def __init__(self,
                 shard_dir: str,              # folder of .tar shards
                 size: Optional[int] = 256,   # output side in px; None: native size
                 random_crop: bool = False,
                 flip: bool = False,          # random horizontal flips (p = 0.5)
                 min_size: int = DEFAULT_MIN_SIZE,
                 ):
        super().__init__()
        expected = ExpectedLayout(type(self).__name__, _SHARD_LAYOUT.format(root=shard_dir),
                                  _SHARD_PREPARE.format(root=shard_dir))
        expected.dir(shard_dir)
        self.shards = sorted(os.path.join(shard_dir, f) for f in os.listdir(shard_dir) if f.endswith(".tar"))
        if not self.shards:
            raise expected.missing(os.path.join(shard_dir, "*.tar"))
        rows, self.left_out, self.damaged_shards = [], 0, []
        for s, shard in enumerate(self.shards):
            shard_rows, left_out, problem = _index_shard(shard)
            rows += [(s, *r) for r in shard_rows]
            self.left_out += left_out
            if problem:
                self.damaged_shards.append(problem)
                warnings.warn(f"shard {problem}; its intact samples are used", BadImageWarning, stacklevel=2)
        if not rows:
            raise ValueError(f"{shard_dir}: the shards hold no sample with both an image and a caption or label")
        self._index = np.array(rows, dtype=np.int64)  # one compact array: cheap to share with workers
        self.has_captions = bool((self._index[:, _CAP] >= 0).any())
        self.has_labels = bool((self._index[:, _CLS] >= 0).any())
        self.root = os.path.abspath(shard_dir)
        self.size, self.min_size, self.flip = size, min_size, flip
        self.crop = "random" if random_crop else "center"

    def __len__(self) -> int:
        return len(self._index)

    def path(self, j: int) -> str:
        """``<shard path>#<index>``: what warnings, ``skipped`` and ``file_path_`` call sample j."""
        return f"{self.shards[self._index[j, 0]]}#{j}"

    def relpath(self, j: int) -> str:
        return f"{os.path.basename(self.shards[self._index[j, 0]])}#{j}"

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        with open(self.shards[shard], "rb") as f:  # a fresh handle: no offset shared across workers
            f.seek(offset)
            return f.read(size)

    def _member(self, j: int, column: int) -> Optional[bytes]:
        offset, size = (int(v) for v in self._index[j, column:column + 2])
        return None if offset < 0 else self._read(int(self._index[j, _SHARD]), offset, size)

    def load_example(self, j: int) -> dict[str, Any]:
        name = self.path(j)
        arr = load_rgb(self._member(j, _IMG), self.min_size, self.size, name=name)
        example: dict[str, Any] = {}
        try:
            raw = self._member(j, _JSON)
            example["metadata"] = " ".join(raw.decode("utf-8", errors="replace").split()) if raw else "{}"
            if self.has_captions:
                text = self._member(j, _CAP)
                if text is None:
                    raise ValueError("no caption")
                example["caption"] = _caption_text(text, bool(self._index[j, _IS_JSON]))
            if self.has_labels:
                label = self._member(j, _CLS)
                if label is None:
                    raise ValueError("no .cls label")
                example["class_label"] = int(label.decode("ascii").strip())
        except ValueError as exc:
            raise BadImageError(name, f"unusable caption or label ({exc})") from None
        arr = resize_crop(arr, self.size, self.crop)
        if self.flip and random.random() < 0.5:
            arr = hflip(arr)
        return {"image": to_float(arr), **example, "file_path_": name, "relpath": self.relpath(j)}


class ShardsUnderRoot(WebDatasetCaptions):
    """The shards of ``<root>/<split>/``, ``root`` defaulting to ``$LDM_DATA_ROOT/<name>`` or ``data/<name>``."""

    def __init__(self,
                 name: str,                   # data folder name ("laion", "previews")
                 split: str,                  # "train" or "validation": the shard folder
                 size: Optional[int] = 256,
                 root: Optional[str] = None,
                 random_crop: bool = False,
                 flip: bool = False,
                 ):
        super().__init__(os.path.join(data_root(name, root), split), size, random_crop, flip)


LAIONTrain = dataset_variant(ShardsUnderRoot, "LAIONTrain", fixed={"name": "laion", "split": "train"},
                             defaults={"random_crop": True})
LAIONValidation = dataset_variant(ShardsUnderRoot, "LAIONValidation", fixed={"name": "laion", "split": "validation"})


# --------------------------------------------------------------------------------------------
# Conceptual Captions
# --------------------------------------------------------------------------------------------

def read_caption_tsv(path: str) -> dict[str, str]:
    """relative image path -> caption, from ``caption<TAB>file`` rows (or a header naming them)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    cap_col, file_col = 0, 1
    if rows and "caption" in rows[0] and ("file" in rows[0] or "filepath" in rows[0]):
        header = rows.pop(0)
        cap_col, file_col = header.index("caption"), header.index("file" if "file" in header else "filepath")
    out = {}
    for n, row in enumerate(rows, 1):
        if len(row) <= max(cap_col, file_col):
            raise ValueError(f"{path}: row {n} has {len(row)} column(s), expected caption<TAB>file")
        out[row[file_col].strip().removeprefix("./")] = " ".join(row[cap_col].split())
    return out


class ConceptualCaptions(ImageFolder):
    """Images under ``<root>/<split>/`` with captions from ``<root>/<split>.tsv``; an image the
    TSV does not caption is skipped with a warning."""

    def __init__(self,
                 split: str,                  # "train" or "validation"
                 size: Optional[int] = 256,
                 root: Optional[str] = None,  # default: $LDM_DATA_ROOT/cc or data/cc
                 random_crop: bool = False,
                 flip: bool = False,
                 ):
        root = data_root("cc", root)
        layout = (f"{root}/\n  {split}.tsv    caption<TAB>image path relative to {split}/\n"
                  f"  {split}/...    the downloaded images")
        prepare = ("download the images listed in the Conceptual Captions TSV "
                   "(https://ai.google.com/research/ConceptualCaptions/download),\n"
                   f"and write {split}.tsv with the local file names in place of the URLs")
        expected = ExpectedLayout(type(self).__name__, layout, prepare)
        folder = expected.dir(os.path.join(root, split))
        self.caption_of = read_caption_tsv(expected.file(os.path.join(root, f"{split}.tsv")))
        super().__init__(root=folder, size=size, crop="random" if random_crop else "center", flip=flip)

    def caption(self, j: int) -> Optional[str]:
        caption = self.caption_of.get(self.relpath(j))
        if caption is None:
            raise BadImageError(self.path(j), "no caption in the TSV")
        return caption


ConceptualCaptionsTrain = dataset_variant(ConceptualCaptions, "ConceptualCaptionsTrain", fixed={"split": "train"},
                                          defaults={"random_crop": True})
ConceptualCaptionsValidation = dataset_variant(ConceptualCaptions, "ConceptualCaptionsValidation",
                                               fixed={"split": "validation"})
