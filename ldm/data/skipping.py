"""Skipping unusable items: one bad file must neither stop a training run nor make it random.

:class:`SkipBadImages` gives a map-style dataset its ``__getitem__``: item ``i`` is
``load_example(i)``; if that raises :class:`~ldm.data.image_io.BadImageError` (unreadable,
truncated, tiny, missing caption...), the item is recorded in ``skipped``, one
:class:`BadImageWarning` names it, and the next index is tried, wrapping around. A bad index
therefore always yields the same replacement, and a file found bad is never decoded again (per
process: each DataLoader worker keeps its own record).
"""
from __future__ import annotations

import abc
import warnings
from collections import Counter
from typing import Any

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

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of items, bad ones included."""

    @abc.abstractmethod
    def path(self, j: int) -> str:
        """What warnings and ``skipped`` call item ``j`` (a file path, or ``shard#index``)."""

    @abc.abstractmethod
    def load_example(self, j: int) -> dict[str, Any]:
        """Example ``j`` as a dict; raise ``BadImageError`` to have it skipped."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {type(self).__name__} of length {n}")
        i %= n
        for k in range(n):
            j = (i + k) % n
            if j in self._bad:
                continue
            try:
                return self.load_example(j)
            except BadImageError as exc:
                self._skip(j, exc.reason)
        reasons = Counter(r.split(" (")[0] for r in self.skipped.values())
        raise ValueError(f"{type(self).__name__} {self.root!r}: none of its {n} {self.item_noun}(s) could be "
                         f"read ({dict(reasons)}); e.g. {next(iter(self.skipped.items()))}")

    def _skip(self, j: int, reason: str) -> None:
        path = self.path(j)
        self._bad.add(j)
        self.skipped[path] = reason
        warnings.warn(f"skipping image {path}: {reason}", BadImageWarning, stacklevel=3)
