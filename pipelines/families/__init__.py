"""One module per model family; each exports `VARIANTS = {variant: Family subclass}` (see `base.py`).

Families are found by the registry's `family` and `variant` names, so adding one needs no change here.
"""
from __future__ import annotations

import importlib
from functools import lru_cache


@lru_cache(maxsize=None)
def _family(module: str, variant: str):
    return importlib.import_module(f".{module}", __name__).VARIANTS[variant]()


def get_family(spec):
    """The Family object of a registry entry."""
    return _family(spec.family, spec.variant)
