"""Group a LoRA file's tensors into modules and compute each module's weight delta the way ai-toolkit merges it.

Layouts: kohya (`<name>.lora_down.weight` / `.lora_up.weight` / `.alpha`, scale = alpha / rank), peft/Diffusers
(`<name>.lora_A.weight` / `.lora_B.weight`, scale 1: ai-toolkit forces alpha = rank for peft files), ai-toolkit
`fullrank` (a full `lora_down` with no `lora_up`), full deltas (`.diff` / `.diff_b`), and LoKr (`.lokr_w1` /
`.lokr_w2` or their `_a`/`_b` factors + `.alpha`; the math is `lokr.py`'s). Every tensor ends up in
exactly one module or in `leftovers`, so the match report can account for all keys.

The delta math is `toolkit/network_mixins.py:ToolkitModuleMixin.merge_in` written out: fp32 factors, linear
`up @ down`, 1x1 conv by squeezed matmul, 3x3 conv by `conv2d(down.permute(1, 0, 2, 3), up)`, then
`multiplier * product * scale` in that order (the order matters for bit-exact fp32 results).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import lokr

_SUFFIXES = {
    ".lora_down.weight": "down", ".lora_up.weight": "up", ".lora_A.weight": "down", ".lora_B.weight": "up",
    ".alpha": "alpha", ".diff": "diff", ".diff_b": "diff_b", ".dora_scale": "dora_scale",
    ".lora_mid.weight": "mid", ".lokr_w1": "lokr_w1", ".lokr_w2": "lokr_w2", ".lokr_w1_a": "lokr_w1_a",
    ".lokr_w1_b": "lokr_w1_b", ".lokr_w2_a": "lokr_w2_a", ".lokr_w2_b": "lokr_w2_b", ".lokr_t2": "lokr_t2",
    ".hada_w1_a": "hada", ".hada_w1_b": "hada", ".hada_w2_a": "hada", ".hada_w2_b": "hada",
    ".scalar": "scalar", ".lora_down.bias": "down_bias", ".lora_up.bias": "up_bias",
}
_PEFT_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


@dataclass
class LoraModule:
    name: str                      # the module name as written in the file (without the suffix)
    style: str                     # "kohya" or "peft"
    tensors: dict = field(default_factory=dict)   # part -> tensor
    keys: list = field(default_factory=list)      # the file keys this module consumed

    @property
    def kind(self) -> str:
        t = self.tensors
        if "hada" in t or "dora_scale" in t or "mid" in t:
            return "unsupported"
        if any(k.startswith("lokr") for k in t):
            return "lokr"
        if "diff" in t or "diff_b" in t:
            return "full"
        if "down" in t and "up" in t:
            return "unsupported" if t["down"].ndim == t["up"].ndim == 5 else "lora"
        if "down" in t and "up" not in t:
            return "fullrank"
        return "incomplete"

    @property
    def unsupported_reason(self) -> str:
        t = self.tensors
        if "hada" in t:
            return "LoHa modules are not supported"
        if "dora_scale" in t:
            return "DoRA modules are not supported yet"
        if "mid" in t:
            return "Tucker (lora_mid) modules are not supported"
        if "down" in t and "up" in t and t["down"].ndim == 5:
            return "Conv3d LoRA modules are not supported; ai-toolkit's LoRA never targets Conv3d layers"
        return "incomplete module (missing up or down tensor)"

    @property
    def rank(self) -> int:
        return int(self.tensors["down"].shape[0])

    @property
    def scale(self) -> float:
        if self.style == "peft" or self.kind != "lora" or "alpha" not in self.tensors:
            return 1.0
        alpha = float(self.tensors["alpha"].detach().float().item())
        alpha = self.rank if alpha == 0 else alpha
        return float(alpha) / self.rank

    def problem(self) -> str | None:
        """What makes this module's tensors impossible to apply (a damaged file), or None."""
        t = self.tensors
        alpha = t.get("alpha")
        if alpha is not None and alpha.numel() != 1:
            return f"its alpha holds {alpha.numel()} values (shape {tuple(alpha.shape)}), not one number"
        if self.kind == "lokr":
            return lokr.problem(t)
        if self.kind != "lora":
            return None
        down, up = t["down"], t["up"]
        if down.ndim not in (2, 4) or up.ndim != down.ndim:
            return (f"lora_down has shape {tuple(down.shape)} and lora_up {tuple(up.shape)}: they must both be "
                    "matrices (Linear) or both 4-d (Conv2d)")
        if down.shape[0] == 0:
            return f"lora_down has rank 0 (shape {tuple(down.shape)})"
        if up.shape[1] != down.shape[0]:
            return (f"lora_down has rank {down.shape[0]} but lora_up expects rank {up.shape[1]} "
                    f"(shapes {tuple(down.shape)} and {tuple(up.shape)})")
        if down.ndim == 4 and tuple(up.shape[2:]) != (1, 1):
            return f"a conv lora_up must be 1x1, got shape {tuple(up.shape)}"
        return None

    def first_non_finite(self) -> str | None:
        """The first key of this module holding NaN or Inf, or None."""
        for key in self.keys:
            if self.kind == "lokr" and _match(key)[1] == "alpha" and not lokr.uses_alpha(self.tensors):
                continue  # full w1 and w2: scale 1, the alpha (~1e10, inf in fp16 files) is never read
            tensor = self.tensors.get(_match(key)[1])
            if tensor is not None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return key
        return None

    def is_zero(self) -> bool:
        t = self.tensors
        if self.kind == "lora":
            return not t["up"].any() or not t["down"].any()
        if self.kind == "fullrank":
            return not t["down"].any()
        if self.kind == "lokr":
            return lokr.is_zero(t)
        return not any(t[k].any() for k in ("diff", "diff_b") if k in t)

    def expected_shape(self) -> tuple | None:
        """The target weight's shape this module implies (None when it cannot tell)."""
        t = self.tensors
        if self.kind == "lora":
            down, up = t["down"], t["up"]
            if down.ndim == 2:
                return (up.shape[0], down.shape[1])
            return (up.shape[0], down.shape[1], *down.shape[2:])
        if self.kind == "fullrank":
            return tuple(t["down"].shape)
        if self.kind == "lokr":
            return lokr.expected_shape(t)
        if "diff" in t:
            return tuple(t["diff"].shape)
        return None

    def weight_term(self, multiplier: float, device, shape=None) -> torch.Tensor:
        """`multiplier * product * scale` in fp32 on `device`: the term ai-toolkit adds to the fp32 weight (LoKr:
        `lokr.weight_term`, reshaped to the target weight's `shape`)."""
        t = self.tensors
        if self.kind == "lokr":
            return lokr.weight_term(t, multiplier, device, shape, self.name)
        if self.kind == "full":
            return multiplier * t["diff"].to(device).float()
        down = t["down"].to(device).float().clone()  # ai-toolkit: `weight.clone().float()` (aligned copies)
        if self.kind == "fullrank":
            return multiplier * down * self.scale
        up = t["up"].to(device).float().clone()
        if down.ndim == 2:
            product = up @ down
        elif down.shape[2:4] == (1, 1):
            product = (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3)
        else:
            product = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
        return multiplier * product * self.scale

    def branch(self, module: torch.nn.Module, multiplier: float, dtype: torch.dtype = torch.float32):
        """ai-toolkit's unmerged forward for this LoRA on `module`: a function x -> the term added to the output,
        `((up(down(x.float())) * scale) * multiplier).to(out dtype)` (`ToolkitModuleMixin.forward`; a full-rank
        module has an identity `lora_up`). `module` may be a quantized layer: only its device and conv geometry
        are read. LoKr: `lokr.branch`. `dtype`: the network's dtype (fp32 for a trained LoRA; an adapter ai-toolkit
        moves to the model dtype computes in that dtype: weights, input, scale and multiplier)."""
        if self.kind == "lokr":
            if dtype != torch.float32:
                raise ValueError(f"{self.name}: LoKr branches are computed in fp32 only")
            return lokr.branch(self.tensors, module, multiplier, self.name)
        device = module.weight.device
        # ai-toolkit's LoRA weights are trainable parameters while it samples; on CPU, F.linear on a non-contiguous
        # input (SDXL's proj_in) rounds differently with requires_grad set, so keep that flag as it has it.
        # Fresh, aligned copies (like the nn.Linear parameters ai-toolkit holds): CPU matmul kernels can round
        # differently for tensors that are views into a loaded file's buffer.
        down = self.tensors["down"].to(device).to(dtype).clone().requires_grad_(True)
        up = self.tensors["up"].to(device).to(dtype).clone().requires_grad_(True) if self.kind == "lora" else None
        scale = torch.tensor(self.scale, dtype=dtype, device=device)
        mult = torch.tensor(multiplier, dtype=dtype, device=device)
        if down.ndim == 2:
            def lora(x):
                hidden = torch.nn.functional.linear(x.to(dtype), down)
                return hidden if up is None else torch.nn.functional.linear(hidden, up)
        else:
            stride, padding = module.stride, module.padding

            def lora(x):
                hidden = torch.nn.functional.conv2d(x.to(dtype), down, None, stride, padding)
                return hidden if up is None else torch.nn.functional.conv2d(hidden, up)

        def term(x, dtype):
            return ((lora(x) * scale) * mult).to(dtype)
        return term

    def bias_term(self, multiplier: float, device) -> torch.Tensor | None:
        if "diff_b" not in self.tensors:
            return None
        return multiplier * self.tensors["diff_b"].to(device).float()


def _match(key: str) -> tuple[str, str] | None:
    """(suffix, part) of a module tensor key, or None for a key that belongs to no module."""
    for suffix, part in _SUFFIXES.items():
        if key.endswith(suffix):
            return suffix, part
    return None


@dataclass
class ParsedLora:
    modules: dict            # name -> LoraModule
    leftovers: list          # keys that belong to no module (embeddings, unknown tensors)


def parse_tensors(tensors: dict) -> ParsedLora:
    modules: dict[str, LoraModule] = {}
    leftovers = []
    for key in sorted(tensors):
        hit = _match(key)
        if hit is None:
            leftovers.append(key)
            continue
        suffix, part = hit
        name, style = key[: -len(suffix)], "peft" if suffix in _PEFT_SUFFIXES else "kohya"
        mod = modules.setdefault(name, LoraModule(name, style))
        if style == "peft":
            mod.style = "peft"
        mod.tensors[part] = tensors[key]
        mod.keys.append(key)
    return ParsedLora(modules, leftovers)
