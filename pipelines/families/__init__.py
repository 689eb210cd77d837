"""One module per model family. A family module provides:

- `load_pipeline(spec, source, dtype, device)` → a Diffusers pipeline with every component in `dtype` on `device`;
- `lora_components(pipe)` → {component name: nn.Module} the LoRA engine may patch;
- `generate(spec, pipe, request, sampler=None, on_step=None)` → the pipeline's float pixels [B, H, W, 3] in 0..1
  (its `output_type="np"`); the engine checks them and rounds them to 8 bits as the pipeline's PIL output does.

Families are found by the registry's `family` name, so adding one needs no change here.
"""
from __future__ import annotations

import importlib


def get_family(name: str):
    return importlib.import_module(f".{name}", __name__)
