"""Hand-written reference for ai-toolkit's uint2..uint7 weights and its accuracy-recovery adapters (ARA), written
from ai-toolkit 27a03a91 (`toolkit/util/uintx_quant.py`'s documented math, `toolkit/util/quantize.py:quantize_model`,
`toolkit/network_mixins.py:ToolkitModuleMixin.forward`), independent of pipelines/quantize: one 64-weight group at
a time, in the weight's dtype, and plain forward closures on the layers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = torch.finfo(torch.float32).eps


def uintx_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """The dequantized weight ai-toolkit's forward uses (in w's dtype), group by group."""
    qmax = 2 ** bits - 1
    out = torch.empty_like(w)
    zero0 = torch.tensor(0, dtype=w.dtype)
    for r in range(w.shape[0]):
        for g in range(0, w.shape[1], 64):
            grp = w[r, g:g + 64]
            lo = torch.min(grp.min(), zero0)                      # preserve_zero: the range includes 0
            hi = torch.max(grp.max(), zero0)
            scale = torch.clamp((hi - lo) / float(qmax), min=EPS)  # in the weight dtype
            zp = torch.clamp(0 - torch.round(lo / scale), 0, qmax).to(torch.int32)
            q = torch.clamp(torch.round(grp * (1.0 / scale)) + zp, 0, qmax).to(torch.int32)
            out[r, g:g + 64] = (q - zp).to(w.dtype) * scale
    return out


def quantize_uintx_layer(module: torch.nn.Linear, bits: int) -> bool:
    """`convert_linear_to_ostris` + `UIntXQuantizer.forward`: x @ dequantized.to(x.dtype) + bias. False (left as it
    is) when in_features is not a multiple of 64."""
    if module.in_features % 64:
        return False
    weight = uintx_weight(module.weight.detach(), bits)
    bias = module.bias

    def forward(x):
        return F.linear(x, weight.to(x.dtype), bias)
    module.forward = forward
    return True


def quantize_uintx(parts: dict, bits: int, dtype) -> int:
    """QwenImageModel with plain uintN: `quantize_model` (each block, then the rest) converts every Linear that can
    take it; the text encoder gets `qtype_te` (qfloat8). Returns how many layers were quantized."""
    from tests.reference_qwen import _quantize
    from optimum.quanto import qfloat8

    transformer = parts["transformer"].to(dtype=dtype)
    done = sum(quantize_uintx_layer(m, bits) for m in transformer.modules() if isinstance(m, torch.nn.Linear))
    _quantize(parts["text_encoder"].to(dtype=dtype), qfloat8)
    return done


def apply_ara(parts: dict, ara: dict, bits: int, dtype) -> tuple[int, int]:
    """The `accuracy_recovery_adapter` branch of `quantize_model` on the transformer, and `quantize_te` (qfloat8):
    keys "diffusion_model." -> "transformer."; every Linear whose "transformer.<name>" contains a key's module
    prefix is quantized with uintN (when it can be) and gets the adapter as a branch in the model dtype:
    `org(x) + ((up(down(x.to(d))) * scale 1) * multiplier 1).to(org dtype)`. Returns (adapted, quantized)."""
    from tests.reference_qwen import _quantize
    from optimum.quanto import qfloat8

    transformer = parts["transformer"].to(dtype=dtype)
    sd = {k.replace("diffusion_model.", "transformer."): v for k, v in ara.items()}
    only_if_contains = []
    for key in sd:
        prefix = key.split(".lora_")[0]
        if prefix not in only_if_contains:
            only_if_contains.append(prefix)
    adapted = quantized = 0
    for name, module in list(transformer.named_modules()):
        if type(module) is not torch.nn.Linear or not any(p in "transformer." + name for p in only_if_contains):
            continue
        down_w = sd.get(f"transformer.{name}.lora_A.weight")
        up_w = sd.get(f"transformer.{name}.lora_B.weight")
        quantized += quantize_uintx_layer(module, bits)
        if down_w is None:
            continue
        down = torch.nn.Linear(down_w.shape[1], down_w.shape[0], bias=False).to(dtype)
        up = torch.nn.Linear(up_w.shape[1], up_w.shape[0], bias=False).to(dtype)
        with torch.no_grad():
            down.weight.copy_(down_w.to(dtype))
            up.weight.copy_(up_w.to(dtype))
        scale = torch.tensor(1.0, dtype=dtype)
        multiplier = torch.tensor([1.0], dtype=dtype)
        org = module.forward

        def forward(x, org=org, down=down, up=up, scale=scale, multiplier=multiplier):
            out = org(x)
            lora = up(down(x.to(down.weight.dtype))) * scale
            return out + (lora * multiplier).to(out.dtype)
        module.forward = forward
        module._aitk_ara = (down, up)
        adapted += 1
    _quantize(parts["text_encoder"].to(dtype=dtype), qfloat8)
    return adapted, quantized
