"""Quantized bases: optimum-quanto qfloat8 applied as ai-toolkit applies it (same bits as calling quanto directly
after the cast, every Linear of the FLUX transformer and of the T5), the fp32 LoRA branch over a QLinear bit for bit,
restore leaving the quantized weights untouched, and a clear error without optimum-quanto.

Tiny random models built from configs; no downloads. Skipped (with the reason) when optimum-quanto is not
installed, except the missing-package tests, which simulate its absence in a subprocess.
"""
from __future__ import annotations

import fnmatch
import os
import subprocess
import sys

import pytest
import torch

from aitk_pack.pipelines.errors import LoraError, QuantizationError
from aitk_pack.pipelines.lora.bind import BoundLora, MatchReport, Target
from aitk_pack.pipelines.lora.merge import WeightPatcher
from aitk_pack.pipelines.lora.parse import LoraModule
from aitk_pack.pipelines.quantize import QuantizeRule, is_quantized, quantize_component, resolve_qtype

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import optimum.quanto  # noqa: F401
    HAVE_QUANTO = True
except ImportError:
    HAVE_QUANTO = False
needs_quanto = pytest.mark.skipif(not HAVE_QUANTO, reason="optimum-quanto is not installed "
                                  "(pip install -r requirements-test.txt)")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def tiny_flux():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True).eval()


def tiny_t5():
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=200, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                   is_encoder_decoder=False)
    return T5EncoderModel(cfg).eval()


MODELS = {"flux": tiny_flux, "t5": tiny_t5}


def flux_inputs(dtype):
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 16, 16, generator=g).to(dtype),
                encoder_hidden_states=torch.randn(1, 8, 32, generator=g).to(dtype),
                pooled_projections=torch.randn(1, 32, generator=g).to(dtype),
                timestep=torch.tensor([0.5], dtype=dtype), guidance=torch.tensor([3.5], dtype=dtype),
                img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), return_dict=False)


def forward(name, model, dtype):
    with torch.no_grad():
        if name == "flux":
            return model(**flux_inputs(dtype))[0]
        return model(torch.tensor([[5, 17, 3, 99, 1]])).last_hidden_state


def reference_quantized(name, dtype):
    """What ai-toolkit's FLUX loader does, written against optimum-quanto directly: cast, quantize, freeze."""
    from optimum.quanto import freeze, qfloat8, quantize

    model = MODELS[name]().to(dtype=dtype)
    quantize(model, weights=qfloat8)
    freeze(model)
    return model


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor (equality of bits, not of values: -0.0 and NaN payloads count)."""
    return t.detach().contiguous().view(torch.uint8).clone()


def qstate(model) -> dict:
    """Every quantized layer's fp8 data, scale and bias as bytes."""
    out = {}
    for name, m in model.named_modules():
        if is_quantized(m):
            out[name] = (bits(m.weight._data), bits(m.weight._scale), None if m.bias is None else bits(m.bias))
    return out


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name]):
            assert (x is None) == (y is None), name
            assert x is None or torch.equal(x, y), name


# ------------------------------------------------------------------------------------------------ (a) same bits
@needs_quanto
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", MODELS)
def test_quantized_weights_are_the_bits_quanto_gives_after_the_cast(name, dtype):
    model = MODELS[name]()
    quantize_component(model, "qfloat8", DTYPES[dtype])
    ref = reference_quantized(name, DTYPES[dtype])
    got, want = qstate(model), qstate(ref)
    assert got and len(got) == len(want)
    assert_same_state(got, want)
    layer = next(m for m in model.modules() if is_quantized(m))
    assert layer.weight._data.dtype == torch.float8_e4m3fn and layer.weight._scale.dtype == DTYPES[dtype]
    assert layer.weight._scale.shape == (layer.out_features, 1)  # per output row
    assert not any(p.requires_grad for p in model.parameters())
    assert torch.equal(bits(forward(name, model, DTYPES[dtype])), bits(forward(name, ref, DTYPES[dtype])))


@needs_quanto
def test_casting_after_quantizing_gives_other_bits():
    """The order is observable: quantized in fp32 and cast to bf16 afterwards is not what ai-toolkit holds."""
    from optimum.quanto import freeze, qfloat8, quantize

    late = tiny_flux()
    quantize(late, weights=qfloat8)
    freeze(late)
    late.to(dtype=torch.bfloat16)
    model = tiny_flux()
    quantize_component(model, "qfloat8", torch.bfloat16)
    got, other = qstate(model), qstate(late)
    assert any(not torch.equal(got[n][0], other[n][0]) or not torch.equal(got[n][1], other[n][1]) for n in got)


# ------------------------------------------------------------------------------------------- (b) which modules
@needs_quanto
@pytest.mark.parametrize("name", MODELS)
def test_every_linear_is_quantized_and_nothing_else(name):
    model = MODELS[name]()
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    others = {n: type(m) for n, m in model.named_modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.Embedding))}
    report = quantize_component(model, "qfloat8", torch.bfloat16)
    assert report.failed == {}
    assert sorted(report.quantized) == sorted(linears)
    assert sorted(n for n, m in model.named_modules() if is_quantized(m)) == sorted(linears)
    assert all(type(model.get_submodule(n)) is cls for n, cls in others.items())
    if name == "flux":  # not just the blocks: embedders, modulation and the output layers too
        assert {"x_embedder", "context_embedder", "time_text_embed.guidance_embedder.linear_1",
                "transformer_blocks.0.norm1.linear", "single_transformer_blocks.0.proj_out", "norm_out.linear",
                "proj_out"} <= set(report.quantized)
    else:
        assert len(linears) == 14  # 2 blocks x (q, k, v, o, wi_0, wi_1, wo)


@needs_quanto
def test_exclude_patterns_match_block_relative_names_inside_blocks_as_quantize_model_does():
    model = tiny_flux()
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    rule = QuantizeRule(exclude=("*to_q", "x_embedder", "attn.to_k"),
                        blocks=("transformer_blocks", "single_transformer_blocks"))
    report = quantize_component(model, "qfloat8", torch.bfloat16, rule)
    # "attn.to_k" matches inside the block pass only; the whole-model pass (absolute names) quantizes it anyway.
    expected = [n for n in linears if not fnmatch.fnmatch(n, "*to_q") and n != "x_embedder"]
    assert sorted(report.quantized) == sorted(expected)
    assert "transformer_blocks.0.attn.to_k" in report.quantized
    last_of_block_pass = report.quantized.index("single_transformer_blocks.0.proj_out")
    assert report.quantized.index("transformer_blocks.0.attn.to_k") > last_of_block_pass


@needs_quanto
def test_include_is_an_allowlist():
    model = tiny_t5()
    report = quantize_component(model, "qfloat8", None, QuantizeRule(include=("encoder.block.1.*",)))
    assert report.quantized and all(n.startswith("encoder.block.1.") for n in report.quantized)
    assert not is_quantized(model.encoder.block[0].layer[0].SelfAttention.q)
    assert model.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float32  # dtype None: no cast


@pytest.mark.parametrize("qtype,words", [("int8", "torchao"), ("nvfp4", "nvfp4"), ("convrot8", "convrot"),
                                         ("qfloat8|ostris/ara.safetensors", "accuracy-recovery"),
                                         ("qint9", "does not offer")])
def test_other_qtypes_are_refused_by_name(qtype, words):
    with pytest.raises(QuantizationError) as err:
        resolve_qtype(qtype)
    assert words in str(err.value) and "qfloat8" in str(err.value)


# ----------------------------------------------------------------------------------- (c) the branch over QLinear
def lora_module(path, rank, in_f, out_f, alpha=None, fullrank=False, seed=2):
    g = torch.Generator().manual_seed(seed)
    if fullrank:
        return LoraModule(path, "kohya", {"down": torch.randn(out_f, in_f, generator=g) * 0.1})
    tensors = {"down": torch.randn(rank, in_f, generator=g) * 0.3, "up": torch.randn(out_f, rank, generator=g) * 0.3}
    if alpha is not None:
        tensors["alpha"] = torch.tensor(float(alpha))
    return LoraModule(path, "kohya" if alpha is not None else "peft", tensors)


def bound(*targets):
    return BoundLora("test.safetensors", list(targets), MatchReport(file="test.safetensors"), info=None)


def branch_term(x, mod, multiplier, dtype):
    """ai-toolkit's `_call_forward` times the multiplier, rounded once: ((up(down(x.float())) * scale) * m).to(dtype)
    (a full-rank module has no `lora_up`)."""
    hidden = torch.nn.functional.linear(x.float(), mod.tensors["down"].float())
    lx = hidden if "up" not in mod.tensors else torch.nn.functional.linear(hidden, mod.tensors["up"].float())
    lx = lx * torch.tensor(mod.scale, dtype=torch.float32)
    lx = lx * torch.tensor(multiplier, dtype=torch.float32)
    return lx.to(dtype)


def ai_toolkit_branch(qlinear, x, mod, multiplier):
    """`ToolkitModuleMixin.forward` over the quantized layer: org + the rounded fp32 term."""
    org = qlinear(x)
    return org + branch_term(x, mod, multiplier, org.dtype)


@needs_quanto
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["peft", "kohya_alpha", "fullrank"])
def test_branch_over_qlinear_is_ai_toolkits_fp32_branch_bit_for_bit(dtype, kind):
    model = tiny_flux()
    quantize_component(model, "qfloat8", DTYPES[dtype])
    path = "transformer_blocks.0.attn.to_q"
    layer = model.get_submodule(path)
    assert type(layer).__name__ == "QLinear"
    mod = lora_module(path, 4, layer.in_features, layer.out_features, alpha=2 if kind == "kohya_alpha" else None,
                      fullrank=kind == "fullrank")
    x = torch.randn(2, 7, layer.in_features, generator=torch.Generator().manual_seed(5)).to(DTYPES[dtype])
    with torch.no_grad():
        plain = layer(x)
        want = ai_toolkit_branch(layer, x, mod, 0.7)
    patcher = WeightPatcher({"transformer": model})
    assert patcher.quantized
    patcher.set_stack([(bound(Target("transformer", path, mod)), 0.7)], "merge")  # quantized: never merged
    assert patcher.signature[0] == "quantized" and patcher.pristine == {}
    with torch.no_grad():
        got = layer(x)
    assert got.dtype == DTYPES[dtype]
    assert torch.equal(bits(got), bits(want))
    assert not torch.equal(got, plain)
    if kind == "kohya_alpha":
        assert mod.scale == 0.5


@needs_quanto
def test_two_loras_on_one_qlinear_add_their_rounded_branches_in_chain_order():
    model = tiny_t5()
    quantize_component(model, "qfloat8", torch.bfloat16)
    path = "encoder.block.0.layer.1.DenseReluDense.wo"
    layer = model.get_submodule(path)
    a = lora_module(path, 4, layer.in_features, layer.out_features, seed=3)
    b = lora_module(path, 2, layer.in_features, layer.out_features, alpha=1, seed=4)
    x = torch.randn(1, 5, layer.in_features, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    with torch.no_grad():
        # two networks wrap the layer one inside the other: (org + term_a) + term_b
        want = (layer(x) + branch_term(x, a, 1.0, torch.bfloat16)) + branch_term(x, b, -0.4, torch.bfloat16)
    patcher = WeightPatcher({"text_encoder_2": model})
    patcher.set_stack([(bound(Target("text_encoder_2", path, a)), 1.0), (bound(Target("text_encoder_2", path, b)), -0.4)])
    with torch.no_grad():
        got = layer(x)
    assert torch.equal(bits(got), bits(want))


# ------------------------------------------------------------------------------------------- (d) restore exactly
@needs_quanto
@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_and_remove_leave_the_quantized_layers_bit_identical(dtype):
    model = tiny_flux()
    quantize_component(model, "qfloat8", DTYPES[dtype])
    before_state, before_out = qstate(model), forward("flux", model, DTYPES[dtype])
    paths = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.2", "single_transformer_blocks.0.proj_mlp"]
    targets = [Target("transformer", p, lora_module(p, 4, model.get_submodule(p).in_features,
                                                    model.get_submodule(p).out_features, seed=i))
               for i, p in enumerate(paths)]
    patcher = WeightPatcher({"transformer": model})
    patcher.set_stack([(bound(*targets), 1.0)])
    assert not torch.equal(forward("flux", model, DTYPES[dtype]), before_out)
    assert_same_state(qstate(model), before_state)  # applying never writes the quantized weights
    patcher.set_stack([])
    assert all("forward" not in model.get_submodule(p).__dict__ for p in paths)
    assert_same_state(qstate(model), before_state)
    assert torch.equal(bits(forward("flux", model, DTYPES[dtype])), bits(before_out))


@needs_quanto
def test_a_full_delta_on_a_quantized_layer_is_refused_and_nothing_stays_applied():
    model = tiny_flux()
    quantize_component(model, "qfloat8", torch.bfloat16)
    before = qstate(model)
    p, q = "transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k"
    layer = model.get_submodule(q)
    ok = Target("transformer", p, lora_module(p, 4, layer.in_features, layer.out_features))
    full = Target("transformer", q, LoraModule(q, "kohya", {"diff": torch.ones(layer.out_features, layer.in_features)}))
    patcher = WeightPatcher({"transformer": model})
    with pytest.raises(LoraError, match="quantized"):
        patcher.set_stack([(bound(ok, full), 1.0)])
    assert "forward" not in model.get_submodule(p).__dict__ and patcher.signature == ()
    assert_same_state(qstate(model), before)


def test_an_unquantized_base_keeps_merging():
    layer = torch.nn.Linear(8, 6)
    patcher = WeightPatcher({"unet": torch.nn.Sequential(layer)})
    assert not patcher.quantized
    mod = lora_module("0", 2, 8, 6)
    patcher.set_stack([(bound(Target("unet", "0", mod)), 1.0)])
    assert patcher.signature[0] == "merge" and patcher.pristine


# ------------------------------------------------------------------------------------- (e) without optimum-quanto
def run_without_quanto(code: str) -> subprocess.CompletedProcess:
    prelude = "import sys\nsys.modules['optimum.quanto'] = None  # import optimum.quanto now raises ImportError\n"
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_missing_optimum_quanto_is_a_clear_error_and_the_rest_still_runs():
    out = run_without_quanto(
        "import torch\n"
        "import pipelines\n"
        "from pipelines.errors import AitkError, QuantizationError\n"
        "from pipelines.lora.merge import WeightPatcher\n"
        "from pipelines.quantize import quantize_component, is_quantized\n"
        "layer = torch.nn.Linear(4, 4)\n"
        "assert not WeightPatcher({'unet': torch.nn.Sequential(layer)}).quantized and not is_quantized(layer)\n"
        "try:\n"
        "    quantize_component(torch.nn.Sequential(layer), 'qfloat8', torch.bfloat16)\n"
        "except QuantizationError as e:\n"
        "    assert isinstance(e, AitkError)\n"
        "    print('MESSAGE:', e)\n")
    assert out.returncode == 0, out.stderr
    message = out.stdout.split("MESSAGE:", 1)[1]
    assert "optimum-quanto" in message and 'pip install "optimum-quanto>=0.2.4"' in message


def test_the_pack_never_imports_optimum_quanto_unasked():
    code = ("import sys, pipelines, pipelines.quantize, pipelines.lora.merge\n"
            "print('optimum.quanto' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_quantization_choice_per_model():
    """"match training" is the preset's qtype; SD is never quantized by ai-toolkit, so asking for it is refused."""
    from aitk_pack.pipelines import engine
    from aitk_pack.pipelines.errors import QuantizationError
    from aitk_pack.pipelines.registry import get_spec

    assert engine.pick_quantization(get_spec("flux"), "match training") == "qfloat8"
    assert engine.pick_quantization(get_spec("flux"), "none") is None
    assert engine.pick_quantization(get_spec("sdxl"), "match training") is None
    with pytest.raises(QuantizationError, match="never quantized"):
        engine.pick_quantization(get_spec("sdxl"), "qfloat8")
    with pytest.raises(QuantizationError, match="Choose one of: match training, none, qfloat8"):
        engine.pick_quantization(get_spec("flux"), "float8")
