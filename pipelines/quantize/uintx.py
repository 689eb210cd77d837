"""ai-toolkit's uint2..uint7 weight-only quantization (its `UIntXQuantizer`, a bit-exact stand-in for torchao 0.10.0's
`UIntXWeightOnlyConfig`) and the Linear layers that hold it, with an optional accuracy-recovery branch (ara.py).

The math, as `toolkit/util/uintx_quant.py` documents it (written here from that description, not copied):
- groups of 64 weights along `in_features` (block size (1, 64)); a layer whose `in_features` is not a multiple of 64,
  or whose weight is not a 2-D float tensor, is left as it is (torchao asserted; ai-toolkit's loop caught it);
- asymmetric, zero preserved, all arithmetic in the weight's own dtype (bf16 rounds differently from fp32):
  `lo = min(min(group), 0)`, `hi = max(max(group), 0)`, `scale = max((hi - lo) / qmax, eps_fp32)`,
  `zero = clamp(0 - round(lo / scale), 0, qmax)` as int, `q = clamp(round(w * (1 / scale)) + zero, 0, qmax)`;
- dequantized as `(q - zero)` in int32, cast to the weight dtype, times scale; the forward casts that weight to the
  input's dtype and runs `F.linear(x, w, bias)`;
- "uint8" resolves in ai-toolkit but never quantizes anything (torchao's packing only handled 1..7 bits), so layers
  ai-toolkit quantizes "with uint8" stay full precision here too.

Storage is this pack's own: the codes are kept as `bits` bit planes of 8 codes a byte (3 bits a weight for uint3).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

GROUP = 64
EPS = torch.finfo(torch.float32).eps
BITS = {f"uint{b}": b for b in range(2, 8)}


def qparams(weight: torch.Tensor, bits: int, group: int = GROUP):
    """(scale [out, in/group] in the weight dtype, zero point [out, in/group] int32)."""
    out_f, in_f = weight.shape
    grouped = weight.reshape(out_f, in_f // group, group)
    zeros = torch.zeros((), dtype=weight.dtype, device=weight.device)
    lo = torch.minimum(grouped.amin(dim=-1), zeros)
    hi = torch.maximum(grouped.amax(dim=-1), zeros)
    qmax = (1 << bits) - 1
    scale = torch.clamp((hi - lo) / float(qmax), min=EPS)
    zero = torch.clamp(0 - torch.round(lo / scale), 0, qmax).to(torch.int32)
    return scale, zero


def quantize_codes(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                   group: int = GROUP) -> torch.Tensor:
    """The uint8 codes [out, in] of `weight` (same dtype arithmetic as the qparams)."""
    out_f, in_f = weight.shape
    grouped = weight.reshape(out_f, in_f // group, group)
    q = torch.round(grouped * (1.0 / scale).unsqueeze(-1)) + zero.unsqueeze(-1)
    return torch.clamp(q, 0, (1 << bits) - 1).reshape(out_f, in_f).to(torch.uint8)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int = GROUP):
    """The weight in the dtype of `scale`: `(q - zero)` in int32, cast, times scale."""
    out_f, in_f = codes.shape
    q = codes.reshape(out_f, in_f // group, group).to(torch.int32)
    return ((q - zero.unsqueeze(-1)).to(scale.dtype) * scale.unsqueeze(-1)).reshape(out_f, in_f)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (< 2**bits) -> [bits, ceil(n / 8)] uint8 bit planes, 8 codes a byte."""
    flat = codes.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(8, dtype=torch.uint8, device=flat.device)
    planes = []
    for b in range(bits):
        bit = ((flat >> b) & 1).reshape(-1, 8)
        planes.append((bit << shifts).sum(dim=1, dtype=torch.uint8))
    return torch.stack(planes)


def unpack(planes: torch.Tensor, bits: int, shape) -> torch.Tensor:
    """Inverse of `pack`: uint8 codes of `shape`."""
    numel = shape[0] * shape[1]
    shifts = torch.arange(8, dtype=torch.uint8, device=planes.device)
    codes = torch.zeros(planes.shape[1] * 8, dtype=torch.uint8, device=planes.device)
    for b in range(bits):
        codes |= (((planes[b].unsqueeze(1) >> shifts) & 1).reshape(-1) << b)
    return codes[:numel].reshape(shape)


class AdaptedLinear(torch.nn.Linear):
    """A Linear (turned into one in place, by class swap, as ai-toolkit converts its layers) that may carry
    ai-toolkit's accuracy-recovery adapter: `out = base(x) + ((up(down(x.to(d))) * 1) * 1).to(out.dtype)`, the
    adapter's LoRA forward (`ToolkitModuleMixin.forward`) with its weights, scale and multiplier (both 1) in the
    model dtype `d` (`force_to(device, dtype=torch_dtype)`). The class forward holds it, so a user LoRA branch wraps
    it (`forward` on the instance) as ai-toolkit's user network wraps the adapter's, and removing that branch keeps
    it. A layer that could not be quantized stays full precision here, adapter and all."""
    def attach_adapter(self, down: torch.Tensor, up: torch.Tensor, dtype: torch.dtype) -> None:
        device = self.bias.device if self.bias is not None else self._device()
        self.register_buffer("ara_down", down.to(device=device, dtype=dtype).clone(), persistent=False)
        self.register_buffer("ara_up", up.to(device=device, dtype=dtype).clone(), persistent=False)
        self.register_buffer("ara_scale", torch.ones((), dtype=dtype, device=device), persistent=False)
        self.register_buffer("ara_multiplier", torch.ones(1, dtype=dtype, device=device), persistent=False)

    def _device(self):
        tensor = next(iter(self.parameters()), None)
        return (tensor if tensor is not None else next(iter(self.buffers()))).device

    @property
    def adapter(self) -> bool:
        return "ara_down" in self._buffers

    def base_forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def forward(self, x):
        out = self.base_forward(x)
        if "ara_down" not in self._buffers:
            return out
        hidden = F.linear(F.linear(x.to(self.ara_down.dtype), self.ara_down), self.ara_up)
        return out + ((hidden * self.ara_scale) * self.ara_multiplier).to(out.dtype)


class UIntXLinear(AdaptedLinear):
    """A Linear whose weight is held as ai-toolkit's uintX codes (see the module docstring)."""
    @property
    def weight(self):
        """The dequantized weight in the original dtype (what ai-toolkit's `OstrisLinear.weight` returns)."""
        codes = unpack(self.uintx_codes, self.bits, (self.out_features, self.in_features))
        return dequantize_codes(codes, self.uintx_scale, self.uintx_zero)

    def base_forward(self, x):
        with torch.no_grad():
            w = self.weight
            if w.dtype != x.dtype:
                w = w.to(x.dtype)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, uint{self.bits}"


def can_quantize(module: torch.nn.Module, bits: int) -> bool:
    weight = getattr(module, "_parameters", {}).get("weight")
    return (isinstance(module, torch.nn.Linear) and not isinstance(module, UIntXLinear) and 2 <= bits <= 7
            and weight is not None and weight.ndim == 2 and weight.dtype.is_floating_point
            and type(weight.data) is torch.Tensor and weight.shape[1] % GROUP == 0)


@torch.no_grad()
def quantize_linear(module: torch.nn.Linear, bits: int) -> bool:
    """Turn `module` into a UIntXLinear in place (its object, so references to it stay valid); False (and left as
    it is) when it cannot be quantized."""
    if not can_quantize(module, bits):
        return False
    weight = module.weight.data
    scale, zero = qparams(weight, bits)
    codes = quantize_codes(weight, scale, zero, bits)
    del module._parameters["weight"]
    module.__class__ = UIntXLinear
    module.bits, module.weight_dtype = bits, weight.dtype
    module.register_buffer("uintx_codes", pack(codes, bits), persistent=False)
    module.register_buffer("uintx_scale", scale.contiguous(), persistent=False)
    module.register_buffer("uintx_zero", zero, persistent=False)
    if module.bias is not None:
        module.bias.requires_grad_(False)
    return True


def adapt_linear(module: torch.nn.Linear) -> AdaptedLinear:
    """`module` as an AdaptedLinear (full precision), in place."""
    if not isinstance(module, AdaptedLinear):
        module.__class__ = AdaptedLinear
    return module
