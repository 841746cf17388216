"""A latent cache: the frozen first stage's encodings E(x), computed once and trained from.

The first stage is frozen while the diffusion model trains (paper Sec. 3.1-3.2), so encoding every
batch again is wasted work. ``scripts/cache_latents.py`` writes, per split, shards holding

* KL first stages: the posterior's mean and std, so that each training step still draws
  z ~ q(z|x) = N(mean, std^2) exactly as on-the-fly training does (paper Sec. 3.1, App. G);
* VQ first stages: the encoder output LatentDiffusion trains on (before the codebook lookup:
  the quantisation is absorbed into the decoder, paper Sec. 3.1);
* a frozen conditioning encoder's output τ(y), when it can be cached (no classifier-free-guidance
  dropout, which acts on y before τ);
* the batch's other keys the model reads (the condition, a mask) and its scalars and strings.

Two shard formats, chosen with ``--format`` and recorded per split in ``manifest.json``:

* ``pt`` (default): ``<split>-00000.pt``, one ``torch.save`` of column tensors per shard, read
  memory-mapped;
* ``tar``: WebDataset-style ``<split>/shard-00000.tar``. Example i of the split is the sample
  with key ``%09d`` % i: ``<key>.<column>.npy`` per tensor column (``latent_mean``, ``latent_std``
  or ``latent``, ``latent_cond``, tensor keys of the batch such as ``class_label``) and
  ``<key>.json`` with the other kept keys (strings, None). Standard readers iterate them (e.g.
  ``webdataset.WebDataset(urls).decode()``: ``__key__``, ``latent_mean.npy``, ``json``, ...); here
  :class:`CachedLatents` indexes the members once (headers only, ``ldm.data.laion.index_tar``) and
  reads them by offset, map-style, so the rank-aware sampler splits and resumes them as any
  dataset. A member that does not decode, or has another shape or dtype than the manifest
  records, is skipped and counted in ``skipped`` (ldm.data.skipping); a shard cut short keeps its
  intact examples and is listed in ``damaged_shards``, the examples lost counted in ``left_out``.

``main.py --latent-cache DIR`` swaps the data splits for :class:`CachedLatents` after checking the
cache's fingerprint (first-stage weights and config, conditioning encoder, data config) against
the run's, so a changed autoencoder or dataset is an error naming what changed, never a silent mix.
"""
from __future__ import annotations

import bisect
import copy
import hashlib
import io
import json
import os
import tarfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from ldm.checkpoint import atomic_path
from ldm.config.errors import ConfigError
from ldm.data.image_io import BadImageError
from ldm.data.laion import index_tar
from ldm.data.skipping import BadImageWarning, SkipBadImages

__all__ = ["CachedEncoder", "CachedLatents", "CachedPosterior", "build_cache", "cached_condition", "cached_data_config",
           "cached_latent", "fingerprint", "check_deterministic"]

VERSION = 1
MANIFEST = "manifest.json"
FORMATS = ("pt", "tar")  # shard formats (module doc); a split without "format" is "pt"
MEAN_KEY, STD_KEY = "latent_mean", "latent_std"  # KL posterior N(mean, std^2)
LATENT_KEY = "latent"                              # VQ encoder output
COND_KEY = "latent_cond"                           # τ(y) of a frozen conditioning encoder
CACHE_KEYS = (MEAN_KEY, STD_KEY, LATENT_KEY, COND_KEY)
FINGERPRINT_NAMES = {
    "first_stage_weights": "the first stage's weights (model.params.first_stage_config.params.ckpt_path)",
    "first_stage_config": "model.params.first_stage_config",
    "cond_stage": "the frozen conditioning encoder (model.params.cond_stage_config or its weights)",
    "data": "the data config (data.params.train / data.params.validation)",
    "keys": "model.params.first_stage_key / cond_stage_key / concat_mask_key",
}


# ---------------------------------------------------------------- reading latents from a batch

class CachedPosterior:
    """q(z|x) = N(mean, std^2) from the cache; ``sample`` draws like DiagonalGaussianDistribution."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        # Same draw (shape, device, dtype, RNG call) as DiagonalGaussianDistribution.sample, so a
        # seeded step gives the same z from the cache as from the encoder.
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean


class CachedEncoder:
    """Stands in for the autoencoder where a cached batch's encoding is needed as ``encode(x)``."""

    def __init__(self, posterior: "CachedPosterior | torch.Tensor"):
        self.posterior = posterior

    def encode(self, x: Any) -> "CachedPosterior | torch.Tensor":
        return self.posterior


def cached_latent(batch: Mapping, bs: Optional[int] = None,
                  device: Optional[torch.device] = None) -> "CachedPosterior | torch.Tensor | None":
    """The first-stage encoding a cached batch carries (None for a batch of images)."""
    if not isinstance(batch, Mapping):
        return None
    if MEAN_KEY in batch:
        mean, std = batch[MEAN_KEY][:bs], batch[STD_KEY][:bs]
        return CachedPosterior(mean.to(device).float(), std.to(device).float())
    if LATENT_KEY in batch:
        return batch[LATENT_KEY][:bs].to(device).float()
    return None


def cached_condition(batch: Mapping, bs: Optional[int] = None,
                     device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """τ(y) of a frozen conditioning encoder, when the cache holds it."""
    if not isinstance(batch, Mapping) or COND_KEY not in batch:
        return None
    return batch[COND_KEY][:bs].to(device)


# ---------------------------------------------------------------- fingerprint

def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else copy.deepcopy(node)


def caches_condition(model: Any) -> bool:
    """Whether τ(y) can be stored: a frozen encoder whose input is not dropped while training."""
    return (model.model.conditioning_key is not None and not model.cond_stage_trainable
            and float(getattr(model, "ucg_rate", 0.0)) == 0.0 and model.cond_stage_model is not None)


def fingerprint(model: Any, config: DictConfig) -> dict[str, str]:
    """What the cache's contents depend on, one hash per part (so a mismatch can be named)."""
    fs_config = _plain(config.model.params.first_stage_config)
    fs_config.get("params", {}).pop("ckpt_path", None)  # the weights are hashed; where they lie is not
    data = _plain(config.data.params)
    parts = {
        "first_stage_weights": _weights_hash(model.first_stage_model),
        "first_stage_config": _hash(fs_config),
        "cond_stage": (_hash(_plain(config.model.params.get("cond_stage_config")),
                             _weights_hash(model.cond_stage_model)) if caches_condition(model) else "not cached"),
        "data": _hash({s: data.get(s) for s in ("train", "validation")}),
        "keys": _hash(model.first_stage_key, model.cond_stage_key, getattr(model, "concat_mask_key", None)),
    }
    return parts


# ---------------------------------------------------------------- writing

def check_deterministic(dataset: Dataset, key: str, where: str, probes: int = 3) -> None:
    """Refuse datasets whose images change between reads of one index (random crops, flips): a
    cache would freeze one draw of the augmentation for the whole run."""
    for i in range(min(probes, len(dataset))):
        a, b = dataset[i], dataset[i]
        if key not in a:
            raise ConfigError(where, f"examples have no key {key!r} (keys: {sorted(a)}); check first_stage_key")
        if not np.array_equal(np.asarray(a[key]), np.asarray(b[key])):
            raise ConfigError(where, f"example {i} differs between two reads of {key!r}: the dataset augments "
                                     "at random (crops, flips). A latent cache would freeze one draw; turn the "
                                     "augmentation off (e.g. random_crop: false, flip_p: 0) or train without "
                                     "--latent-cache")


def _kept_keys(example: Mapping, model: Any, extra: Iterable[str]) -> list[str]:
    """The keys stored beside the latents: what the model reads, scalars and strings, and ``extra``."""
    needed = {model.cond_stage_key, getattr(model, "concat_mask_key", None),
              getattr(model.cond_stage_model, "key", None), *extra}
    keep = []
    for k, v in example.items():
        if k == model.first_stage_key:
            continue
        if k in needed or isinstance(v, (str, int, float, bool, np.integer, np.floating)):
            keep.append(k)
    missing = set(extra) - set(example)
    if missing:
        raise ValueError(f"--keep {sorted(missing)}: not in the dataset's examples (keys: {sorted(example)})")
    return sorted(keep)


class _ShardWriter:
    """``pt`` shards: the columns of ``shard_size`` examples, concatenated, in one ``torch.save``."""

    def __init__(self, root: Path, split: str, shard_size: int):
        self.root, self.split, self.shard_size = root, split, shard_size
        self.buffer: dict[str, list] = {}
        self.count = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, columns: dict[str, Any]) -> None:
        for k, v in columns.items():
            self.buffer.setdefault(k, []).append(v)
        self.count += len(next(iter(columns.values())))
        if self.count >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.count:
            return
        shard = {k: torch.cat(v) if isinstance(v[0], torch.Tensor) else [x for part in v for x in part]
                 for k, v in self.buffer.items()}
        name = self.write(shard, sum(s["length"] for s in self.shards))
        self.shards.append({"file": name, "length": self.count})
        self.buffer, self.count = {}, 0

    def write(self, shard: dict[str, Any], first: int) -> str:
        """Write one shard (examples ``first``, ``first + 1``, ... of the split); its file name."""
        name = f"{self.split}-{len(self.shards):05d}.pt"
        with atomic_path(self.root / name) as tmp:
            torch.save(shard, tmp)
        return name

    def entry(self) -> dict[str, Any]:
        return {"format": "pt"}


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


class _TarShardWriter(_ShardWriter):
    """``tar`` shards, WebDataset-style (module doc): per example ``<key>.<column>.npy`` for each
    tensor column and ``<key>.json`` for the others."""

    def __init__(self, root: Path, split: str, shard_size: int):
        super().__init__(root, split, shard_size)
        (root / split).mkdir(parents=True, exist_ok=True)
        for old in (root / split).glob("shard-*.tar"):  # a rebuild with fewer shards leaves none behind
            old.unlink()
        self.columns: dict[str, Any] = {}  # column -> {"shape", "dtype"} of one example's array, or "json"

    def write(self, shard: dict[str, Any], first: int) -> str:
        arrays, others = {}, sorted(k for k, v in shard.items() if not isinstance(v, torch.Tensor))
        for k, v in shard.items():
            if not isinstance(v, torch.Tensor):
                continue
            if "/" in k:
                raise ValueError(f"--format tar: batch key {k!r} cannot be a tar member name; use --format pt")
            try:
                arrays[k] = v.numpy()
            except TypeError as exc:  # bfloat16 and other dtypes .npy cannot hold
                raise ValueError(f"--format tar: batch key {k!r} has dtype {v.dtype} ({exc}); use --format pt") \
                    from None
            self.columns[k] = {"shape": list(arrays[k].shape[1:]), "dtype": arrays[k].dtype.str}
        self.columns.update({k: "json" for k in others})
        name = f"{self.split}/shard-{len(self.shards):05d}.tar"
        with atomic_path(self.root / name) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for j in range(self.count):
                key = f"{first + j:09d}"
                members = [(f"{key}.{k}.npy", _npy(a[j])) for k, a in sorted(arrays.items())]
                if others:
                    try:
                        meta = json.dumps({k: shard[k][j] for k in others})
                    except TypeError as exc:
                        raise ValueError(f"--format tar: a kept batch key of {others} is neither a tensor nor "
                                         f"JSON ({exc}); use --format pt") from None
                    members.append((f"{key}.json", meta.encode()))
                for member, data in members:
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return name

    def entry(self) -> dict[str, Any]:
        return {"format": "tar", "columns": self.columns}


def _columns(batch: Mapping, keys: list[str]) -> dict[str, Any]:
    out = {}
    for k in keys:
        v = batch[k]
        out[k] = v.cpu() if isinstance(v, torch.Tensor) else list(v)
    return out


@torch.no_grad()
def encode_split(model: Any, dataset: Dataset, split: str, root: Path, batch_size: int, num_workers: int,
                 shard_size: int, extra_keys: Iterable[str] = (), format: str = "pt") -> dict[str, Any]:
    """Encode one split into shards; returns its manifest entry."""
    from tqdm import tqdm

    from ldm.data.base import collate_examples
    from ldm.models.diffusion.ddpm import DDPM

    check_deterministic(dataset, model.first_stage_key, f"data.params.{split}")
    keys = _kept_keys(dataset[0], model, extra_keys)
    writer = (_TarShardWriter if format == "tar" else _ShardWriter)(root, split, shard_size)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_examples)
    kind = None
    for batch in tqdm(loader, desc=f"encoding {split}", unit="batch"):
        x = DDPM.get_input(model, batch, model.first_stage_key).to(model.device)
        posterior = model.encode_first_stage(x)
        columns = _columns(batch, keys)
        if isinstance(posterior, torch.Tensor):  # VQ: the pre-quantisation latent LatentDiffusion uses
            kind = "vq"
            columns[LATENT_KEY] = posterior.float().cpu()
        else:
            kind = "kl"
            columns[MEAN_KEY], columns[STD_KEY] = posterior.mean.float().cpu(), posterior.std.float().cpu()
        if caches_condition(model):
            xc = model._raw_condition(batch, model.cond_stage_key, x)
            c = model.get_learned_conditioning(xc if isinstance(xc, (dict, list)) else xc.to(model.device))
            if isinstance(c, torch.Tensor):
                columns[COND_KEY] = c.cpu()
        writer.add(columns)
    writer.flush()
    return {"length": sum(s["length"] for s in writer.shards), "kind": kind, "shards": writer.shards,
            **writer.entry()}


def build_cache(model: Any, config: DictConfig, out: str | os.PathLike, splits: Iterable[str] = ("train", "validation"),
                batch_size: int = 32, num_workers: int = 0, shard_size: int = 8192,
                extra_keys: Iterable[str] = (), format: str = "pt") -> Path:
    """Encode the config's ``splits`` with the model's frozen first stage into ``out``, as ``format``
    shards (``pt`` or ``tar``, module doc)."""
    from ldm.util import instantiate_from_config

    if format not in FORMATS:
        raise ValueError(f"--format {format!r}: the latent cache is written as one of {FORMATS}")
    if model.cond_stage_key == model.first_stage_key and model.model.conditioning_key is not None:
        raise ConfigError("model.params.cond_stage_key", f"{model.cond_stage_key!r} is the first-stage key: the "
                          "condition is the image itself, which a latent cache does not keep")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    if (root / MANIFEST).exists():
        (root / MANIFEST).unlink()  # the old cache is invalid from here on
    manifest: dict[str, Any] = {"version": VERSION, "fingerprint": fingerprint(model, config), "splits": {}}
    for split in splits:
        cfg = config.data.params.get(split)
        if cfg is None:
            raise ConfigError(f"data.params.{split}", "no such split in the data config")
        dataset = instantiate_from_config(cfg, path=f"data.params.{split}")
        manifest["splits"][split] = encode_split(model, dataset, split, root, batch_size, num_workers,
                                                 shard_size, extra_keys, format)
    with atomic_path(root / MANIFEST) as tmp:  # written last: a cache without it is incomplete
        Path(tmp).write_text(json.dumps(manifest, indent=1))
    return root


# ---------------------------------------------------------------- training from the cache

def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ConfigError("--latent-cache", f"{root}: no {MANIFEST} (not a latent cache, or its writing did not "
                          "finish); build it with scripts/cache_latents.py")
    manifest = json.loads(path.read_text())
    if manifest.get("version") != VERSION:
        raise ConfigError("--latent-cache", f"{path}: cache version {manifest.get('version')}, this code reads "
                          f"{VERSION}; rebuild it with scripts/cache_latents.py")
    return manifest


def cached_data_config(config: DictConfig, model: Any, root: str | os.PathLike) -> DictConfig:
    """``config.data`` with its train/validation splits read from the cache at ``root``, after
    checking that the cache was made from this first stage, conditioning encoder and data."""
    manifest = read_manifest(root)
    now, then = fingerprint(model, config), manifest["fingerprint"]
    changed = [FINGERPRINT_NAMES.get(k, k) for k in sorted(set(now) | set(then)) if now.get(k) != then.get(k)]
    if changed:
        raise ConfigError("--latent-cache", f"{root} is out of date: changed since it was written: "
                          f"{'; '.join(changed)}. Rebuild it with scripts/cache_latents.py")
    data = copy.deepcopy(config.data)
    for split in ("train", "validation"):
        if data.params.get(split) is None:
            continue
        if split not in manifest["splits"]:
            raise ConfigError(f"data.params.{split}", f"the latent cache {root} has no {split} split "
                              f"(it has {sorted(manifest['splits'])})")
        data.params[split] = {"target": "ldm.data.latent_cache.CachedLatents",
                              "params": {"root": str(root), "split": split}}
    return data


class CachedLatents(SkipBadImages, Dataset):
    """One split of a latent cache: examples with the latents and the kept keys of the batch, from
    ``pt`` or ``tar`` shards (whichever the manifest records). An unusable ``tar`` member is
    skipped (``None``, dropped from its batch) and counted, as for image folders."""

    item_noun = "cached example"

    def __init__(self,
                 root: str,   # directory written by scripts/cache_latents.py
                 split: str,  # train | validation
                 ):
        super().__init__()
        manifest = read_manifest(root)
        if split not in manifest["splits"]:
            raise ConfigError("--latent-cache", f"{root} has no split {split!r} (it has {sorted(manifest['splits'])})")
        entry = manifest["splits"][split]
        self.root, self.format = str(root), entry.get("format", "pt")
        self.files = [s["file"] for s in entry["shards"]]
        missing = [f for f in self.files if not (Path(root) / f).is_file()]
        if missing:
            raise ConfigError("--latent-cache", f"{root}: shard(s) {missing} of split {split!r} are missing; "
                              "copy the whole cache or rebuild it with scripts/cache_latents.py")
        self.left_out, self.damaged_shards = 0, []
        if self.format == "pt":
            # Memory-mapped: opening is cheap and shuffled reads touch only the pages they need.
            self.shards = [torch.load(Path(root) / f, map_location="cpu", weights_only=True, mmap=True)
                           for f in self.files]
            self.starts = list(np.cumsum([0] + [s["length"] for s in entry["shards"]]))
            self.length = int(entry["length"])
        elif self.format == "tar":
            self._index_tar(entry)
        else:
            raise ConfigError("--latent-cache", f"{Path(root) / MANIFEST}: split {split!r} has format "
                              f"{self.format!r}; this code reads {FORMATS}")

    def _index_tar(self, entry: Mapping) -> None:
        """One row per complete sample: shard, key, then (offset, size) of each member."""
        self.columns = entry["columns"]
        self.arrays = sorted(k for k, v in self.columns.items() if v != "json")
        self.members = [f".{k}.npy" for k in self.arrays] + ([".json"] if len(self.arrays) < len(self.columns) else [])
        rows = []
        for s, file in enumerate(self.files):
            samples, problem = index_tar(os.path.join(self.root, file))
            if problem:
                self.damaged_shards.append(problem)
                warnings.warn(f"latent cache shard {problem}; its intact examples are used", BadImageWarning,
                              stacklevel=3)
            for key in sorted(samples):
                parts = samples[key]
                if key.isdigit() and all(m in parts for m in self.members):
                    rows.append((s, int(key), *(v for m in self.members for v in parts[m])))
        if not rows:
            raise ValueError(f"{self.root}: the latent cache's tar shards hold no complete example")
        self._index = np.array(rows, dtype=np.int64)  # one compact array: cheap to share with workers
        self.length = len(rows)
        self.left_out = max(0, int(entry["length"]) - self.length)  # lost to damage, or incomplete

    def __len__(self) -> int:
        return self.length

    def path(self, j: int) -> str:
        """``<shard>#<key>`` (tar) or ``<shard>#<j>`` (pt): what warnings and ``skipped`` call example j."""
        if self.format == "tar":
            return f"{os.path.join(self.root, self.files[self._index[j, 0]])}#{self._index[j, 1]:09d}"
        return f"{os.path.join(self.root, self.files[bisect.bisect_right(self.starts, j) - 1])}#{j}"

    def load_example(self, j: int) -> dict[str, Any]:
        if self.format == "tar":
            return self._load_tar(j)
        s = bisect.bisect_right(self.starts, j) - 1
        shard, j = self.shards[s], j - self.starts[s]
        return {k: v[j].clone() if isinstance(v, torch.Tensor) else v[j] for k, v in shard.items()}

    def _load_tar(self, j: int) -> dict[str, Any]:
        row = [int(v) for v in self._index[j]]
        with open(os.path.join(self.root, self.files[row[0]]), "rb") as f:  # a fresh handle per worker
            data = []
            for m in range(len(self.members)):
                f.seek(row[2 + 2 * m])
                data.append(f.read(row[3 + 2 * m]))
        example: dict[str, Any] = {}
        for member, raw in zip(self.members, data):
            try:
                if member == ".json":
                    meta = json.loads(raw)
                    example.update({k: meta[k] for k, v in self.columns.items() if v == "json"})
                    continue
                array = np.load(io.BytesIO(raw), allow_pickle=False)
                spec = self.columns[member[1:-4]]
                if list(array.shape) != spec["shape"] or array.dtype.str != spec["dtype"]:
                    raise ValueError(f"{array.dtype.str}{list(array.shape)}, the manifest says "
                                     f"{spec['dtype']}{spec['shape']}")
                example[member[1:-4]] = torch.from_numpy(array.copy())
            except (ValueError, KeyError, TypeError, EOFError, OSError) as exc:
                raise BadImageError(self.path(j), f"corrupt member {member} ({exc})") from None
        return example
