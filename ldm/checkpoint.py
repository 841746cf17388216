"""Checkpoint I/O that never executes code from the file.

* ``.ckpt``/``.pt``/``.pth``: ``torch.load(weights_only=True)``. Lightning 1.x checkpoints (all
  released CompVis ones) also pickle callbacks, hyper-parameters and numpy scalars, which
  ``weights_only`` rejects; for those a restricted unpickler reads the zip archive itself,
  rebuilds tensors through an allowlist and turns every other pickled object into an inert
  placeholder, so a crafted ``__reduce__`` has nothing to call.
* ``.safetensors``: safetensors.
* Lightning training checkpoints (optimizer states, loops, callback states, RNG states) for
  ``--resume``: :func:`load_training_checkpoint` reads them with ``weights_only=True`` plus the few
  numpy globals that RNG states need, after checking the archive (CRCs) so that a damaged file is
  told apart from one that holds code (:class:`DamagedCheckpointError`, :class:`UnsafeCheckpointError`).
* Saving is atomic (temporary file + ``os.replace``): a crash mid-write leaves the old file intact.
* Loading into a module is strict by default and reports missing/unexpected keys readably.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import struct
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch import nn

__all__ = [
    "ALLOW_MISSING_ENV",
    "CheckpointError",
    "DamagedCheckpointError",
    "LoadReport",
    "UnsafeCheckpointError",
    "allow_missing_checkpoints",
    "atomic_path",
    "download_command",
    "ema_weights",
    "init_from_ckpt",
    "load_into",
    "load_state_dict",
    "load_training_checkpoint",
    "missing_checkpoints_allowed",
    "save_state_dict",
    "verify_checkpoint_file",
]

ALLOW_MISSING_ENV = "LDM_ALLOW_MISSING_CKPT"
_allow_missing: Optional[bool] = None


def allow_missing_checkpoints(value: Optional[bool]) -> Optional[bool]:
    """Make a missing ``ckpt_path`` a warning (random init) instead of an error, process-wide.

    ``None`` defers to the ``LDM_ALLOW_MISSING_CKPT`` environment variable again. Returns the
    previous setting, so callers can restore it.
    """
    global _allow_missing
    previous, _allow_missing = _allow_missing, None if value is None else bool(value)
    return previous


def missing_checkpoints_allowed() -> bool:
    if _allow_missing is not None:
        return _allow_missing
    return os.environ.get(ALLOW_MISSING_ENV, "").strip().lower() in ("1", "true", "yes")


# models/<kind>/<name>/... are where the download scripts put the released checkpoints
_RELEASED = re.compile(r"(?:^|/)models/(first_stage_models|ldm)/([^/]+)/")
_DOWNLOAD_SCRIPTS = {"first_stage_models": "scripts/download_first_stages.sh", "ldm": "scripts/download_models.sh"}


def download_command(path: str | os.PathLike) -> Optional[str]:
    """The command that fetches the released checkpoint expected at ``path`` (a path under
    models/first_stage_models/<name>/ or models/ldm/<name>/), else None."""
    m = _RELEASED.search(os.fspath(path).replace(os.sep, "/"))
    if m is None:
        return None
    kind, name = m.groups()
    return f"bash {_DOWNLOAD_SCRIPTS[kind]} {name}"


def _missing_message(path: str) -> str:
    command = download_command(path)
    fix = (f"Download the released checkpoint with `{command}` (from the repository root), fix the path,"
           if command else "Fix the path,")
    return (f"ckpt_path {path!r} does not exist. {fix} or set {ALLOW_MISSING_ENV}=1 (training: --allow-missing-ckpt; "
            "in Python: ldm.checkpoint.allow_missing_checkpoints(True)) to continue with random weights.")


# -- restricted unpickling of legacy checkpoints ------------------------------------------------------
class _Opaque(dict):
    """Inert stand-in for any pickled object that is not a tensor or a plain container.

    It accepts whatever the pickle stream does to it (construction, state, items, calls) and
    records it, but runs nothing.
    """

    _fqn = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Opaque":
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.args, self.state, self.items_ = args, None, []

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.items_.append(item)

    def extend(self, items: Iterable[Any]) -> None:
        self.items_.extend(items)

    def __call__(self, *args: Any, **kwargs: Any) -> "_Opaque":
        return _Opaque(*args)

    def __repr__(self) -> str:
        return f"<unpickled placeholder for {self._fqn}>"


def _storage_dtype(name: str) -> Optional[torch.dtype]:
    cls = getattr(torch, name, None) if name.endswith("Storage") else None
    dtype = getattr(cls, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else None


_ALLOWED: dict[str, Any] = {
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": torch._utils._rebuild_parameter_with_state,
    "collections.OrderedDict": OrderedDict,
    "torch.Size": torch.Size,
    "torch.device": torch.device,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "builtins.complex": complex,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file, encoding="utf-8")
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        fqn = f"{module}.{name}"
        if fqn in _ALLOWED:
            return _ALLOWED[fqn]
        if module == "torch":
            value = getattr(torch, name, None)
            if isinstance(value, torch.dtype):
                return value
            if _storage_dtype(name) is not None:
                return ("storage-type", name)
        if fqn == "_codecs.encode":  # how protocol-2 pickles spell bytes
            return lambda text, encoding="latin1": str(text).encode(encoding)
        return type(name, (_Opaque,), {"_fqn": fqn, "__module__": __name__})

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, _numel = pid
        if isinstance(storage_type, tuple) and storage_type[0] == "storage-type":
            dtype = _storage_dtype(storage_type[1])
        elif isinstance(storage_type, torch.dtype):
            dtype = storage_type
        else:
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        if key not in self.storages:
            data = self.archive.read(f"{self.prefix}/data/{key}")
            untyped = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8) if data else torch.UntypedStorage(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation notice
                self.storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        return self.storages[key]


def _restricted_load(path: str) -> Any:
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not loadable with weights_only=True and not in torch's zip format "
                         "(pre-1.6 torch.save); re-save it with a recent torch from a trusted environment")
    with zipfile.ZipFile(path) as archive:
        pkl = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
        if pkl is None:
            raise ValueError(f"{path}: zip archive without data.pkl, not a torch checkpoint")
        prefix = pkl[: -len("/data.pkl")]
        byteorder = f"{prefix}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).decode() != "little":
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        with archive.open(pkl) as f:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return _RestrictedUnpickler(f, archive, prefix).load()


def _read_torch_file(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Lightning 1.x checkpoints pickle non-tensor objects; read only their tensors.
        return _restricted_load(path)


# -- Lightning training checkpoints (resume) ----------------------------------------------------------------
class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong with it."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = os.fspath(path), problem
        super().__init__(f"{self.path}: {problem}")


class DamagedCheckpointError(CheckpointError):
    """Empty, truncated or corrupt (e.g. a crash or a full disk while it was copied)."""


class UnsafeCheckpointError(CheckpointError):
    """Intact, but it pickles objects beyond tensors and plain data: loading could run code."""


# What Lightning's RNG states and numpy values in callback states pickle: arrays, scalars and
# dtypes. None of these calls anything but numpy's own constructors.
_NUMPY_SAFE_GLOBALS: list[Any] = [np._core.multiarray._reconstruct, np._core.multiarray.scalar, np.ndarray,
                                  np.dtype] + [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]


def verify_checkpoint_file(path: str | os.PathLike) -> None:
    """Raise :class:`DamagedCheckpointError` unless ``path`` is a complete torch zip archive whose
    members all match their CRC-32 (reads the file once; unpickles nothing)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DamagedCheckpointError(path, "file not found")
    size = os.path.getsize(path)
    if size == 0:
        raise DamagedCheckpointError(path, "empty file (0 bytes)")
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(n.endswith("/data.pkl") for n in archive.namelist()):
                raise DamagedCheckpointError(path, "zip archive without data.pkl: not a torch checkpoint")
            bad = archive.testzip()
    except zipfile.BadZipFile as exc:
        raise DamagedCheckpointError(
            path, f"not a complete torch checkpoint archive ({exc}; {size} bytes): truncated or corrupt") from None
    except (OSError, EOFError, struct.error, zipfile.LargeZipFile, NotImplementedError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise DamagedCheckpointError(path, f"unreadable archive ({type(exc).__name__}: {exc})") from None
    if bad is not None:
        raise DamagedCheckpointError(path, f"corrupt: member {bad!r} does not match its CRC-32")


def load_training_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *, mmap: bool = False) -> Any:
    """A full Lightning checkpoint (optimizer and scheduler states, loop progress, callback states,
    hyper-parameters, RNG states) loaded without unpickling arbitrary objects.

    ``torch.load(weights_only=True)`` admits tensors and plain containers; numpy arrays, scalars and
    dtypes are added for RNG states. The archive is verified first, so an error while unpickling an
    intact archive can only mean content that is not plain data.
    """
    path = os.fspath(path)
    verify_checkpoint_file(path)
    try:
        with torch.serialization.safe_globals(_NUMPY_SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line), str(exc).strip())
        detail = detail.split(". Please use")[0]
        raise UnsafeCheckpointError(
            path, "refusing to load: it pickles objects other than tensors and plain data, and loading them "
            f"could run code ({detail[:300]}). Only resume from checkpoints you trust enough to run; "
            "to keep just the weights of a file you trust, re-save its state_dict.") from None
    except (RuntimeError, EOFError, OSError, ValueError, struct.error) as exc:
        raise DamagedCheckpointError(path, f"cannot be read ({type(exc).__name__}: {str(exc).strip()[:300]})") from None


# -- public API ------------------------------------------------------------------------------------------
def ema_weights(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """``sd`` with each `model.<name>` replaced by its EMA copy `model_ema.<name without dots>` (the
    LitEma layout) where one exists, and how many were replaced."""
    out = dict(sd)
    replaced = 0
    for key in sd:
        if key.startswith("model."):
            ema_key = "model_ema." + key[len("model."):].replace(".", "")
            if ema_key in sd:
                out[key] = sd[ema_key]
                replaced += 1
    return out, replaced


def _ema_to_model(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, replaced = ema_weights(sd)
    if replaced == 0:
        warnings.warn("prefer_ema=True but the checkpoint holds no `model_ema.*` copies of `model.*`; "
                      "using the raw weights", stacklevel=3)
    return out


def load_state_dict(path: str | os.PathLike, *, prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (its "state_dict" entry when there is one), on CPU."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        command = download_command(path)
        raise FileNotFoundError(f"checkpoint not found: {path}" + (f"; download it with `{command}`" if command else ""))
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        obj: Any = load_file(path, device="cpu")
    else:
        obj = _read_torch_file(path)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict (mapping of names to tensors), got {type(obj).__name__}")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError(f"{path}: no tensors found in the checkpoint")
    return _ema_to_model(sd) if prefer_ema else sd


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write to; on success it is synced and moved onto
    ``path`` in one step, on error removed, so ``path`` is never left half-written."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make a rename durable: without it a power cut can undo the rename (best effort; some file
    systems and platforms cannot open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory; the file itself is synced
            os.fsync(fd)
    finally:
        os.close(fd)


def save_state_dict(path: str | os.PathLike, sd: Mapping[str, torch.Tensor]) -> None:
    """Write ``sd`` atomically: ``.safetensors`` as safetensors, else ``{"state_dict": sd}`` via torch."""
    path = os.fspath(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    with atomic_path(path) as tmp:
        if path.endswith(".safetensors"):
            from safetensors.torch import save_file

            # safetensors refuses tensors that share memory; clone makes each independent.
            save_file({k: v.clone() for k, v in tensors.items()}, tmp)
        else:
            torch.save({"state_dict": tensors}, tmp)


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a module."""

    path: str = "<state dict>"
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)   # "key: checkpoint shape vs model shape"
    ignored: list[str] = field(default_factory=list)      # removed by ignore_keys
    dropped: list[str] = field(default_factory=list)      # training-only state the module does not keep
    kept_init: list[str] = field(default_factory=list)    # training-only state absent from the checkpoint

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        lines = [f"{self.path}: loaded {self.loaded} tensors"]
        for label, keys in (("missing in checkpoint", self.missing), ("unexpected in checkpoint", self.unexpected),
                            ("shape mismatch", self.mismatched), ("ignored (ignore_keys)", self.ignored),
                            ("dropped (not kept by this model)", self.dropped),
                            ("not in checkpoint, kept initialisation", self.kept_init)):
            if keys:
                lines.append(f"  {label}: {few(keys)}")
        return "\n".join(lines)


def _has_state(module: nn.Module, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in module.state_dict())


def _training_only_prefixes(module: nn.Module, names: Iterable[str]) -> list[str]:
    """Dotted prefixes of submodules called one of ``names`` (e.g. every `...loss.`)."""
    names = set(names)
    return [f"{n}." for n, _ in module.named_modules() if n and n.rsplit(".", 1)[-1] in names]


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    ignore_keys: Iterable[str] = (),
    path: str = "<state dict>",
    training_only: Iterable[str] = ("loss",),
) -> LoadReport:
    """Load ``state_dict`` into ``module``; raise (when strict) with a readable summary on mismatch.

    Keys starting with an ``ignore_keys`` prefix are removed first. State of ``training_only``
    submodules (the first-stage `loss`) and EMA copies (`model_ema.*`) is dropped when the module
    does not keep any, and kept at its initialisation when the checkpoint has none; both reported.
    """
    report = LoadReport(path=str(path))
    ignore = tuple(ignore_keys)
    sd = {}
    for k, v in state_dict.items():
        if ignore and k.startswith(ignore):
            report.ignored.append(k)
        else:
            sd[k] = v
    own = module.state_dict()
    droppable = _training_only_prefixes(module, training_only) + ["model_ema."]
    for prefix in droppable:
        if not _has_state(module, prefix):
            report.dropped += [k for k in sd if k.startswith(prefix)]
            sd = {k: v for k, v in sd.items() if not k.startswith(prefix)}
        elif prefix != "model_ema." and not any(k.startswith(prefix) for k in sd):
            # e.g. fine-tuning a released (inference) checkpoint with a fresh loss/discriminator
            report.kept_init += [k for k in own if k.startswith(prefix)]
    kept = set(report.kept_init)
    report.missing = [k for k in own if k not in sd and k not in kept]
    report.unexpected = [k for k in sd if k not in own]
    report.mismatched = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
                         for k in sd if k in own and sd[k].shape != own[k].shape]
    if strict and not report.ok:
        raise RuntimeError(f"checkpoint does not match {type(module).__name__}:\n{report}")
    loadable = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    module.load_state_dict(loadable, strict=False)
    report.loaded = len(loadable)
    return report


def init_from_ckpt(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    ignore_keys: Iterable[str] = (),
    strict: bool = True,
    prefer_ema: bool = False,
) -> Optional[LoadReport]:
    """Load a config's ``ckpt_path`` into ``module``; a missing file is an error unless allowed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        message = _missing_message(path)
        if not missing_checkpoints_allowed():
            raise FileNotFoundError(message)
        warnings.warn(f"{message} Continuing with RANDOM weights.", stacklevel=2)
        return None
    report = load_into(module, load_state_dict(path, prefer_ema=prefer_ema), strict=strict,
                       ignore_keys=ignore_keys, path=path)
    if report.dropped or report.kept_init or report.ignored or not report.ok:
        warnings.warn(str(report), stacklevel=2)
    return report
