"""Model registry: every RecModel subclass in this package, by class name.

Modules are discovered automatically (one file per architecture, as in timm), so a
new model only needs its file; ``seminar-zoo fit --model NAME`` and YAML configs
find it by class name.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Dict, Type

from .base import RecModel

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")


def _all_subclasses(cls):
    for c in cls.__subclasses__():
        yield c
        yield from _all_subclasses(c)


def registry() -> Dict[str, Type[RecModel]]:
    return {c.__name__: c for c in _all_subclasses(RecModel)}


def get_model_class(name: str) -> Type[RecModel]:
    reg = registry()
    key = {k.lower(): k for k in reg}.get(name.lower())
    if key is None:
        raise ValueError(f"unknown model {name!r}; available: {sorted(reg)}")
    return reg[key]
