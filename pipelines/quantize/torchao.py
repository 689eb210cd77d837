"""torchao weight-only quantization as ai-toolkit uses it: qtype "float8" = `Float8WeightOnlyConfig()` (fp8 e4m3
weights, one scale per output row, matmul in the weight's original dtype), applied by torchao's own `quantize_`.

ai-toolkit 27a03a91 (`toolkit/util/quantize.py`, pinned torchao==0.10.0) reaches it only through `quantize_model`,
whose `exclude` list is never None: so every `nn.Linear` not excluded is handed to `quantize_(linear, config)`
(containers are skipped), block by block and then over the whole model; torchao's filter skips a Linear whose
weight is already quantized, so the second pass only adds the layers outside the blocks. torchao is optional and
imported only here, inside functions (a QuantizationError says what to install). `set_inductor_config=False` keeps
torchao from changing torch.compile's global settings and `torch.set_float32_matmul_precision("high")` for the whole
process; it does not change the quantized weights. ai-toolkit keeps the default (True), so after it quantizes with
float8, its fp32 matmuls on CUDA (the LoRA's fp32 branch) may run in TF32; the pack keeps them exact (a GPU-only
difference, not measured here).
"""
from __future__ import annotations

import torch

from ..errors import QuantizationError

PACKAGE = "torchao"
INSTALL = "pip install --no-deps \"torchao==0.10.0\""  # ai-toolkit's pin; --no-deps leaves ComfyUI's torch alone
QTYPES = {"float8": "Float8WeightOnlyConfig"}


def require_torchao():
    """torchao's quant_api module, or a QuantizationError naming the package and the install command."""
    try:
        from torchao.quantization import quant_api
    except Exception as exc:  # noqa: BLE001 - ImportError, or a torchao built for another torch
        raise QuantizationError(
            f"qtype float8 needs the {PACKAGE} package (ai-toolkit quantizes it with torchao's "
            f"Float8WeightOnlyConfig), which is not importable here ({type(exc).__name__}: {exc}). Install it into "
            f"ComfyUI's Python with `{INSTALL}`, or choose another quantization.") from exc
    return quant_api


def config(qtype: str):
    api = require_torchao()
    return getattr(api, QTYPES[qtype])(set_inductor_config=False)


def is_quantized(module: torch.nn.Module) -> bool:
    weight = getattr(module, "_parameters", {}).get("weight")
    return weight is not None and "torchao" in type(weight).__module__


def quantize_linear(module: torch.nn.Module, cfg) -> bool:
    """`quantize_(module, cfg)` on one Linear (True when its weight is now a torchao tensor)."""
    api = require_torchao()
    if not isinstance(module, torch.nn.Linear) or is_quantized(module):
        return False
    api.quantize_(module, cfg)
    module.requires_grad_(False)
    return is_quantized(module)
