"""Start-up validation of `target:`/`params:` trees against the constructors they name.

Every node is checked before anything is built, so a typo deep inside
``model.params.first_stage_config.params.ddconfig`` fails in a second with its path, not after a
model has half-loaded. Checks: the target resolves (and is trusted), every given parameter is
accepted, every required parameter is given, and values match the constructor's annotations.
"""
from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from ldm.config.errors import ConfigError
from ldm.config.targets import canonical_target, get_obj_from_str

SENTINELS = ("__is_first_stage__", "__is_unconditional__")


def _init_parameters(obj: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """Keyword parameters a callable accepts; the flag says whether it accepts any keyword.

    A class whose ``__init__`` forwards ``**kwargs`` to its parent accepts the parent's parameters
    too, so we follow the MRO until a constructor that does not forward.
    """
    callables = [c.__init__ for c in obj.__mro__ if "__init__" in vars(c)] if inspect.isclass(obj) else [obj]
    params: dict[str, inspect.Parameter] = {}
    for fn in callables:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return params, True
        forwards = False
        for name, p in sig.parameters.items():
            if name == "self" or p.kind == p.VAR_POSITIONAL:
                continue
            if p.kind == p.VAR_KEYWORD:
                forwards = True
                continue
            params.setdefault(name, p)
        if not forwards:
            return params, False
        if fn in (object.__init__,):
            break
    return params, inspect.isclass(obj) and obj.__module__.split(".")[0] != "ldm"


def _hints(obj: Any) -> dict[str, Any]:
    fns = [c.__init__ for c in obj.__mro__ if "__init__" in vars(c)] if inspect.isclass(obj) else [obj]
    hints: dict[str, Any] = {}
    for fn in fns:
        try:
            for k, v in typing.get_type_hints(fn).items():
                hints.setdefault(k, v)
        except Exception:  # unresolved forward references: skip type checks for that constructor
            continue
    return hints


def _type_ok(value: Any, hint: Any) -> bool:
    """Lenient structural check of a YAML value against an annotation; unknown hints pass."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if isinstance(value, str) and value in SENTINELS:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    base = origin or hint
    if not inspect.isclass(base):
        return True
    if issubclass(base, Mapping):
        return isinstance(value, (Mapping, DictConfig))
    if issubclass(base, (list, tuple)) or base is Sequence:
        if not isinstance(value, (list, tuple, ListConfig)):
            return False
        args = typing.get_args(hint)
        if args and (base is not tuple or (len(args) == 2 and args[1] is Ellipsis)):
            return all(_type_ok(v, args[0]) for v in value)
        return True
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_params(obj: Any, params: Mapping | None, path: str) -> None:
    """Raise :class:`ConfigError` if ``params`` do not fit the constructor of ``obj``."""
    params = {} if params is None else params
    if not isinstance(params, (Mapping, DictConfig)):
        raise ConfigError(f"{path}.params", f"params must be a mapping, got {type(params).__name__}")
    accepted, open_kwargs = _init_parameters(obj)
    name = getattr(obj, "__qualname__", repr(obj))
    if not open_kwargs:
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ConfigError(
                f"{path}.params.{unknown[0]}",
                f"unexpected parameter(s) {unknown} for {name}; it accepts: {sorted(accepted)}",
            )
    missing = [n for n, p in accepted.items() if p.default is p.empty and p.kind != p.VAR_KEYWORD and n not in params]
    if missing:
        raise ConfigError(f"{path}.params", f"missing required parameter(s) {missing} for {name}")
    hints = _hints(obj)
    for key, value in params.items():
        hint = hints.get(key)
        if hint is not None and not _type_ok(value, hint):
            raise ConfigError(
                f"{path}.params.{key}",
                f"expected {_describe(hint)} for {name}({key}=...), got {type(value).__name__} {value!r}",
            )


def _is_node(value: Any) -> bool:
    return isinstance(value, (Mapping, DictConfig)) and "target" in value


def check_config_tree(config: Any, path: str = "") -> None:
    """Validate every `target:`/`params:` node in ``config`` (a mapping, list or OmegaConf node)."""
    if isinstance(config, (DictConfig, ListConfig)):
        config = OmegaConf.to_container(config, resolve=True)
    _walk(config, path)


def _walk(value: Any, path: str) -> None:
    if _is_node(value):
        target = value["target"]
        obj = get_obj_from_str(target, path=f"{path}.target" if path else "target")
        params = value.get("params")
        if params is not None and not isinstance(params, Mapping):
            raise ConfigError(f"{path}.params" if path else "params",
                              f"params must be a mapping, got {type(params).__name__} {params!r}")
        if canonical_target(target).startswith("ldm."):
            check_params(obj, params, path or "<root>")
        for key, child in (params or {}).items():
            _walk(child, f"{path}.params.{key}" if path else f"params.{key}")
        return
    if isinstance(value, Mapping):
        for key, child in value.items():
            _walk(child, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, child in enumerate(value):
            _walk(child, f"{path}[{i}]")
