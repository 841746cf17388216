"""Samples written in shards, so that an interrupted evaluation resumes where it stopped.

    <out>/shards/manifest.json      the settings the samples were drawn with
    <out>/shards/shard-00000.npz    images (uint8 (n, H, W, 3)), indices, labels (class models)

A shard holds samples ``[k * shard_size, (k + 1) * shard_size)`` and is written atomically
(``ldm.checkpoint.atomic_path``), so a shard file is either complete or absent. A rerun with the
same settings skips the shards on disk; different settings are refused rather than mixed, except
the number of samples: a larger N adds shards to a finished run (its last, partial shard is drawn
again), since sample i does not depend on N.

Sample i starts from noise drawn from a generator seeded with (seed, i) only. The sampler's own
noise (DDIM eta > 0, DDPM) comes, for samples drawn from noise, from generators seeded with
(seed, i) as well (``per_sample_noise``: no dependence on the batch size), and for the paired
protocols (super-resolution, inpainting) from a generator seeded with (seed, first index of its
batch); batches never cross shard boundaries, so a resumed run writes exactly the images an
uninterrupted one would.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import torch
from tqdm import tqdm

from ldm.checkpoint import atomic_path

__all__ = ["ShardStore", "batch_generator", "per_sample_noise", "sample_noise"]

# indices -> (uint8 images, labels or None), or (uint8 images, uint8 references, None)
MakeBatch = Callable[[np.ndarray], tuple]


def _seed_of(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32).view(np.uint64)[0]
               % 2 ** 63)


def sample_noise(seed: int, indices: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """(len(indices), *shape) standard normal noise; row j depends only on (seed, indices[j])."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(_seed_of(seed, int(i))))
                        for i in indices])


def per_sample_noise(seed: int, indices: np.ndarray, shape: tuple[int, ...],
                     device: Union[str, torch.device] = "cpu") -> Callable[[float, float], torch.Tensor]:
    """A sampler's ``noise_sampler`` ((sigma, sigma_next) -> (len(indices), *shape) noise) whose row j
    comes from a generator of its own, seeded with (seed, indices[j]): the noise sample i receives
    at every step depends on (seed, i) alone, not on the batch it is drawn in nor on the process
    drawing it. The initial noise of the same samples: :func:`sample_noise`."""
    generators = [torch.Generator().manual_seed(_seed_of(seed + 1, int(i))) for i in indices]

    def draw(sigma: float, sigma_next: float) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
    return draw


def batch_generator(seed: int, first_index: int) -> torch.Generator:
    """The CPU generator for the sampler noise of the batch starting at ``first_index``."""
    return torch.Generator().manual_seed(_seed_of(seed + 1, first_index))


class ShardStore:
    def __init__(self, root: Union[str, os.PathLike]):
        self.root = Path(root)
        self.dir = self.root / "shards"
        self.manifest_path = self.dir / "manifest.json"

    def shard_path(self, k: int) -> Path:
        return self.dir / f"shard-{k:05d}.npz"

    def _expected(self, k: int, n: int, shard_size: int) -> int:
        return min(shard_size, n - k * shard_size)

    def _holds(self, k: int, count: int) -> bool:
        path = self.shard_path(k)
        if not path.is_file():
            return False
        with np.load(path, allow_pickle=False) as z:
            return len(z["indices"]) == count

    def shards(self) -> list[Path]:
        """The shard files of the samples the manifest describes (all of them must be on disk)."""
        manifest = self.manifest()
        if manifest is None:
            raise ValueError(f"{self.dir}: no manifest.json; not the output of a sampling run")
        n, size = int(manifest["n"]), int(manifest["shard_size"])
        missing = [k for k in range(-(-n // size)) if not self._holds(k, self._expected(k, n, size))]
        if missing:
            raise ValueError(f"{self.dir}: {len(missing)} of {-(-n // size)} shards are missing or incomplete "
                             f"(first: {self.shard_path(missing[0]).name}); rerun the sampling command to finish")
        return [self.shard_path(k) for k in range(-(-n // size))]

    def manifest(self) -> Optional[dict[str, Any]]:
        if not self.manifest_path.is_file():
            return None
        return json.loads(self.manifest_path.read_text())

    def _start(self, settings: Mapping[str, Any], write: bool = True) -> None:
        """Record ``settings`` (when ``write``); refuse settings other than those of the samples on
        disk. Only the number of samples ``n`` may change: sample i does not depend on n."""
        settings = json.loads(json.dumps(dict(settings)))  # as it will read back
        old = self.manifest()
        keys = sorted((set(old or {}) | set(settings)) - {"n"})
        if old is not None and any(old.get(k) != settings.get(k) for k in keys):
            changed = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in keys
                                if old.get(k) != settings.get(k))
            raise ValueError(f"{self.dir} holds samples drawn with other settings ({changed}); "
                             "use another --outdir, or delete that folder to start over")
        self.dir.mkdir(parents=True, exist_ok=True)
        if old != settings and write:
            with atomic_path(self.manifest_path) as tmp:
                Path(tmp).write_text(json.dumps(settings, indent=2, sort_keys=True))

    def fill(self, n: int, shard_size: int, batch_size: int, settings: Mapping[str, Any], make: MakeBatch,
             progress: bool = True, desc: str = "samples", rank: int = 0, world_size: int = 1) -> int:
        """Draw the missing shards of ``n`` samples with ``make`` (see ``MakeBatch``); returns how many
        samples were drawn now (0 when all shards were on disk).

        With ``world_size`` processes (torchrun), process ``rank`` draws the missing shards k with
        k % world_size == rank and rank 0 writes the manifest; the caller waits for all of them
        before reading the shards."""
        if n < 1 or shard_size < 1 or batch_size < 1:
            raise ValueError(f"need n, shard size and batch size >= 1, got {n}, {shard_size}, {batch_size}")
        self._start({**settings, "n": n, "shard_size": shard_size, "batch_size": batch_size}, write=rank == 0)
        n_shards = -(-n // shard_size)
        # a shard of an earlier run with another n may hold fewer or more samples: drawn again
        todo = [k for k in range(n_shards) if not self._holds(k, self._expected(k, n, shard_size))]
        done_before = sum(min(shard_size, n - k * shard_size) for k in range(n_shards) if k not in todo)
        todo = [k for k in todo if k % world_size == rank]
        drawn = 0
        with tqdm(total=n, initial=done_before, desc=desc, unit="img", disable=not progress) as bar:
            for k in todo:
                lo, hi = k * shard_size, min(n, (k + 1) * shard_size)
                images, references, labels = [], [], []
                for start in range(lo, hi, batch_size):
                    idx = np.arange(start, min(hi, start + batch_size))
                    out = make(idx)
                    images.append(out[0])
                    if len(out) == 3:  # paired protocols: the dataset image beside the output
                        references.append(out[1])
                    if out[-1] is not None:
                        labels.append(np.asarray(out[-1], dtype=np.int64))
                    bar.update(len(idx))
                arrays = {"images": np.concatenate(images), "indices": np.arange(lo, hi)}
                if references:
                    arrays["reference"] = np.concatenate(references)
                if labels:
                    arrays["labels"] = np.concatenate(labels)
                with atomic_path(self.shard_path(k)) as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, **arrays)
                drawn += hi - lo
        return drawn
