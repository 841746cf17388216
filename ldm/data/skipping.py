"""Skipping unusable items: one bad file must neither stop a training run nor bias it.

:class:`SkipBadImages` gives a map-style dataset its ``__getitem__``: item ``i`` is
``load_example(i)``; if that raises :class:`~ldm.data.image_io.BadImageError` (unreadable,
truncated, tiny, missing caption...), the item is recorded in ``skipped``, one
:class:`BadImageWarning` names it, and ``None`` is returned in its place. The DataModule's
collate function (:func:`ldm.data.base.collate_examples`) drops ``None``, so the batch is one
example shorter. Serving a neighbour instead would show that neighbour twice per epoch: a folder
with many bad files would silently over-weight the images next to them. With dropping, every
readable item is served exactly once per epoch. A file found bad is never decoded again (per
process: each DataLoader worker keeps its own record).
"""
from __future__ import annotations

import abc
import warnings
from collections import Counter
from typing import Any, Optional

from ldm.data.image_io import BadImageError

__all__ = ["BadImageWarning", "SkipBadImages"]


class BadImageWarning(UserWarning):
    """An image was skipped; the message names the file and the reason."""


class SkipBadImages(abc.ABC):
    """Mixin for datasets of possibly bad items.

    A subclass provides ``root`` (named in errors), ``__len__``, ``path(j)`` (what a warning
    calls item j) and ``load_example(j)``; it calls ``super().__init__()`` (or
    :meth:`init_skipping`) before items are read.
    """

    item_noun = "image file"  # what the "none could be read" error counts

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.init_skipping()

    def init_skipping(self) -> None:
        self.skipped: dict[str, str] = {}  # path(j) -> reason, in the order found
        self._bad: set[int] = set()
        self._any_readable = False  # some item loaded (or was probed) in this process

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of items, bad ones included."""

    @abc.abstractmethod
    def path(self, j: int) -> str:
        """What warnings and ``skipped`` call item ``j`` (a file path, or ``shard#index``)."""

    @abc.abstractmethod
    def load_example(self, j: int) -> dict[str, Any]:
        """Example ``j`` as a dict; raise ``BadImageError`` to have it skipped."""

    def __getitem__(self, i: int) -> Optional[dict[str, Any]]:
        """Example ``i``, or None when item ``i`` is unusable (see the module doc)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {type(self).__name__} of length {n}")
        i %= n
        if i in self._bad:
            return None
        try:
            example = self.load_example(i)
        except BadImageError as exc:
            self._skip(i, exc.reason)
            self._require_some_readable(i)
            return None
        self._any_readable = True
        return example

    def _require_some_readable(self, start: int) -> None:
        """Fail loudly, once per process, if no item at all can be read (a wrong folder, a broken
        mount): a run that silently trains on nothing is worse than one that stops."""
        if self._any_readable:
            return
        n = len(self)
        for k in range(1, n):
            j = (start + k) % n
            if j in self._bad:
                continue
            try:
                self.load_example(j)
            except BadImageError as exc:
                self._skip(j, exc.reason)
                continue
            self._any_readable = True
            return
        reasons = Counter(r.split(" (")[0] for r in self.skipped.values())
        raise ValueError(f"{type(self).__name__} {self.root!r}: none of its {n} {self.item_noun}(s) could be "
                         f"read ({dict(reasons)}); e.g. {next(iter(self.skipped.items()))}")

    def _skip(self, j: int, reason: str) -> None:
        path = self.path(j)
        self._bad.add(j)
        self.skipped[path] = reason
        warnings.warn(f"skipping image {path}: {reason}", BadImageWarning, stacklevel=3)
