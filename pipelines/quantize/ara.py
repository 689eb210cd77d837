"""Accuracy-recovery adapters (ARA): the `qtype: "uint3|org/repo/file.safetensors"` of ai-toolkit's presets.

What ai-toolkit 27a03a91 does (`ModelConfig.__init__` splits the qtype at "|"; `toolkit/util/quantize.py:
quantize_model`, the `accuracy_recovery_adapter` branch), and so what `apply_adapter` does:
- the file is a local path, else `org/repo/file` fetched with `hf_hub_download` (here: `sources.hub_file`);
- its keys go through the model's `convert_lora_weights_before_load` ("diffusion_model." -> "transformer.");
- a LoRA network (`is_ara`, peft format: alpha = rank, so scale 1; rank = the first `lora_A`'s) is built with
  `only_if_contains` = every key's module prefix: it wraps EVERY Linear of the transformer whose name
  ("transformer.<path>") contains one of those prefixes (a substring test), and is loaded, moved to the model dtype
  (weights, scale and multiplier 1 all in that dtype), activated and never merged (`can_merge_in = False`);
- each wrapped layer is then quantized with the qtype (a layer uintX cannot take stays full precision), and the
  rest of the model "with uint8", which quantizes nothing (see uintx.py): only the adapter's layers are quantized;
- while sampling the adapter runs as a branch of every wrapped layer, and the user's LoRA wraps that.
A key that names no layer (an adapter for another model), unequal ranks or a wrong shape are refused here.
"""
from __future__ import annotations

import os

import torch

from ..errors import QuantizationError
from . import uintx

KEY_PREFIX = "transformer."   # ai-toolkit's transformer networks name modules "transformer.<path>"


def adapter_file(name: str) -> str:
    """The adapter's local path: `name` itself when it is a file, else `org/repo/file` from the HF cache/hub."""
    if os.path.isfile(name):
        return name
    parts = name.split("/")
    if len(parts) != 3:
        raise QuantizationError(f"Accuracy-recovery adapter {name!r}: not a file, and not 'org/repo/file."
                                "safetensors' (what ai-toolkit accepts).")
    from ..sources import hub_file

    return hub_file("/".join(parts[:2]), parts[2])


def read_adapter(path: str) -> dict:
    """{module path in the component: (lora_A [r, in], lora_B [out, r])} in ai-toolkit's key conversion."""
    from safetensors.torch import load_file

    pairs: dict = {}
    for key, value in load_file(path).items():
        key = key.replace("diffusion_model.", KEY_PREFIX)
        prefix, _, part = key.partition(".lora_")
        if part in ("A.weight", "B.weight") and prefix.startswith(KEY_PREFIX):
            pairs.setdefault(prefix[len(KEY_PREFIX):], {})[part[0]] = value
        elif not key.endswith(".alpha"):  # peft format drops alpha keys
            raise QuantizationError(f"Accuracy-recovery adapter {os.path.basename(path)}: key {key!r} is not a "
                                    "LoRA weight of a transformer layer; is it an ai-toolkit ARA file?")
    incomplete = [p for p, t in pairs.items() if set(t) != {"A", "B"}]
    if incomplete or not pairs:
        raise QuantizationError(f"Accuracy-recovery adapter {os.path.basename(path)} holds no complete LoRA "
                                f"modules (incomplete: {incomplete[:3]}).")
    ranks = {t["A"].shape[0] for t in pairs.values()}
    if len(ranks) != 1:
        raise QuantizationError(f"Accuracy-recovery adapter {os.path.basename(path)} has modules of ranks "
                                f"{sorted(ranks)}; ai-toolkit's adapters have one rank.")
    return {p: (t["A"], t["B"]) for p, t in pairs.items()}


def apply_adapter(component: torch.nn.Module, name: str, bits: int, dtype: torch.dtype | None, report) -> None:
    """Quantize the layers the adapter `name` covers with uint`bits` and attach it to them (see the docstring)."""
    path = adapter_file(name)
    pairs = read_adapter(path)
    prefixes = [KEY_PREFIX + p for p in pairs]
    modules = dict(component.named_modules())
    unknown = [p for p in pairs if not isinstance(modules.get(p), torch.nn.Linear)]
    if unknown:
        raise QuantizationError(f"Accuracy-recovery adapter {os.path.basename(path)}: {len(unknown)} of its "
                                f"{len(pairs)} modules name no Linear layer of this model (e.g. {unknown[0]!r}); it "
                                "was made for another model.")
    if dtype is None:
        dtype = next(component.parameters()).dtype
    with torch.no_grad():
        for module_name, module in modules.items():
            if not module_name or not isinstance(module, torch.nn.Linear):
                continue
            if not any(p in KEY_PREFIX + module_name for p in prefixes):
                continue
            pair = pairs.get(module_name)
            if pair is not None:
                down, up = pair
                if down.shape[1] != module.in_features or up.shape[0] != module.out_features:
                    raise QuantizationError(
                        f"Accuracy-recovery adapter {os.path.basename(path)}: {module_name} is {tuple(up.shape)} x "
                        f"{tuple(down.shape)}, the layer is {module.out_features} x {module.in_features}.")
            module.to(dtype=dtype)
            module.requires_grad_(False)
            if uintx.quantize_linear(module, bits):
                report.quantized.append(module_name)
            else:
                uintx.adapt_linear(module)
                report.failed[module_name] = f"in_features {module.in_features} is not a multiple of {uintx.GROUP}"
            if pair is not None:
                module.attach_adapter(pair[0], pair[1], dtype)
                report.adapted.append(module_name)
