"""Name -> model class registry. A method registers itself with ``@register_model("name")``.

Method modules are imported lazily by name (``faceage.models.<name>``), so adding a method means adding
one file and listing it in ``_MODULES``.
"""

from __future__ import annotations

import importlib

# Registered name -> module that defines it.
_MODULES: dict[str, str] = {
    "ragan": "faceage.models.ragan",
    "acgan": "faceage.models.acgan",
    "cycle": "faceage.models.cycle",
    "agecgan": "faceage.models.agecgan",
}
_REGISTRY: dict[str, type] = {}


def register_model(name: str):
    """Class decorator registering a face-aging method under ``name``."""

    def wrap(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return wrap


def known_models() -> list[str]:
    return sorted(set(_MODULES) | set(_REGISTRY))


def get_model(name: str) -> type:
    """The model class registered as ``name``; an unknown name lists the known ones."""
    if name not in _REGISTRY and name in _MODULES:
        importlib.import_module(_MODULES[name])
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(known_models()) or 'none'}")
    return _REGISTRY[name]
