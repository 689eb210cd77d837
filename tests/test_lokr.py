"""LoKr files (ai-toolkit `network.type: lokr`) apply exactly as ai-toolkit applies them.

The expectations are written here from ai-toolkit's code (`toolkit/models/lokr.py`, 27a03a91), never with the
pack's functions: the delta `kron(w1, w2) * scale` (scale 1 for full w1 and w2, else alpha / lora_dim) merged as
`(W.float() + m * delta).to(W.dtype)`, and the unmerged forward (`_call_forward_fast_linear` for Linears, the
legacy conv path for Conv2d). Files are written in ai-toolkit's key layout by tests/fixtures/lokr_files.py.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from aitk_pack.pipelines import engine
from tests.fixtures import tiny_sd as tiny
from aitk_pack.pipelines.errors import LoraError
from aitk_pack.pipelines.lora.parse import parse_tensors
from tests import reference
from tests.conftest import DEVICE, TRIGGER
from tests.fixtures.lokr_files import AITK_FULL_RANK, lokr_tensors, make_lokr, make_lokr_for_module
from tests.test_parity import DTYPES, TE_PREFIXES, node_pixels

# name -> make_lokr kwargs. "full": ai-toolkit's default (`lokr_full_rank: true`: full w1/w2, scale 1, alpha 1e10);
# "factor": `lokr_full_rank: false`, linear 4 / alpha 2, conv 4 / alpha 8: factorised w2 (scale 0.5 and 2) where
# 4 < max(out_k, in_n) / 2, full w2 (scale 1) elsewhere, in one file.
FILES = {
    "full": dict(text=True),
    "factor": dict(linear=4, linear_alpha=2, conv_dim=4, conv_alpha=8, text=True, seed=5, gain=1.5),
    "full_fp16": dict(dtype=torch.float16),  # alpha 9999999999 saved as inf: unused, must not count as damage
}


STEPS = 3  # a short trajectory keeps the 20 renders of this module quick; still several UNet calls per image


def lokr_name(model, form):
    return f"lokr_{model}_{form}"


@pytest.fixture(scope="module")
def lokr_files(models_dir):
    """Writes the LoKr files into the session's models folder (loras/) for this module, and removes them after."""
    paths = []
    for model in ("sd15", "sdxl"):
        pipe = tiny.BUILDERS[model](0)
        for form, kwargs in FILES.items():
            path = os.path.join(models_dir, "loras", lokr_name(model, form) + ".safetensors")
            save_file(make_lokr(pipe, model, **kwargs), path, tiny.aitk_metadata(model, TRIGGER, form))
            paths.append(path)
    yield {os.path.basename(p)[: -len(".safetensors")]: p for p in paths}
    for path in paths:
        os.remove(path)


# ---------------------------------------------------------------- the formula, written out from ai-toolkit


def module_tensors(state_dict):
    """name -> {part: tensor} for the LoKr modules of a state dict."""
    out = {}
    for key, value in state_dict.items():
        name, part = key.rsplit(".", 1)
        out.setdefault(name, {})[part] = value
    return out


def ref_scale(t) -> float:
    """`LokrModule.__init__`: alpha = lora_dim if None/0; alpha = lora_dim when use_w1 and use_w2; scale = a / dim."""
    if "lokr_w1" in t and "lokr_w2" in t:
        return 1.0
    dim = (t["lokr_t2"].shape[0] if "lokr_t2" in t else t["lokr_w2_a"].shape[1] if "lokr_w2_a" in t
           else t["lokr_w1_a"].shape[1])
    alpha = float(t["alpha"].float().item()) if "alpha" in t else 0.0
    return (alpha or dim) / dim


def ref_delta(t, shape) -> torch.Tensor:
    """`get_weight`: kron(w1, w2) * scale (fp32, the scale an fp32 tensor), reshaped to the weight's shape. The
    Kronecker product by broadcasting: K[i·b + p, j·d + q, …] = w1[i, j] · w2[p, q, …] (one product per element)."""
    f = {k: v.float().clone() for k, v in t.items()}
    w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
    if "lokr_w2" in f:
        w2 = f["lokr_w2"]
    elif "lokr_t2" in f:
        w2 = torch.einsum("i j k l, i p, j r -> p r k l", f["lokr_t2"], f["lokr_w2_a"], f["lokr_w2_b"])
    else:
        w2 = f["lokr_w2_a"] @ f["lokr_w2_b"]
    (a, c), (b, d), rest = w1.shape, w2.shape[:2], tuple(w2.shape[2:])
    ones = (1,) * len(rest)
    kron = (w1.reshape(a, 1, c, 1, *ones) * w2.reshape(1, b, 1, d, *rest)).reshape(a * b, c * d, *rest)
    return (kron * torch.tensor(ref_scale(t), dtype=torch.float32)).reshape(shape)


def pack_term(parts, multiplier, shape):
    """The pack's fp32 merge term for one module's tensors (parts: suffix -> tensor)."""
    parsed = parse_tensors({f"lora_unet_x.{k}": v for k, v in parts.items()})
    (mod,) = parsed.modules.values()
    assert mod.kind == "lokr" and mod.problem() is None and not parsed.leftovers
    return mod.weight_term(multiplier, "cpu", shape)


LAYERS = {
    "linear": lambda: torch.nn.Linear(96, 64),
    "linear_odd": lambda: torch.nn.Linear(90, 36),
    "conv3x3": lambda: torch.nn.Conv2d(64, 128, 3, padding=1),
    "conv1x1": lambda: torch.nn.Conv2d(128, 64, 1),
}
FORMS = {  # (lora_dim, extra kwargs)
    "full_rank": (AITK_FULL_RANK, {}),
    "full_w2_small_dim": (8, {}),                       # lora_dim >= max(out_k, in_n) / 2: full w2, scale 1
    "factorised_w2": (2, {}),
    "factorised_w1_and_w2": (2, dict(decompose_both=True)),  # LyCORIS's form (ai-toolkit never writes it)
    "tucker": (2, dict(use_cp=True)),                   # LyCORIS's form (ai-toolkit never writes it)
    "factor_4": (2, dict(factor=4)),
}


@pytest.mark.parametrize("alpha", [None, 0, 1.0, 2.5, 16.0])
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("layer", list(LAYERS))
def test_delta_is_ai_toolkits_formula_bit_for_bit(layer, form, alpha):
    module = LAYERS[layer]()
    dim, kwargs = FORMS[form]
    parts = lokr_tensors(module, dim, alpha, gen=torch.Generator().manual_seed(3), **kwargs)
    shape = tuple(module.weight.shape)
    want = ref_delta(parts, shape)
    for multiplier in (1.0, 0.7, -1.3):
        got = pack_term(parts, multiplier, shape)
        assert got.dtype == torch.float32 and tuple(got.shape) == shape
        assert torch.equal(got, want * multiplier), (layer, form, alpha, multiplier)
    factorised = any(k.endswith("_a") for k in parts)
    if factorised and alpha:
        assert ref_scale(parts) == alpha / dim  # the alpha is used (and the file holds it)
    elif not factorised:
        assert ref_scale(parts) == 1.0


def test_generic_module_file_merges_like_ai_toolkit():
    """A LoKr file for any torch module (the engine is family-agnostic): every Linear/Conv2d gets its delta."""
    root = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Conv2d(16, 32, 3), torch.nn.Linear(64, 128))
    sd = make_lokr_for_module(root, linear=4, linear_alpha=1, conv=4, conv_alpha=4)
    parsed = parse_tensors(sd)
    assert set(parsed.modules) == {"lora_unet_0", "lora_unet_1", "lora_unet_2"} and not parsed.leftovers
    for name, module in zip(("lora_unet_0", "lora_unet_1", "lora_unet_2"), root):
        parts = module_tensors({k: v for k, v in sd.items() if k.startswith(name + ".")})[name]
        assert torch.equal(parsed.modules[name].weight_term(1.0, "cpu", module.weight.shape),
                           ref_delta(parts, module.weight.shape))


def test_wrong_target_shape_is_a_lora_error_naming_the_module():
    parts = lokr_tensors(torch.nn.Linear(96, 64), 2, 1.0)  # factorised: only the target tells the shape
    mod = next(iter(parse_tensors({f"lora_unet_attn_to_q.{k}": v for k, v in parts.items()}).modules.values()))
    assert mod.expected_shape() is None
    with pytest.raises(LoraError, match="lora_unet_attn_to_q"):
        mod.weight_term(1.0, "cpu", (64, 128))
    with pytest.raises(LoraError, match="lora_unet_attn_to_q"):
        mod.branch(torch.nn.Linear(128, 64), 1.0)


# ---------------------------------------------------------------- end to end through the nodes


def merge_reference(parts_by_model, state_dict, multiplier, te_prefixes) -> int:
    """ai-toolkit's `merge_in` for every LoKr module: `(W.float() + m * delta).to(W.dtype)`, one rounding."""
    names = reference.kohya_module_names(parts_by_model, te_prefixes)
    modules = module_tensors(state_dict)
    with torch.no_grad():
        for name, t in modules.items():
            weight = names[name].weight
            delta = ref_delta(t, weight.shape).to(weight.device)
            weight.data.copy_((weight.float() + multiplier * delta).to(weight.dtype))
    return len(modules)


def lokr_linear_forward(org_forward, t: dict, multiplier: float):
    """ai-toolkit's unmerged LoKr Linear forward (`_call_forward_fast_linear`): the factors in the base output's
    dtype, `x` unflattened into the Kronecker blocks, `(base + delta * mean(multiplier)).to(x.dtype)`."""
    params = {k: v.float().clone() for k, v in t.items() if k != "alpha"}
    scale = torch.tensor(ref_scale(t), dtype=torch.float32)                      # `_runtime_scale`
    mult = torch.mean(torch.tensor((multiplier,)).to(dtype=torch.float32))       # mean(torch_multiplier)
    w1 = params["lokr_w1"]
    w2 = params.get("lokr_w2", params.get("lokr_w2_a"))
    w2b = params.get("lokr_w2_b")

    def forward(x):
        base = org_forward(x)
        cd = base.dtype
        a, w2a = w1.to(cd), w2.to(cd)
        X = x.to(cd).unflatten(-1, (w1.shape[1], (w2 if w2b is None else w2b).shape[1]))
        if w2b is None:
            tmp = torch.einsum("...qs,os->...qo", X, w2a)
        else:
            tmp = torch.einsum("...qs,rs->...qr", X, w2b.to(cd))
            tmp = torch.einsum("...qr,or->...qo", tmp, w2a)
        delta = torch.einsum("...qo,pq->...po", tmp, a * scale).flatten(-2, -1)
        return (base + delta * mult.to(cd)).to(x.dtype)
    return forward


def branch_reference(parts_by_model, state_dict, multiplier, te_prefixes) -> int:
    """ai-toolkit's unmerged LoKr forward, patched on each layer like `apply_to`: Linears run
    `_call_forward_fast_linear` (in the output's dtype), Conv2d layers the legacy `_call_forward`."""
    names = reference.kohya_module_names(parts_by_model, te_prefixes)
    modules = module_tensors(state_dict)
    for name, t in modules.items():
        layer = names[name]
        mult = torch.mean(torch.tensor((multiplier,)).to(dtype=torch.float32))  # mean(torch_multiplier)
        if isinstance(layer, torch.nn.Conv2d):
            delta = ref_delta(t, layer.weight.shape)

            def forward(x, _layer=layer, _delta=delta, _mult=mult):
                w = _layer.weight.data.detach()
                weight = w + _delta.to(dtype=w.dtype) * _mult
                bias = None if _layer.bias is None else _layer.bias.data.detach().to(dtype=w.dtype)
                out = F.conv2d(x.to(w.dtype), weight, bias, _layer.stride, _layer.padding, _layer.dilation,
                               _layer.groups)
                return out.to(x.dtype)
        else:
            forward = lokr_linear_forward(layer.forward, t, multiplier)
        layer.forward = forward
    return len(modules)


def reference_pixels(models_dir, lokr_files, model, dtype, name, multiplier, prompt, branch=False):
    parts = reference.load_components(os.path.join(models_dir, "diffusers", f"tiny-{model}"), model == "sdxl",
                                      DTYPES[dtype], DEVICE)
    apply = branch_reference if branch else merge_reference
    assert apply(parts, load_file(lokr_files[name]), multiplier, TE_PREFIXES[model])
    return reference.preview(parts, prompt, "", 42, STEPS, 6.0, 64, 64)


@pytest.mark.parametrize("strength", [1.0, 0.7])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model", ["sd15", "sdxl"])
@pytest.mark.parametrize("form", ["full", "factor"])
def test_lokr_matches_reference_merge(nodes, models_dir, lokr_files, form, model, dtype, strength):
    name, prompt = lokr_name(model, form), "photo of a ohwx dog"
    got = node_pixels(nodes, model, dtype, [(name, strength)], prompt=prompt, steps=STEPS)
    want = reference_pixels(models_dir, lokr_files, model, dtype, name, strength, prompt)
    if strength == 1.0 and dtype == "fp32":
        base = node_pixels(nodes, model, dtype, prompt=prompt, steps=STEPS)
        assert np.abs(want.astype(int) - base).max() > 10, "the LoKr must visibly change the image"
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_lokr_branch_matches_reference(nodes, models_dir, lokr_files, model, dtype):
    """Mixed `--m` multipliers: ai-toolkit runs LoKr unmerged. In bf16 that differs from the merged render."""
    name, prompt = lokr_name(model, "factor"), "a blue car"
    got = node_pixels(nodes, model, dtype, [(name, 0.8)], prompt=prompt, lora_mode="fp32 branch", steps=STEPS)
    want = reference_pixels(models_dir, lokr_files, model, dtype, name, 0.8, prompt, branch=True)
    np.testing.assert_array_equal(got, want)
    if dtype == "bf16":
        merged = node_pixels(nodes, model, dtype, [(name, 0.8)], prompt=prompt, steps=STEPS)
        assert (merged != got).any(), "in bf16 the merged and unmerged LoKr paths round differently"


# ---------------------------------------------------------------- the match report and damaged files


@pytest.mark.parametrize("form", list(FILES))
@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_every_lokr_key_is_accounted_for(lokr_files, model, form):
    path = lokr_files[lokr_name(model, form)]
    state = load_file(path)
    h = engine.load(model, base=f"tiny-{model}", dtype="fp32", device="cpu").with_lora(path, 1.0)
    report = h.loras[-1].bound.report
    assert report.total_keys == len(state) and report.applied_keys == len(state), report.summary()
    assert report.applied_modules == len(module_tensors(state))
    assert not report.warnings() and not report.unsupported
    if FILES[form].get("text"):
        assert {"unet", "text_encoder"} <= set(report.applied)


def test_damaged_lokr_module_is_refused_naming_it(nodes, lokr_files, models_dir):
    state = load_file(lokr_files[lokr_name("sd15", "factor")])
    name = sorted(k for k in state if k.endswith(".lokr_w2_b"))[0][: -len(".lokr_w2_b")]
    state[f"{name}.lokr_w2_b"] = torch.ones(3, state[f"{name}.lokr_w2_b"].shape[1])  # rank 3 against rank 4
    path = os.path.join(models_dir, "loras", "lokr_damaged.safetensors")
    save_file(state, path)
    try:
        load, apply, _ = nodes
        (handle,) = load.load(model="sd15", base="tiny-sd15", dtype="fp32", device=DEVICE)
        with pytest.raises(LoraError, match=f"damaged: module {name}: lokr_w2_a has rank 4 but lokr_w2_b"):
            apply.apply(pipeline=handle, lora_name="lokr_damaged.safetensors", strength=1.0)
    finally:
        os.remove(path)
