"""One module per model family. A family module provides:

- `load_pipeline(spec, source, dtype, device)` → a Diffusers pipeline with every component in `dtype` on `device`;
- `lora_components(pipe)` → {component name: nn.Module} the LoRA engine may patch;
- `generate(spec, pipe, request, sampler=None, on_step=None)` → list of PIL images (the preview's pixels).

Families are found by the registry's `family` name, so adding one needs no change here.
"""
from __future__ import annotations

import importlib


def get_family(name: str):
    return importlib.import_module(f".{name}", __name__)
