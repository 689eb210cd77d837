"""The registry's data: one module per family, each exporting `SPECS` (its `ModelSpec`s) and `ORDER` (where its
entries sit in the model list). A new family adds a module here; `registry.py` finds it, so nothing else changes."""
from __future__ import annotations

import importlib
import pkgutil


def all_specs() -> tuple:
    modules = [importlib.import_module(f".{info.name}", __name__) for info in pkgutil.iter_modules(__path__)]
    modules.sort(key=lambda m: (m.ORDER, m.__name__))
    return tuple(spec for m in modules for spec in m.SPECS)
