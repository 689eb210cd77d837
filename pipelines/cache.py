"""Loaded bases, shared by every handle that names the same model, source, dtype and device.

The cache is size-bounded (least recently used bases are dropped first) and can be emptied on demand (ComfyUI's
"Unload models", the CLI, tests). A base owns its `WeightPatcher`, so LoRA state never leaks between bases.
"""
from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from .families import get_family
from .lora import WeightPatcher


@dataclass(eq=False)
class LoadedBase:
    spec: object
    source: object
    dtype: torch.dtype
    device: str
    pipe: object
    patcher: WeightPatcher
    bound: dict = field(default_factory=dict)   # (lora path, mtime, size) -> BoundLora
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def family(self):
        return get_family(self.spec.family)

    @property
    def key(self) -> tuple:
        return (self.spec.id, self.source.key, str(self.dtype), self.device)


class BaseCache:
    def __init__(self, max_bases: int = 2):
        self.max_bases = max_bases
        self._bases: OrderedDict = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0  # how many times a base was really loaded (tests and benchmarks read it)

    def get(self, spec, source, dtype: torch.dtype, device: str) -> LoadedBase:
        key = (spec.id, source.key, str(dtype), device)
        with self._lock:
            base = self._bases.get(key)
            if base is not None:
                self._bases.move_to_end(key)
                return base
            family = get_family(spec.family)
            pipe = family.load_pipeline(spec, source, dtype, device)
            base = LoadedBase(spec, source, dtype, device, pipe, WeightPatcher(family.lora_components(pipe)))
            self.loads += 1
            self._bases[key] = base
            while len(self._bases) > max(1, self.max_bases):
                self._bases.popitem(last=False)
            return base

    def bases(self) -> list[LoadedBase]:
        with self._lock:
            return list(self._bases.values())

    def clear(self) -> int:
        with self._lock:
            n = len(self._bases)
            self._bases.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return n


CACHE = BaseCache()
