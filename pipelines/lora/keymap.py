"""Map LoRA module names to the pipeline's own modules, driven by the model's module tree (never by guessing).

For each component the layout names (kohya `lora_unet`, `lora_te1` …; peft `unet.`, `text_encoder.` …), every
module that has a weight is indexed under the names a file may use for it:
- kohya: `<prefix>_<module path with . → _>`, plus the original SGM/LDM name for UNets when the layout allows it;
- peft: `<prefix>.<module path>`;
- CLIP text encoders with and without the `text_model.` level (transformers ≥5.2x flattened CLIPTextModel, while
  ai-toolkit's pinned transformers 5.5 still had it).
"""
from __future__ import annotations

import torch

from .sgm_names import sgm_unet_names

TEXT_MODEL = "text_model."


def _alias_paths(path: str, is_text: bool) -> list[str]:
    if not is_text:
        return [path]
    if path.startswith(TEXT_MODEL):
        return [path, path[len(TEXT_MODEL):]]
    return [path, TEXT_MODEL + path]


def build_index(components: dict, layout) -> dict:
    """name as a file may write it -> (component name, module path as in the live model)."""
    index = {}
    kohya_by_comp = {}
    for prefix, comp in layout.kohya_prefixes.items():
        kohya_by_comp.setdefault(comp, []).append(prefix)
    peft_by_comp = {}
    for prefix, comp in layout.peft_prefixes.items():
        peft_by_comp.setdefault(comp, []).append(prefix)
    for comp, module in components.items():
        if module is None:
            continue
        is_text = comp.startswith("text_encoder")
        paths = [n for n, m in module.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)]
        for path in paths:
            for alias in _alias_paths(path, is_text):
                for prefix in kohya_by_comp.get(comp, ()):
                    index[f"{prefix}_{alias.replace('.', '_')}"] = (comp, path)
                for prefix in peft_by_comp.get(comp, ()):
                    index[f"{prefix}.{alias}"] = (comp, path)
        if comp == "unet" and layout.sgm_unet:
            for path, sgm in sgm_unet_names(module.config, paths).items():
                for prefix in kohya_by_comp.get(comp, ()):
                    index.setdefault(f"{prefix}_{sgm.replace('.', '_')}", (comp, path))
    return index
