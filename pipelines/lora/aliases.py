"""LoRA module names → where they apply: `(component, module path, slice)` targets, from the family's name lists.

A family says, per component, which names a file may give each layer (`Family.module_names`: its own module paths,
plus e.g. SGM/LDM names or BFL names). This module adds the file prefixes of the registry's `LoraLayout`:
- kohya: `<prefix>_<name with . → _>` (`lora_unet_down_blocks_0_…`, `lora_unet_double_blocks_0_img_attn_qkv`);
- peft: `<prefix>.<name>` (`transformer.transformer_blocks.0.attn.to_q`, `diffusion_model.double_blocks.0…`).

A target may take a slice: `rows` are the rows of the file module's delta that go to this layer (a fused BFL `qkv`
or `linear1` file module split over `to_q/to_k/to_v/proj_mlp`); `into` are the rows of the layer's weight that the
delta fills (a split file module applied onto a fused layer).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Alias:
    component: str
    path: str
    rows: slice | None = None   # rows of the file module's delta this layer takes (None: all of them)
    into: slice | None = None   # rows of this layer's weight the delta fills (None: the whole weight)


def weighted_paths(module: torch.nn.Module) -> list[str]:
    """Paths of the modules that hold a weight tensor (the layers a LoRA can patch)."""
    return [n for n, m in module.named_modules() if n and isinstance(getattr(m, "weight", None), torch.Tensor)]


def row_splits(module: torch.nn.Module, parts) -> tuple[Alias, ...]:
    """Aliases splitting one fused file module over `parts` = [(component, path)] in order: each takes as many rows
    as its layer has outputs (BFL `qkv` → to_q, to_k, to_v; `linear1` → to_q, to_k, to_v, proj_mlp)."""
    out, start = [], 0
    for component, path in parts:
        rows = int(module.get_submodule(path).weight.shape[0])
        out.append(Alias(component, path, rows=slice(start, start + rows)))
        start += rows
    return tuple(out)


def prefixed_index(names: dict, layout) -> dict[str, tuple[Alias, ...]]:
    """{component: {name: aliases}} → {file module name with each of the layout's prefixes: aliases}. A module's
    own path wins over another name that happens to collide with it."""
    kohya: dict = {}
    for prefix, comp in layout.kohya_prefixes.items():
        kohya.setdefault(comp, []).append(prefix)
    peft: dict = {}
    for prefix, comp in layout.peft_prefixes.items():
        peft.setdefault(comp, []).append(prefix)
    index: dict = {}
    for comp, table in names.items():
        own = sorted(table, key=lambda name: not _is_own(table[name], name))
        for name in own:
            aliases = table[name]
            for prefix in kohya.get(comp, ()):
                index.setdefault(f"{prefix}_{name.replace('.', '_')}", aliases)
            for prefix in peft.get(comp, ()):
                index.setdefault(f"{prefix}.{name}", aliases)
    return index


def _is_own(aliases, name) -> bool:
    return len(aliases) == 1 and aliases[0].path == name and aliases[0].rows is None and aliases[0].into is None
