"""Loaded bases, shared by every handle that names the same model, source, dtype and device.

The cache is size-bounded (least recently used bases are dropped first; `AITK_MAX_CACHED_BASES`, default 2) and
can be released on demand (ComfyUI's "Unload models" / `POST /free`, or ComfyUI needing the GPU memory). A released
base drops its weights at once even while handles still point at it; such a handle transparently loads the base
again on its next render. A base owns its `WeightPatcher`, so LoRA state never leaks between bases.
"""
from __future__ import annotations

import gc
import os
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
    quantization: str | None
    pipe: object
    patcher: WeightPatcher
    bound: dict = field(default_factory=dict)   # (lora path, mtime, size) -> BoundLora
    lock: threading.RLock = field(default_factory=threading.RLock)
    released: bool = False

    def release(self) -> None:
        """Drop the weights now (handles may outlive the cache entry; they reload on their next render)."""
        with self.lock:
            self.released = True
            self.pipe = None
            self.patcher = None
            self.bound = {}

    @property
    def family(self):
        return get_family(self.spec)

    @property
    def key(self) -> tuple:
        return (self.spec.id, self.source.key, str(self.dtype), self.device, self.quantization)


class BaseCache:
    def __init__(self, max_bases: int | None = None):
        self.max_bases = max_bases or int(os.environ.get("AITK_MAX_CACHED_BASES", "2"))
        self._bases: OrderedDict = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0  # how many times a base was really loaded (tests and benchmarks read it)

    def get(self, spec, source, dtype: torch.dtype, device: str, quantization: str | None = None) -> LoadedBase:
        """The cached base for these keys, loading it when missing. A quantized base (`quantization`: an ai-toolkit
        qtype) is cached separately from the unquantized one."""
        key = (spec.id, source.key, str(dtype), device, quantization)
        with self._lock:
            base = self._bases.get(key)
            if base is not None:
                self._bases.move_to_end(key)
                return base
            family = get_family(spec)
            pipe = family.load(spec, source, dtype, device, quantization)
            base = LoadedBase(spec, source, dtype, device, quantization, pipe,
                              WeightPatcher(family.lora_components(pipe)))
            self.loads += 1
            self._bases[key] = base
            while len(self._bases) > max(1, self.max_bases):
                self._bases.popitem(last=False)[1].release()
            return base

    def bases(self) -> list[LoadedBase]:
        with self._lock:
            return list(self._bases.values())

    def release(self, device: str | None = None) -> int:
        """Release every cached base (or those on `device`); returns how many were released."""
        with self._lock:
            keys = [k for k, b in self._bases.items() if device is None or b.device == device]
            for key in keys:
                self._bases.pop(key).release()
        if keys:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return len(keys)


CACHE = BaseCache()
