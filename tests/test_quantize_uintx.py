"""ai-toolkit's uint2..uint7 weights and its accuracy-recovery adapters ("3 bit with ARA", "4 bit with ARA" of the
Qwen-Image presets) against the hand-written reference (tests/reference_uintx.py): the layer math for every bit width
in fp32 and bf16; Qwen-Image through the library with `uint3|ostris/accuracy_recovery_adapters/...` (the adapter
file found in a fake Hugging Face cache, offline), with and without the user's LoRA, fp32 and bf16, bit for bit;
plain uint4; "match training" picking the ARA qtype from a run's config.yaml; and the refusals.

The tiny transformer's layers are 48 wide (not a multiple of 64: left full precision, adapter and all, as in
ai-toolkit) except the MLP outputs (192 in) and img_in (64 in), which are quantized.
"""
from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import reference_qwen as ref
from tests import reference_uintx as ref_uintx
from tests.fixtures import tiny_qwen
from tests.fixtures.fake_hub import fake_hub_repo
from tests.fixtures.model_roots import cached_roots
from tests.fixtures.pixels import levels, same

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.errors import QuantizationError
from aitk_pack.pipelines.quantize import QuantizeRule, is_quantized, quantize_component, uintx
from aitk_pack.pipelines.sources import ModelRoots

pytest.importorskip("optimum.quanto", reason="the Qwen presets quantize the text encoder with optimum-quanto")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SMALL = dict(width=64, height=64, steps=2, seed=7, guidance_scale=4.0)
PROMPT = "a red fox in the snow"
NEGATIVE = "blurry"
LORA = "qwen_image_lora.safetensors"
ARA_REPO = "ostris/accuracy_recovery_adapters"
ARA_FILE = "qwen_image_torchao_uint3.safetensors"
ARA = f"uint3|{ARA_REPO}/{ARA_FILE}"
ARA_MODULES = tiny_qwen.AITK_BLOCK + ("img_in",)
PLUS_ARA_FILE = "qwen_image_edit_2509_torchao_uint3.safetensors"
PLUS_ARA = f"uint3|{ARA_REPO}/{PLUS_ARA_FILE}"


def tiny_ara(transformer, rank=4, seed=5):
    """An adapter in ai-toolkit's saved layout: `diffusion_model.<path>.lora_A/B.weight`, one rank, no alpha."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    paths = [f"transformer_blocks.{i}.{m}" for i in range(tiny_qwen.N_BLOCKS) for m in tiny_qwen.AITK_BLOCK]
    for path in paths + ["img_in"]:
        linear = transformer.get_submodule(path)
        sd[f"diffusion_model.{path}.lora_A.weight"] = torch.randn(rank, linear.in_features, generator=gen) * 0.2
        sd[f"diffusion_model.{path}.lora_B.weight"] = torch.randn(linear.out_features, rank, generator=gen) * 0.2
    return sd


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    start = time.time()
    root = tmp_path_factory.mktemp("uintx_models")
    (root / "loras").mkdir()
    pipe = tiny_qwen.save("qwen_image", str(root / "diffusers" / "tiny-qwen_image"))
    sd, meta = tiny_qwen.peft_lora(pipe.transformer, seed=21)
    save_file(sd, str(root / "loras" / LORA), metadata=meta)
    save_file(tiny_ara(pipe.transformer), str(root / ARA_FILE))
    plus = tiny_qwen.save("qwen_image_edit_plus", str(root / "diffusers" / "tiny-qwen_image_edit_plus"))
    save_file(tiny_ara(plus.transformer, seed=6), str(root / PLUS_ARA_FILE))
    fake_hub_repo(str(root / "hf_cache"), ARA_REPO, {ARA_FILE: str(root / ARA_FILE),
                                                     PLUS_ARA_FILE: str(root / PLUS_ARA_FILE)})
    print(f"\n[uintx fixtures built in {time.time() - start:.1f} s]")
    return root


@pytest.fixture(scope="module")
def roots(models):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_CACHE", str(models / "hf_cache"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield from cached_roots(models, 8)
    mp.undo()


def render(roots, dtype, quantization, loras=()):
    handle = engine.load("qwen_image", base="tiny-qwen_image", dtype=dtype, device="cpu", roots=roots,
                         quantization=quantization)
    for name, strength in loras:
        handle = engine.apply_lora(handle, name, strength, roots=roots)
    return engine.generate(handle, PROMPT, **{**SMALL, "negative_prompt": NEGATIVE})[0]


def reference(models, dtype, bits, ara=True, strength=None):
    parts = ref.load_parts(str(models / "diffusers" / "tiny-qwen_image"), DTYPES[dtype], edit=False)
    if ara:
        adapted, quantized = ref_uintx.apply_ara(parts, load_file(str(models / ARA_FILE)), bits, DTYPES[dtype])
        assert adapted == len(ARA_MODULES) * 2 - 1 and quantized == 2 * tiny_qwen.N_BLOCKS + 1
    else:
        assert ref_uintx.quantize_uintx(parts, bits, DTYPES[dtype]) > 0
    if strength is not None:
        ref.branch_lora(parts, load_file(str(models / "loras" / LORA)), strength)
    return ref.preview_t2i(parts, PROMPT, NEGATIVE, SMALL["seed"], SMALL["steps"], SMALL["guidance_scale"],
                           SMALL["width"], SMALL["height"])


# ----------------------------------------------------------------------------------------------- the layer math
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("bits", range(2, 8))
def test_uintx_layer_matches_the_hand_reference(bits, dtype):
    torch.manual_seed(bits)
    model = torch.nn.Sequential(torch.nn.Linear(128, 24), torch.nn.Linear(24, 8)).to(DTYPES[dtype])
    with torch.no_grad():
        model[0].weight[3] = model[0].weight[3].abs() + 0.01   # an all-positive row: the range is extended to 0
        model[0].weight[5, :64] = 0                            # an all-zero group: scale clamps to eps
    weight = model[0].weight.detach().clone()
    x = torch.randn(3, 128).to(DTYPES[dtype])
    expect = torch.nn.functional.linear(x, ref_uintx.uintx_weight(weight, bits), model[0].bias)
    report = quantize_component(model, f"uint{bits}", None, QuantizeRule())
    assert report.quantized == ["0"], "24 in_features is not a multiple of 64: left full precision"
    assert isinstance(model[0], uintx.UIntXLinear) and is_quantized(model[0]) and not is_quantized(model[1])
    assert torch.equal(model[0].weight, ref_uintx.uintx_weight(weight, bits))
    with torch.no_grad():
        assert torch.equal(model[0](x), expect)
    assert model[0].uintx_codes.numel() == bits * 128 * 24 // 8   # bits per weight, packed


def test_the_weight_dtype_decides_the_rounding():
    torch.manual_seed(0)
    w = torch.randn(16, 128)
    assert not torch.equal(ref_uintx.uintx_weight(w.bfloat16(), 3).float(),
                           ref_uintx.uintx_weight(w, 3).bfloat16().float())


# ------------------------------------------------------------------------------------------- Qwen-Image + ARA
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_qwen_3_bit_with_ara_matches_reference(models, roots, dtype):
    got = render(roots, dtype, ARA)
    assert got.std() > 5
    same(got, reference(models, dtype, 3))


def test_qwen_3_bit_with_ara_and_a_lora_branch_matches_reference(models, roots):
    got = render(roots, "bf16", ARA, loras=[(LORA, 0.8)])
    assert levels(got, render(roots, "bf16", ARA)) > 0
    same(got, reference(models, "bf16", 3, strength=0.8))


def test_the_adapter_changes_the_picture(models, roots, capsys):
    ara = render(roots, "fp32", ARA)
    uint3 = render(roots, "fp32", "uint3")
    with capsys.disabled():
        print(f"\nQwen-Image tiny: uint3+ARA vs plain uint3 {levels(ara, uint3)} levels")
    assert levels(ara, uint3) > 0


def test_the_ara_base_quantizes_only_the_adapters_layers(roots):
    handle = engine.load("qwen_image", base="tiny-qwen_image", dtype="fp32", device="cpu", roots=roots,
                         quantization=ARA)
    t = handle.base.pipe.transformer
    assert isinstance(t.transformer_blocks[0].img_mlp.net[2], uintx.UIntXLinear)
    assert isinstance(t.img_in, uintx.UIntXLinear) and t.img_in.adapter
    assert type(t.transformer_blocks[0].attn.to_q) is uintx.AdaptedLinear and t.transformer_blocks[0].attn.to_q.adapter
    assert type(t.proj_out) is torch.nn.Linear, "outside the adapter: ai-toolkit's uint8 pass leaves it"
    assert handle.base.patcher.quantized


@pytest.mark.parametrize("dtype", ["bf16"])
def test_qwen_plain_uint4_matches_reference(models, roots, dtype):
    same(render(roots, dtype, "uint4"), reference(models, dtype, 4, ara=False))


def test_match_training_takes_the_ara_qtype_from_the_runs_config(models, roots, tmp_path):
    import shutil

    import yaml

    run = tmp_path / "loras" / "ara_run"
    run.mkdir(parents=True)
    shutil.copy(models / "loras" / LORA, run / "ara_run_000000250.safetensors")
    (run / "config.yaml").write_text(yaml.safe_dump({"job": "extension", "config": {"name": "ara_run", "process": [
        {"type": "sd_trainer", "model": {"arch": "qwen_image", "quantize": True, "qtype": ARA,
                                         "qtype_te": "uint4"}}]}}))
    run_roots = ModelRoots(diffusers=roots.diffusers, loras=(str(tmp_path / "loras"),))
    handle = engine.load("qwen_image", base="tiny-qwen_image", dtype="fp32", device="cpu", roots=run_roots)
    handle = engine.apply_lora(handle, "ara_run/ara_run_000000250.safetensors", 1.0, roots=run_roots)
    assert handle.base.quantization == ARA
    notes = " ".join(handle.loras[-1].bound.report.notes)
    assert f"quantization {ARA}" in notes
    assert "text encoder was quantized with uint4, rendered here with qfloat8" in notes


def test_refusals(models, roots, tmp_path):
    with pytest.raises(QuantizationError, match="not reproduced for Qwen-Image"):
        engine.load("qwen_image", base="tiny-qwen_image", dtype="fp32", device="cpu", roots=roots,
                    quantization=f"uint4|{ARA_REPO}/qwen_image_2512_torchao_uint4.safetensors")
    with pytest.raises(QuantizationError, match="not reproduced for FLUX"):
        engine.pick_quantization(engine.get_spec("flux"), ARA)
    assert ARA in engine.quantization_choices()
    # an adapter for another model: its layers are not this model's
    wrong = tmp_path / "wrong.safetensors"
    save_file({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(4, 64),
               "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(64, 4)}, str(wrong))
    parts = ref.load_parts(str(models / "diffusers" / "tiny-qwen_image"), torch.float32, edit=False)
    with pytest.raises(QuantizationError, match="made for another model"):
        quantize_component(parts["transformer"], f"uint3|{wrong}", torch.float32)
    with pytest.raises(Exception, match="not in the local Hugging Face cache"):
        quantize_component(parts["transformer"], f"uint3|{ARA_REPO}/missing.safetensors", torch.float32)


def test_edit_2509_3_bit_with_ara_matches_reference(models, roots, monkeypatch):
    """The Edit models' choice goes through the same path; the text encoder (qfloat8) keeps its vision tower."""
    from PIL import Image

    from aitk_pack.pipelines.families.qwen import edit as pack_edit

    monkeypatch.setattr(pack_edit, "VAE_AREA", 128 * 128)  # ai-toolkit's 1024² VAE-side area, shrunk in both
    monkeypatch.setattr(ref, "VAE_AREA", 128 * 128)
    control = Image.fromarray((torch.arange(48 * 80 * 3) % 251).reshape(48, 80, 3).to(torch.uint8).numpy(), "RGB")
    handle = engine.load("qwen_image_edit_plus", base="tiny-qwen_image_edit_plus", dtype="bf16", device="cpu",
                         roots=roots, quantization=PLUS_ARA)
    got = engine.generate(handle, PROMPT, controls=(control,), **{**SMALL, "negative_prompt": NEGATIVE})[0]
    parts = ref.load_parts(str(models / "diffusers" / "tiny-qwen_image_edit_plus"), torch.bfloat16, edit=True)
    ref_uintx.apply_ara(parts, load_file(str(models / PLUS_ARA_FILE)), 3, torch.bfloat16)
    same(got, ref.preview_plus(parts, PROMPT, NEGATIVE, [control], SMALL["seed"], SMALL["steps"],
                               SMALL["guidance_scale"], SMALL["width"], SMALL["height"]))
