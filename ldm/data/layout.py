"""Layout-to-image conditioning (Sec. 4.3.1): bounding boxes as a token sequence for the
``BERTEmbedder(use_tokenizer=False)`` of the layout2img config (vocab 8192, length 92).

Each object is three tokens: its class id and the quantised positions of its top-left and
bottom-right corners; a position ``(x, y)`` in [0, 1]^2 becomes
``round(x (g - 1)) + g * round(y (g - 1))`` on a ``g x g`` grid. Objects come largest first,
``max_objects`` at most, then padding (token ``no_tokens - 1``). With ``encode_crop`` two more
tokens give the crop window's corners in the original image, so the model knows which part of
the photo it sees. Class and position tokens share ids; their place in the sequence tells them
apart. ``30 * 3 + 2 = 92`` tokens is the released model's ``max_seq_len``.
"""
from __future__ import annotations

import abc
import math
import random
from typing import Any, Callable, Optional

import numpy as np

from ldm.data.folder import FileList, ImageFolder
from ldm.data.image_io import hflip, resize_shorter, to_float

__all__ = ["BBoxImageDataset", "LayoutSplit", "LayoutTokenizer"]


class LayoutTokenizer:
    """Boxes ``(class, x0, y0, x1, y1)`` (normalised) <-> int64 token sequences."""

    def __init__(self,
                 n_classes: int,             # object classes: ids 0 .. n_classes - 1
                 no_tokens: int = 8192,      # vocabulary size of the embedder
                 max_objects: int = 30,      # objects kept per image (largest first)
                 grid: int = 64,             # corner positions are quantised on grid x grid
                 encode_crop: bool = True,   # append the crop window's two corner tokens
                 ):
        if grid < 2 or grid * grid > no_tokens - 1 or not 0 < n_classes <= no_tokens - 1:
            raise ValueError(f"need grid^2 ({grid}^2) and n_classes ({n_classes}) below no_tokens - 1 "
                             f"({no_tokens - 1}, the padding token)")
        self.n_classes, self.no_tokens, self.max_objects = n_classes, no_tokens, max_objects
        self.grid, self.encode_crop = grid, encode_crop
        self.pad = no_tokens - 1
        self.seq_len = 3 * max_objects + (2 if encode_crop else 0)

    def position(self, x: float, y: float) -> int:
        g = self.grid - 1
        return int(round(min(max(x, 0.0), 1.0) * g)) + self.grid * int(round(min(max(y, 0.0), 1.0) * g))

    def coordinates(self, token: int) -> tuple[float, float]:
        y, x = divmod(int(token), self.grid)
        return x / (self.grid - 1), y / (self.grid - 1)

    def encode(self, boxes: np.ndarray, crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> np.ndarray:
        """``boxes`` (N, 5) in the order given (at most ``max_objects`` are used)."""
        tokens = np.full(self.seq_len, self.pad, dtype=np.int64)
        for k, (c, x0, y0, x1, y1) in enumerate(boxes[:self.max_objects]):
            if not 0 <= c < self.n_classes:
                raise ValueError(f"class id {c} outside [0, {self.n_classes})")
            tokens[3 * k:3 * k + 3] = (int(c), self.position(x0, y0), self.position(x1, y1))
        if self.encode_crop:
            tokens[-2:] = (self.position(crop[0], crop[1]), self.position(crop[2], crop[3]))
        return tokens

    def decode(self, tokens: np.ndarray) -> tuple[np.ndarray, Optional[tuple[float, ...]]]:
        """(boxes (N, 5) float32, crop window or None) from a token sequence."""
        tokens = np.asarray(tokens)
        rows = []
        for k in range(self.max_objects):
            c, a, b = (int(t) for t in tokens[3 * k:3 * k + 3])
            if c == self.pad:
                break
            rows.append((c, *self.coordinates(a), *self.coordinates(b)))
        crop = (*self.coordinates(tokens[-2]), *self.coordinates(tokens[-1])) if self.encode_crop else None
        return np.array(rows, dtype=np.float32).reshape(-1, 5), crop


class BBoxImageDataset(ImageFolder):
    """Images with boxes; ``boxes_for(relpath)`` returns an image's (N, 5) float32 boxes
    ``(class, x0, y0, x1, y1)`` normalised to the full image, and ``class_names[c]`` names class c.

    Example keys: ``image``; ``coordinates_bbox`` (int64 tokens, the layout2img
    ``cond_stage_key``); ``bboxes`` (max_objects, 5) float32 ``(class, x0, y0, x1, y1)`` in the
    crop, padded with -1 rows; ``n_objects``; ``file_path_``, ``relpath``. Boxes are clipped to
    the crop; those left smaller than ``min_object_area`` (a fraction of the crop) are dropped.
    Images without any box give an empty layout (all padding).
    """

    def __init__(self,
                 root: str,                      # folder of the images
                 boxes_for: Callable[[str], np.ndarray],
                 class_names: list[str],
                 size: int = 256,                # output side in px
                 random_crop: bool = False,
                 random_flip: bool = False,
                 min_object_area: float = 1e-4,
                 tokenizer: Optional[LayoutTokenizer] = None,
                 file_list: Optional[FileList] = None,
                 ):
        super().__init__(root=root, size=size, crop="random" if random_crop else "center", file_list=file_list)
        self.random_crop, self.random_flip, self.min_object_area = random_crop, random_flip, min_object_area
        self.boxes_for, self.class_names = boxes_for, class_names
        self.tokenizer = tokenizer or LayoutTokenizer(len(class_names))

    def load_example(self, j: int) -> dict[str, Any]:
        path, rel = self.path(j), self.relpath(j)
        arr = resize_shorter(self.read_image(j), self.size)
        h, w = arr.shape[:2]
        top = random.randint(0, h - self.size) if self.random_crop else (h - self.size) // 2
        left = random.randint(0, w - self.size) if self.random_crop else (w - self.size) // 2
        arr = arr[top:top + self.size, left:left + self.size]
        crop = (left / w, top / h, (left + self.size) / w, (top + self.size) / h)
        boxes = self._to_crop(self.boxes_for(rel), crop)
        if self.random_flip and random.random() < 0.5:
            arr = hflip(arr)
            boxes[:, [1, 3]] = 1.0 - boxes[:, [3, 1]]
            crop = (1.0 - crop[2], crop[1], 1.0 - crop[0], crop[3])  # a crop of the mirrored photo
        boxes = boxes[:self.tokenizer.max_objects]
        padded = np.full((self.tokenizer.max_objects, 5), -1.0, dtype=np.float32)
        padded[:len(boxes)] = boxes
        return {"image": to_float(arr), "coordinates_bbox": self.tokenizer.encode(boxes, crop),
                "bboxes": padded, "n_objects": len(boxes), "file_path_": path, "relpath": rel}

    def _to_crop(self, boxes: np.ndarray, crop: tuple[float, float, float, float]) -> np.ndarray:
        """Clip to the crop window, express in its coordinates, drop slivers, sort largest first."""
        cx0, cy0, cx1, cy1 = crop
        out = boxes.astype(np.float32, copy=True)
        out[:, [1, 3]] = (np.clip(out[:, [1, 3]], cx0, cx1) - cx0) / (cx1 - cx0)
        out[:, [2, 4]] = (np.clip(out[:, [2, 4]], cy0, cy1) - cy0) / (cy1 - cy0)
        area = (out[:, 3] - out[:, 1]) * (out[:, 4] - out[:, 2])
        keep = area >= max(self.min_object_area, math.ulp(0.0))
        order = np.argsort(-area[keep], kind="stable")
        return out[keep][order]


class LayoutSplit(BBoxImageDataset):
    """One split of a box-annotated collection (COCO, OpenImages), with the layout2img config's
    parameters; a subclass implements :meth:`read_annotations`."""

    def __init__(self,
                 split: str,                     # "train" or "validation"
                 size: int = 256,                # output side in px
                 random_crop: bool = False,
                 random_flip: bool = False,
                 min_object_area: float = 1e-4,  # drop boxes smaller than this share of the crop
                 max_objects: int = 30,          # 3 tokens each; 30 * 3 + 2 = 92 = max_seq_len
                 no_tokens: int = 8192,          # the embedder's vocab_size
                 grid: int = 64,                 # corner quantisation grid
                 encode_crop: bool = True,       # append the crop window's corner tokens
                 root: Optional[str] = None,     # the collection's folder (default under data/)
                 ):
        folder, boxes_for, names = self.read_annotations(split, root)
        tokenizer = LayoutTokenizer(len(names), no_tokens, max_objects, grid, encode_crop)
        super().__init__(folder, boxes_for, names, size=size, random_crop=random_crop, random_flip=random_flip,
                         min_object_area=min_object_area, tokenizer=tokenizer)

    @abc.abstractmethod
    def read_annotations(self, split: str, root: Optional[str]) -> tuple[str, Callable[[str], np.ndarray], list[str]]:
        """(image folder, relpath -> (N, 5) boxes, class names) of ``split``."""
