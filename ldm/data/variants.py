"""Named dataset variants: ``FFHQTrain``, ``ImageNetSRValidation``... are one base class with
some arguments fixed (the split, the data folder) and some defaults changed (random crops for
training, a fixed seed for validation).

Configs name these classes, so each needs a real constructor signature with types and defaults
(``instantiate_from_config`` validates against it). :func:`dataset_variant` derives that
signature from the base's, instead of repeating the base's parameter list in every variant::

    CelebAHQTrain = dataset_variant(FacesHQ, "CelebAHQTrain", fixed={"name": "celebahq", "split": "train"})
    ImageNetSRValidation = dataset_variant(ImageNetSR, "ImageNetSRValidation", fixed={"split": "validation"},
                                           defaults={"random_crop": False, "seed": 0})
"""
from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Mapping
from typing import Any, Optional

__all__ = ["dataset_variant"]


def dataset_variant(base: type,
                    name: str,                                # the class name configs use
                    fixed: Mapping[str, Any],                 # arguments the variant sets (not parameters)
                    defaults: Optional[Mapping[str, Any]] = None,  # parameters whose default changes
                    doc: Optional[str] = None,
                    ) -> type:
    """A subclass of ``base`` named ``name`` whose ``__init__`` takes ``base``'s parameters
    minus ``fixed``, with ``defaults`` replacing the base's defaults.

    The class belongs to the calling module (so it pickles into spawned DataLoader workers when
    assigned to ``name`` there). Passing a fixed argument raises a ValueError naming it.
    """
    defaults = dict(defaults or {})
    base_sig = inspect.signature(base.__init__)
    unknown = (set(fixed) | set(defaults)) - set(base_sig.parameters)
    if unknown:
        raise TypeError(f"{base.__name__}.__init__ has no parameter(s) {sorted(unknown)}")
    params = [p.replace(default=defaults.get(p.name, p.default))
              for p in base_sig.parameters.values() if p.name not in fixed]
    signature = base_sig.replace(parameters=params)
    hints = {k: v for k, v in typing.get_type_hints(base.__init__).items() if k not in fixed}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        clash = sorted(set(kwargs) & set(fixed))
        if clash:
            raise ValueError(f"{name} fixes {', '.join(f'{k}={fixed[k]!r}' for k in clash)}; "
                             f"use {base.__name__} to choose {'it' if len(clash) == 1 else 'them'}")
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments[params[0].name]  # self
        base.__init__(self, **fixed, **arguments)

    module = sys._getframe(1).f_globals.get("__name__", base.__module__)
    __init__.__signature__ = signature
    __init__.__annotations__ = hints
    __init__.__qualname__ = f"{name}.__init__"
    __init__.__module__ = module
    settings = ", ".join(f"{k}={v!r}" for k, v in {**fixed, **defaults}.items())
    namespace = {"__init__": __init__, "__module__": module, "__qualname__": name,
                 "__doc__": doc or f"{base.__name__} with {settings}."}
    return type(name, (base,), namespace)
