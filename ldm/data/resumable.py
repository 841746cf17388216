"""A training DataLoader that can stop mid-epoch and continue with exactly the batches it would have served.

Three pieces, so that the data a run sees depends on (seed, epoch, position) alone:

* ``EpochSampler`` — the epoch's order is a permutation seeded by (seed, epoch), not drawn from
  the process's RNG; it can start at a given position of that order (the resume point).
* ``SeededItems`` — seeds ``random``, ``numpy`` and ``torch`` from (seed, epoch, position) before
  each item is loaded, so random crops and flips are the same whichever worker loads the item, how
  many workers there are, and whether the run was interrupted. In the main process
  (``num_workers=0``) the global RNG states are put back afterwards: loading data must not shift
  the noise the model draws.
* ``ResumableDataLoader`` — counts the batches it has handed out in the current epoch and saves
  (epoch, batches) through ``state_dict``; Lightning (2.x) stores that state in the checkpoint and
  hands it back through ``load_state_dict`` before iterating again.

Lightning asks a train loader for ``len()`` to know the epoch length, so the loader keeps
reporting the full epoch while a resumed iteration yields only the rest; Lightning counts the
batches done before the interruption itself.

Distributed training: ``EpochSampler`` shards the epoch itself. Every rank computes the same
permutation (same seed and epoch) and rank r of W takes positions r, r + W, r + 2W, ...; the last
``len % W`` positions of the permutation are dropped so that all ranks run the same number of
batches (no example is served twice in an epoch, unlike a padding DistributedSampler). Item seeds
follow the global position, so the W ranks together load exactly the items, with exactly the
augmentations, of a single-process run. ``EpochSampler`` is a ``DistributedSampler`` for
Lightning's sake: Lightning then leaves it in place instead of wrapping it. All ranks serve the
same number of batches, so the one position saved in the checkpoint (rank 0's) resumes every rank.
A sampler wrapped by someone else (e.g. Lightning's ``DistributedSamplerWrapper``) still iterates,
but its position is not saved: a resumed epoch starts over.
"""
from __future__ import annotations

import random
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["EpochSampler", "ResumableDataLoader", "SeededItems", "item_seed"]


def _mix(*words: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(w) % 2 ** 64 for w in words])


def item_seed(seed: int, epoch: int, position: int) -> int:
    """The 32-bit seed of the item at ``position`` of ``epoch``'s order."""
    return int(_mix(seed, epoch, position).generate_state(1)[0])


class EpochSampler(DistributedSampler):
    """Yields ``(index, item seed)`` for this rank's positions of the epoch's order, from ``start`` on.

    A ``DistributedSampler`` by type only (its constructor needs no process group): Lightning
    replaces the sampler of a distributed run's loader unless it is one.
    """

    def __init__(self,
                 length: int,           # dataset size
                 shuffle: bool,         # permute each epoch (else 0, 1, ..., length - 1)
                 seed: int,             # order and per-item seeds derive from it; the same on every rank
                 num_replicas: int = 1,  # ranks sharing the epoch (world size)
                 rank: int = 0):        # this process's share
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"EpochSampler: rank {rank} of {num_replicas} replicas is not a valid share")
        self.length, self.shuffle, self.seed = int(length), shuffle, int(seed)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.drop_last = True  # the tail that does not divide among the ranks (see the module doc)
        self.epoch = 0
        self.start = 0  # local position to start the next iteration at (a resumed epoch); reset after use

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this when an epoch starts; a resume point belongs to its own epoch only."""
        if epoch != self.epoch:
            self.start = 0
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        """The epoch's permutation of the whole dataset (the same on every rank)."""
        if not self.shuffle:
            return list(range(self.length))
        generator = torch.Generator().manual_seed(int(_mix(self.seed, self.epoch).generate_state(1)[0]))
        return torch.randperm(self.length, generator=generator).tolist()

    def positions(self) -> range:
        """This rank's positions in ``order()``."""
        return range(self.rank, len(self) * self.num_replicas, self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, start = self.order(), self.start
        self.start = 0
        for position in self.positions()[start:]:
            yield order[position], item_seed(self.seed, self.epoch, position)

    def __len__(self) -> int:
        return self.length // self.num_replicas

    # DistributedSampler's attributes, for code that reads them.
    @property
    def num_samples(self) -> int:
        return len(self)

    @property
    def total_size(self) -> int:
        return len(self) * self.num_replicas


class SeededItems(Dataset):
    """``dataset[index]`` loaded with the global RNGs seeded from the item seed (see module doc)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        if not isinstance(key, tuple):  # a plain index (not from an EpochSampler): no seeding
            return self.dataset[key]
        index, seed = key
        in_worker = torch.utils.data.get_worker_info() is not None
        saved = None if in_worker else (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(seed)
        np.random.seed(seed)
        # The CPU generator only: torch.manual_seed would also reseed every CUDA generator.
        torch.default_generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            if saved is not None:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])


class ResumableDataLoader(DataLoader):
    """A DataLoader over ``SeededItems`` with an ``EpochSampler`` whose position is saved and restored."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.batch_size is None:
            raise ValueError("ResumableDataLoader needs batch_size (it counts whole batches)")
        self._served = 0  # batches of the current epoch handed out (including those before a resume)
        self._served_epoch = 0  # the epoch _served counts

    @property
    def epoch_sampler(self) -> Optional[EpochSampler]:
        """The EpochSampler, or None when another sampler wraps it."""
        sampler = self.batch_sampler.sampler if self.batch_sampler is not None else self.sampler
        return sampler if isinstance(sampler, EpochSampler) else None

    def __iter__(self) -> Iterator[Any]:
        sampler = self.epoch_sampler
        if sampler is None:
            return super().__iter__()
        self._served, self._served_epoch = sampler.start // self.batch_size, sampler.epoch
        return self._count(super().__iter__())

    def _count(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Plain integers: checkpoints stay loadable without unpickling objects."""
        sampler = self.epoch_sampler
        if sampler is None:  # wrapped by another sampler: the position is not tracked (see the module doc)
            return {}
        state = {"epoch": sampler.epoch, "batches": 0 if sampler.epoch != self._served_epoch else self._served}
        if sampler.num_replicas > 1:  # (a new epoch that has been set but not started has served 0)
            state["world_size"] = sampler.num_replicas
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = self.epoch_sampler
        if sampler is None or not state:
            return
        epoch, batches = int(state["epoch"]), int(state["batches"])
        world_size = int(state.get("world_size", 1))
        if batches * self.batch_size >= sampler.length // world_size:  # saved at the end of an epoch
            epoch, batches = epoch + 1, 0
        elif world_size != sampler.num_replicas:
            raise ValueError(
                f"the checkpoint's data position (epoch {epoch}, batch {batches}) was saved by {world_size} "
                f"process(es), this run has {sampler.num_replicas}: resuming mid-epoch needs the same number of "
                "processes (keep --devices/--num_nodes as they were, or resume from a checkpoint taken at an "
                "epoch end)")
        sampler.epoch, sampler.start = epoch, batches * self.batch_size
        self._served, self._served_epoch = batches, epoch
