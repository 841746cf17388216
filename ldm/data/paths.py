"""Plumbing shared by the paper datasets: where they live on disk, the error a user sees when
they are not there, and the random generator of one example.

Every dataset takes a ``root`` argument; left out, it defaults to ``$LDM_DATA_ROOT/<name>`` when
that environment variable is set and to ``data/<name>`` (relative to the working directory, as
in the original repository) otherwise. Missing files fail at construction with a
:class:`FileNotFoundError` that shows the expected layout and how to prepare it, never later
inside a DataLoader worker.
"""
from __future__ import annotations

import os
import random
from typing import Optional

import numpy as np

from ldm.data.image_io import IMAGE_EXTENSIONS

__all__ = ["DATA_ROOT_ENV", "ExpectedLayout", "data_root", "example_rng", "list_images", "missing_data",
           "write_list"]

DATA_ROOT_ENV = "LDM_DATA_ROOT"


def data_root(name: str, root: Optional[str] = None) -> str:
    """``root`` if given, else ``$LDM_DATA_ROOT/<name>`` or ``data/<name>``."""
    if root is not None:
        return os.fspath(root)
    base = os.environ.get(DATA_ROOT_ENV)
    return os.path.join(base, name) if base else os.path.join("data", name)


def missing_data(dataset: str, path: str, layout: str, prepare: str) -> FileNotFoundError:
    """A multi-line error: what is missing, the layout expected, and how to get there."""
    message = (f"{dataset}: expected {path!r}, which does not exist.\n"
               f"Expected layout:\n{_indent(layout)}\n"
               f"To prepare it:\n{_indent(prepare)}\n"
               f"(Set the `root` parameter, or the {DATA_ROOT_ENV} environment variable, to read "
               f"the data from elsewhere.)")
    return FileNotFoundError(message)


class ExpectedLayout:
    """One dataset's on-disk contract: checks that raise :func:`missing_data` errors.

    ``layout`` and ``prepare`` are shown in every error, so each dataset writes them once.
    """

    def __init__(self,
                 dataset: str,   # the class name users see in the error
                 layout: str,    # the expected tree, one entry per line
                 prepare: str,   # the commands or download page that produce it
                 ):
        self.dataset, self.layout, self.prepare = dataset, layout, prepare

    def missing(self, path: str) -> FileNotFoundError:
        return missing_data(self.dataset, path, self.layout, self.prepare)

    def dir(self, path: str) -> str:
        """``path`` if it is a directory, else the missing-data error."""
        if not os.path.isdir(path):
            raise self.missing(path)
        return path

    def file(self, path: str) -> str:
        """``path`` if it is a file, else the missing-data error."""
        if not os.path.isfile(path):
            raise self.missing(path)
        return path

    def first_file(self, candidates: list[str]) -> str:
        """The first of ``candidates`` that exists (alternative names across releases)."""
        for path in candidates:
            if os.path.isfile(path):
                return path
        raise self.missing(candidates[0])


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.strip("\n").splitlines())


def example_rng(index: int, seed: Optional[int]) -> np.random.Generator:
    """The generator for one example's random choices (crops, degradations, masks).

    ``seed`` given (validation): example ``index`` is the same in every epoch and run. ``seed``
    None (training): fresh draws from the global ``random`` module, which ``worker_init_fn``
    seeds per DataLoader worker, so runs stay reproducible and workers differ.
    """
    if seed is not None:
        return np.random.default_rng([seed, index])
    return np.random.default_rng(random.getrandbits(64))


def list_images(root: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[str]:
    """Sorted '/'-separated paths of the image files under ``root`` (hidden entries skipped)."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(folder, root)
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions:
                found.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return sorted(found)


def write_list(path: str, entries: list[str]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{e}\n" for e in entries)
