"""The Lightning data module every config names as ``data:`` (the original ``main.DataModuleFromConfig``).

    data:
      target: main.DataModuleFromConfig      # or ldm.data.base.DataModuleFromConfig
      params:
        batch_size: 16
        train:      {target: ldm.data.synthetic.SyntheticShapesTrain, params: {size: 64}}
        validation: {target: ldm.data.synthetic.SyntheticShapesValidation, params: {size: 64}}

Each split is a ``target``/``params`` config; they are checked against the dataset constructors
when the module is built (a typo fails at start-up, naming ``data.params.<split>...``) and
instantiated once in ``setup``. Only the splits that are configured get a dataloader, so
Lightning runs validation only if ``validation`` is given.
"""
from __future__ import annotations

import functools
import os
import random
from collections.abc import Mapping
from typing import Any, Callable, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import collate, default_collate_fn_map

from ldm.config.errors import ConfigError
from ldm.config.validate import check_config_tree
from ldm.data.resumable import EpochSampler, ResumableDataLoader, SeededItems
from ldm.util import instantiate_from_config

__all__ = ["DataModuleFromConfig", "WrappedDataset", "collate_examples", "worker_init_fn"]

SPLITS = ("train", "validation", "test", "predict")


class WrappedDataset(Dataset):
    """Any object with ``__len__`` and ``__getitem__`` as a torch Dataset."""

    def __init__(self, dataset: Any):
        self.data = dataset

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> Any:
        return self.data[idx]


def worker_init_fn(worker_id: int, rank: int = 0, world_size: int = 1) -> None:
    """Seed ``numpy`` and ``random`` in a worker from torch's per-worker seed.

    torch gives worker k the seed ``base_seed + k``, and ``base_seed`` comes from the main
    process's torch generator (set by ``seed_everything``). Deriving the other generators from it
    makes random crops and flips reproducible run to run, and distinct across workers; ``rank``
    makes them distinct across the processes of a distributed run as well.
    """
    seed = (torch.initial_seed() + rank * 1_000_003) % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
    info = get_worker_info()
    shard = getattr(info.dataset, "set_worker_shard", None) if info is not None else None
    if callable(shard):  # iterable datasets split their stream between all workers of all ranks themselves
        shard(rank * info.num_workers + info.id, world_size * info.num_workers)


# Strings (captions, labels, paths) and None collate into lists; numpy string/object arrays too,
# where torch's default collation would raise. Numeric arrays keep torch's fast path, which
# writes the stacked batch straight into shared memory inside worker processes.
def _collate_numpy(batch: list[np.ndarray], *, collate_fn_map: Optional[dict] = None) -> Any:
    if batch[0].dtype.kind in "USOV":
        return list(batch)
    return default_collate_fn_map[np.ndarray](batch, collate_fn_map=collate_fn_map)


def _collate_as_list(batch: list[Any], *, collate_fn_map: Optional[dict] = None) -> list[Any]:
    return list(batch)


_COLLATE_FN_MAP = {**default_collate_fn_map, np.ndarray: _collate_numpy, type(None): _collate_as_list}


def collate_examples(batch: list[Any]) -> Any:
    """Collate a list of example dicts: arrays/numbers -> stacked tensors, strings -> lists.

    Unreadable items arrive as None (ldm.data.skipping) and are dropped, so the batch is shorter
    rather than repeating another example; with nothing left it is None, which Lightning skips.
    """
    batch = [example for example in batch if example is not None]
    if not batch:
        return None
    return collate(batch, collate_fn_map=_COLLATE_FN_MAP)


class DataModuleFromConfig(pl.LightningDataModule):
    """Datasets built from ``target``/``params`` configs, served by DataLoaders."""

    def __init__(self,
                 batch_size: int,                         # samples per batch (per device)
                 train: Optional[Mapping] = None,         # target/params config of each split
                 validation: Optional[Mapping] = None,
                 test: Optional[Mapping] = None,
                 predict: Optional[Mapping] = None,
                 wrap: bool = False,                      # wrap datasets in WrappedDataset
                 num_workers: Optional[int] = None,       # default: min(2 * batch_size, CPU count)
                 shuffle_test_loader: bool = False,
                 use_worker_init_fn: bool = False,        # seed numpy/random per worker
                 shuffle_val_dataloader: bool = False,
                 seed: Optional[int] = None,              # training order and augmentation; default: torch's seed
                 ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.num_workers = num_workers if num_workers is not None else min(batch_size * 2, os.cpu_count() or 1)
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.use_worker_init_fn = use_worker_init_fn
        self.wrap = wrap
        self.shuffle_test_loader = shuffle_test_loader
        self.shuffle_val_dataloader = shuffle_val_dataloader
        self.seed = seed
        self.dataset_configs: dict[str, Any] = {}
        for split, cfg in zip(SPLITS, (train, validation, test, predict)):
            if cfg is None:
                continue
            # Fail now, naming the path, rather than after the model has been built.
            if not isinstance(cfg, (Mapping, DictConfig)) or "target" not in cfg:
                raise ConfigError(f"data.params.{split}", "expected a dataset config with `target:` and `params:`")
            check_config_tree(cfg, path=f"data.params.{split}")
            self.dataset_configs[split] = cfg
        # Lightning calls a split's loader (and runs that stage) only where the method is
        # overridden, so bind loaders for the configured splits alone.
        loaders = {"train": self._train_dataloader, "validation": self._val_dataloader,
                   "test": self._test_dataloader, "predict": self._predict_dataloader}
        names = {"train": "train_dataloader", "validation": "val_dataloader",
                 "test": "test_dataloader", "predict": "predict_dataloader"}
        for split in self.dataset_configs:
            setattr(self, names[split], loaders[split])
        self.datasets: dict[str, Dataset] = {}

    # ---------------------------------------------------------------- datasets

    def prepare_data(self) -> None:
        """Build the datasets once on the main process (downloads, index files, listings)."""
        self._build()

    def setup(self, stage: Optional[str] = None) -> None:
        self._build()

    def _build(self) -> None:
        for split, cfg in self.dataset_configs.items():
            if split not in self.datasets:
                dataset = instantiate_from_config(cfg, path=f"data.params.{split}")
                self.datasets[split] = WrappedDataset(dataset) if self.wrap else dataset

    # ---------------------------------------------------------------- loaders

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self._build()
        dataset = self.datasets[split]
        iterable = isinstance(dataset, IterableDataset)
        if split == "train" and not iterable:
            return self._resumable_loader(dataset, shuffle)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle and not iterable,
            num_workers=self.num_workers,
            collate_fn=collate_examples,
            worker_init_fn=self._worker_init_fn() if self.use_worker_init_fn or iterable else None,
            # Workers survive between epochs: re-forking costs seconds and drops their caches.
            persistent_workers=self.num_workers > 0,
            pin_memory=self._pin_memory(),
            generator=self._generator(),
        )

    def _share(self) -> tuple[int, int]:
        """(rank, world size) of this process in the run (0, 1 outside a distributed run)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _worker_init_fn(self) -> Callable[[int], None]:
        rank, world_size = self._share()
        return functools.partial(worker_init_fn, rank=rank, world_size=world_size)

    def _seed(self) -> int:
        # seed_everything(--seed) seeds torch, so by default the data follows main.py's --seed.
        return self.seed if self.seed is not None else torch.initial_seed()

    def _generator(self) -> torch.Generator:
        """A loader's own generator: creating an iterator draws the workers' base seed from it (and a
        shuffling sampler its order), which would otherwise shift the global torch RNG, and with it
        the training noise, whenever a validation or a new epoch starts."""
        return torch.Generator().manual_seed(self._seed() % 2 ** 63)

    def _resumable_loader(self, dataset: Dataset, shuffle: bool) -> ResumableDataLoader:
        """The training loader: its order and augmentations depend on (seed, epoch, position) only,
        and its position is saved in checkpoints, so a resumed run sees the batches the uninterrupted
        run would have seen (ldm.data.resumable)."""
        rank, world_size = self._share()
        return ResumableDataLoader(
            SeededItems(dataset),
            batch_size=self.batch_size,
            # The same seed on every rank: one permutation, split between the ranks without overlap.
            sampler=EpochSampler(len(dataset), shuffle=shuffle, seed=self._seed(), num_replicas=world_size,
                                 rank=rank),
            num_workers=self.num_workers,
            collate_fn=collate_examples,
            worker_init_fn=self._worker_init_fn() if self.use_worker_init_fn else None,
            persistent_workers=self.num_workers > 0,
            pin_memory=self._pin_memory(),
            generator=self._generator(),
        )

    def _pin_memory(self) -> bool:
        """Pinned host memory lets batches reach a CUDA device asynchronously; useless elsewhere."""
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def _train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def _val_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("validation", shuffle=shuffle or self.shuffle_val_dataloader)

    def _test_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("test", shuffle=shuffle or self.shuffle_test_loader)

    def _predict_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("predict", shuffle=shuffle)
