"""LoKr (LyCORIS Kronecker-product) modules, computed exactly as ai-toolkit 0.12.26 (`27a03a91`) computes them.

This module owns the pure LoKr math of the LoRA engine, for every family: the shape sanity of a module's tensors,
its scale, the full-weight delta ai-toolkit merges, and the unmerged forward it runs instead of merging. It knows
nothing about files, key names or models; `parse.LoraModule` (kind "lokr") hands it the module's tensors, a dict
with `lokr_w1` or `lokr_w1_a`/`lokr_w1_b`, `lokr_w2` or `lokr_w2_a`/`lokr_w2_b` (+ `lokr_t2`, Tucker) and `alpha`.

What ai-toolkit does (`toolkit/models/lokr.py:LokrModule`, `toolkit/network_mixins.py`):
- Layout. W ≈ kron(w1, w2): w1 is `(out_l, in_m)`; w2 is `(out_k, in_n)` for a Linear, `(out_k, in_n, k1, k2)` for
  a Conv2d with a full w2, or `w2_a @ w2_b` = `(out_k, in_n·k1·k2)` for a factorised conv w2 (reshaped to the
  weight's shape afterwards); Tucker: `einsum('i j k l, i p, j r -> p r k l', t2, w2_a, w2_b)`. ai-toolkit itself
  only writes a full `lokr_w1` (it never passes `decompose_both`) and no `lokr_t2` (never `use_cp`); the other forms
  are LyCORIS's and are applied with the same formulas.
- Scale (`LokrModule.__init__`): `alpha = lora_dim if alpha is None or alpha == 0`; when both w1 and w2 are full
  matrices (`use_w1 and use_w2`), `alpha = lora_dim`, i.e. **scale 1** whatever the file's alpha says (its default
  `lokr_full_rank: true` sets dim = alpha = 9999999999, saved as ~1e10 in bf16/fp32 and as inf in fp16: unused).
  Otherwise `scale = alpha / lora_dim`, with lora_dim read from the factor shapes (`w2_a.shape[1]`, the Tucker
  core's, or `w1_a.shape[1]`). The scale is an fp32 0-dim tensor on the LoKr's device (`_runtime_scale`).
- Merge (`LokrModule.merge_in` → `get_weight` → `make_kron`): fp32 factors, `kron(w1, w2) * scale`, reshaped to the
  weight's shape, then `W.float() + delta * multiplier`, rounded once to the weight dtype. There is no all-zero skip
  there (the engine skips all-zero modules anyway: adding zero changes no weight, except a -0.0 becoming +0.0).
- Unmerged (`ToolkitModuleMixin.forward` calls `LokrModule._call_forward` directly): a Linear takes
  `_call_forward_fast_linear`, which never builds the full matrix and works in the *output's* dtype (bf16 when the
  model samples in bf16): `x.unflatten(-1, (in_m, in_n))`, einsum with w2 (or w2_b then w2_a), einsum with
  `w1 * scale`, flatten, `* mean(multiplier)`, added to `org_forward(x)`. A Conv2d takes the legacy path, which
  replaces the layer's forward: `conv2d(x, W + kron(...).to(W.dtype) * mean(multiplier), bias)` in the weight's
  dtype. Both branch strategies (mixed `--m` multipliers; quantized bases, where ai-toolkit never merges) run this.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import LoraError

PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def _shape(t) -> tuple:
    return tuple(t.shape)


def problem(t: dict) -> str | None:
    """What makes these LoKr tensors impossible to apply (a damaged file), or None."""
    others = sorted(k for k in t if k not in PARTS and k != "alpha")
    if others:
        return f"it mixes LoKr tensors with {', '.join(others)} tensors"
    for part in PARTS:
        if part in t and t[part].numel() == 0:
            return f"{part} is empty (shape {_shape(t[part])})"
    if "lokr_w1" in t:
        if "lokr_w1_a" in t or "lokr_w1_b" in t:
            return "it has both lokr_w1 and lokr_w1_a/lokr_w1_b"
        if t["lokr_w1"].ndim != 2:
            return f"lokr_w1 must be a matrix, got shape {_shape(t['lokr_w1'])}"
    elif "lokr_w1_a" in t and "lokr_w1_b" in t:
        a, b = t["lokr_w1_a"], t["lokr_w1_b"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            return f"lokr_w1_a {_shape(a)} and lokr_w1_b {_shape(b)} do not multiply (their ranks disagree)"
    else:
        return "it has no lokr_w1 (nor lokr_w1_a and lokr_w1_b): the module is incomplete"
    if "lokr_w2" in t:
        if "lokr_w2_a" in t or "lokr_w2_b" in t or "lokr_t2" in t:
            return "it has both lokr_w2 and lokr_w2_a/lokr_w2_b"
        if t["lokr_w2"].ndim not in (2, 4):
            return f"lokr_w2 must be 2-d (Linear) or 4-d (Conv2d), got shape {_shape(t['lokr_w2'])}"
    elif "lokr_w2_a" in t and "lokr_w2_b" in t:
        a, b = t["lokr_w2_a"], t["lokr_w2_b"]
        if a.ndim != 2 or b.ndim != 2:
            return f"lokr_w2_a {_shape(a)} and lokr_w2_b {_shape(b)} must be matrices"
        if "lokr_t2" in t:
            core = t["lokr_t2"]
            if core.ndim != 4 or core.shape[0] != a.shape[0] or core.shape[1] != b.shape[0]:
                return (f"the Tucker core lokr_t2 {_shape(core)} does not fit lokr_w2_a {_shape(a)} and "
                        f"lokr_w2_b {_shape(b)}")
        elif a.shape[1] != b.shape[0]:
            return (f"lokr_w2_a has rank {a.shape[1]} but lokr_w2_b expects rank {b.shape[0]} "
                    f"(shapes {_shape(a)} and {_shape(b)})")
    else:
        return "it has no lokr_w2 (nor lokr_w2_a and lokr_w2_b): the module is incomplete"
    if "lokr_w1_a" in t and rank(t) != t["lokr_w1_a"].shape[1]:
        return f"lokr_w1_a has rank {t['lokr_w1_a'].shape[1]} but the w2 factors have rank {rank(t)}"
    return None


def uses_alpha(t: dict) -> bool:
    """False when w1 and w2 are both full matrices: ai-toolkit then forces scale 1 and never reads alpha."""
    return not ("lokr_w1" in t and "lokr_w2" in t)


def rank(t: dict) -> int | None:
    """ai-toolkit's `lora_dim` as the factor shapes tell it (None for full w1 and w2, where it is not stored)."""
    if "lokr_t2" in t:
        return int(t["lokr_t2"].shape[0])
    if "lokr_w2_a" in t:
        return int(t["lokr_w2_a"].shape[1])
    if "lokr_w1_a" in t:
        return int(t["lokr_w1_a"].shape[1])
    return None


def scale(t: dict) -> float:
    """`alpha / lora_dim` as `LokrModule.__init__` sets it (1.0 for full w1 and w2; alpha 0 or absent = lora_dim)."""
    if not uses_alpha(t):
        return 1.0
    dim = rank(t)
    alpha = t.get("alpha")
    alpha = None if alpha is None else float(alpha.detach().float().item())
    alpha = dim if alpha is None or alpha == 0 else alpha
    return float(alpha) / dim


def _w1_shape(t) -> tuple:
    if "lokr_w1" in t:
        return _shape(t["lokr_w1"])
    return (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])


def _w2_shape(t) -> tuple:
    if "lokr_w2" in t:
        return _shape(t["lokr_w2"])
    if "lokr_t2" in t:
        return (t["lokr_w2_a"].shape[1], t["lokr_w2_b"].shape[1], *t["lokr_t2"].shape[2:])
    return (t["lokr_w2_a"].shape[0], t["lokr_w2_b"].shape[1])


def kron_shape(t: dict) -> tuple:
    """The shape of `kron(w1, w2)` before ai-toolkit reshapes it to the weight's shape."""
    (a, c), w2 = _w1_shape(t), _w2_shape(t)
    return (a * w2[0], c * w2[1], *w2[2:])


def expected_shape(t: dict) -> tuple | None:
    """The target weight's shape, or None for a factorised (`w2_a @ w2_b`, non-Tucker) w2: that product is 2-d
    whether the target is a Linear or a conv (whose input channels and kernel are folded into its columns), so only
    the target can tell; `fits` checks it then."""
    if "lokr_w2_a" in t and "lokr_t2" not in t:
        return None
    return kron_shape(t)


def fits(t: dict, shape) -> bool:
    """Whether ai-toolkit's `reshape(orig_weight.shape)` of kron(w1, w2) lands row for row on a weight of `shape`."""
    shape, kron = tuple(shape), kron_shape(t)
    if len(kron) == 4:
        return shape == kron
    return len(shape) >= 2 and shape[0] == kron[0] and math.prod(shape[1:]) == kron[1]


def _check_fits(t, name, shape) -> None:
    if not fits(t, shape):
        raise LoraError(f"LoKr module {name} (kron(w1, w2) of shape {kron_shape(t)}) does not fit the layer it "
                        f"names, whose weight has shape {tuple(shape)}: the file was trained on another model.")


def is_zero(t: dict) -> bool:
    """True when a factor is all zeros (the delta is then zero)."""
    def zero(*parts):
        return any(not t[p].any() for p in parts)
    w1 = zero("lokr_w1") if "lokr_w1" in t else zero("lokr_w1_a", "lokr_w1_b")
    if "lokr_w2" in t:
        return w1 or zero("lokr_w2")
    return w1 or zero("lokr_w2_a", "lokr_w2_b", *(("lokr_t2",) if "lokr_t2" in t else ()))


def _param(t, part, device, requires_grad=True) -> torch.Tensor:
    # ai-toolkit holds fp32 trainable parameters while it samples: fresh, aligned fp32 copies (CPU kernels can
    # round differently on views into a file's buffer), with the parameters' requires_grad flag.
    return t[part].to(device).float().clone().requires_grad_(requires_grad)


def _factors(t, device):
    """(w1, w2_or_w2a, w2b_or_None) as `LokrModule._get_delta_factors` builds them (fp32; w1 = w1_a @ w1_b)."""
    w1 = _param(t, "lokr_w1", device) if "lokr_w1" in t else _param(t, "lokr_w1_a", device) @ _param(
        t, "lokr_w1_b", device)
    if "lokr_w2" in t:
        return w1, _param(t, "lokr_w2", device), None
    return w1, _param(t, "lokr_w2_a", device), _param(t, "lokr_w2_b", device)


def _scale_tensor(t, device) -> torch.Tensor:
    return torch.tensor(scale(t), dtype=torch.float32, device=device)  # `_runtime_scale`


def delta(t: dict, device, shape=None) -> torch.Tensor:
    """`LokrModule.get_weight(orig_weight)`: `make_kron(w1, w2, scale)` in fp32 on `device`, reshaped to `shape`."""
    with torch.no_grad():
        w1, w2a, w2b = _factors(t, device)
        if w2b is None:
            w2 = w2a
        elif "lokr_t2" in t:
            w2 = torch.einsum('i j k l, i p, j r -> p r k l', _param(t, "lokr_t2", device), w2a, w2b)
        else:
            w2 = w2a @ w2b
        if len(w2.shape) == 4:  # make_kron
            w1 = w1.unsqueeze(2).unsqueeze(2)
        w2 = w2.contiguous()
        weight = torch.kron(w1, w2) * _scale_tensor(t, device)
        return weight if shape is None else weight.reshape(tuple(shape))


def weight_term(t: dict, multiplier: float, device, shape=None, name: str = "?") -> torch.Tensor:
    """`lokr_weight * merge_weight`: the fp32 term `merge_in` adds to the fp32 weight (of shape `shape`)."""
    if shape is not None:
        _check_fits(t, name, shape)
    return delta(t, device, shape) * multiplier


def _multiplier_tensor(multiplier: float, device) -> torch.Tensor:
    # the network's `torch_multiplier` (one sample at a time: a 1-element fp32 tensor), averaged as LoKr does
    return torch.mean(torch.tensor((float(multiplier),)).to(device, dtype=torch.float32))


def branch(t: dict, module: torch.nn.Module, multiplier: float, name: str = "?"):
    """ai-toolkit's unmerged LoKr forward on `module`. A Linear (or quantized linear) gets `term(x, dtype)`, the
    value added to the layer's output (`_call_forward_fast_linear`, computed in that output dtype); a Conv2d gets a
    `ConvLokrBranch`, whose forward replaces the layer's (`_call_forward`'s legacy path, see `conv_forward`)."""
    if type(module).__name__ == "Conv2d":
        _check_fits(t, name, module.weight.shape)
        return ConvLokrBranch(module, delta(t, module.weight.device, module.weight.shape),
                              _multiplier_tensor(multiplier, module.weight.device))
    if not hasattr(module, "in_features"):
        raise LoraError(f"LoKr module {name} targets a {type(module).__name__} layer, which ai-toolkit's LoKr "
                        "cannot run unmerged (only Linear and unquantized Conv2d layers).")
    device = module.weight.device
    shape = (module.out_features, module.in_features)
    _check_fits(t, name, shape)
    with torch.no_grad():
        w1, w2a, w2b = _factors(t, device)
    in_m, in_n = w1.shape[1], (w2a if w2b is None else w2b).shape[1]
    runtime_scale = _scale_tensor(t, device)
    torch_multiplier = _multiplier_tensor(multiplier, device)

    def term(x, dtype):
        compute_dtype = dtype  # the base output's dtype
        x_ = x.to(compute_dtype) if x.dtype != compute_dtype else x
        a = w1.to(compute_dtype)
        w2_a = w2a.to(compute_dtype)
        w2_b = None if w2b is None else w2b.to(compute_dtype)
        X = x_.unflatten(-1, (in_m, in_n))
        if w2_b is None:
            tmp = torch.einsum('...qs,os->...qo', X, w2_a)
        else:
            tmp = torch.einsum('...qs,rs->...qr', X, w2_b)
            tmp = torch.einsum('...qr,or->...qo', tmp, w2_a)
        out = torch.einsum('...qo,pq->...po', tmp, a * runtime_scale)
        out = out.flatten(-2, -1)
        return out * torch_multiplier.to(compute_dtype)
    return term


class ConvLokrBranch:
    """One LoKr module's share of a Conv2d's replaced forward: `lokr_weight.to(W.dtype) * multiplier`."""
    replaces_forward = True

    def __init__(self, module, delta_fp32: torch.Tensor, multiplier: torch.Tensor):
        self.module, self.delta, self.multiplier = module, delta_fp32, multiplier

    def weight_add(self, weight: torch.Tensor) -> torch.Tensor:
        return self.delta.to(dtype=weight.dtype) * self.multiplier


def conv_forward(module: torch.nn.Conv2d, x: torch.Tensor, branches) -> torch.Tensor:
    """`LokrModule._call_forward` for a Conv2d: `conv2d(x, W + lokr_weight * multiplier, bias)` in the weight's dtype,
    cast back to the input's dtype (several LoKr files on one layer add their terms in order)."""
    orig_dtype = x.dtype
    orig_weight = module.weight.data.detach()
    if orig_weight.device != x.device:
        orig_weight = orig_weight.to(x.device)
    if x.dtype != orig_weight.dtype:
        x = x.to(dtype=orig_weight.dtype)
    weight = orig_weight
    for b in branches:
        weight = weight + b.weight_add(orig_weight)
    bias = None
    if getattr(module, "bias", None) is not None:
        bias = module.bias.data.detach().to(weight.device, dtype=weight.dtype)
    output = F.conv2d(x, weight.view(orig_weight.shape), bias, stride=module.stride, padding=module.padding,
                      dilation=module.dilation, groups=module.groups)
    return output.to(orig_dtype)
