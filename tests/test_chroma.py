"""Chroma through the library renders ai-toolkit's preview bit for bit: library output == the independent hand-written
reference (tests/reference_flux.py `preview_chroma`: Diffusers' ChromaPipeline configured with ai-toolkit's recipe),
fp32 and bf16 on CPU, for the base, true CFG with a negative and guidance 1 (no CFG), ai-toolkit's Chroma LoRA
layout (`diffusion_model.<BFL name>`, fused qkv / linear1 split by rows) merged at strengths 1 and 0.6, the same LoRA
in kohya names, ai-toolkit's BFL single transformer file as base (with a Diffusers folder beside it, or with the
config and T5/VAE from the HF cache as ai-toolkit loads them), and the qfloat8 base with the LoRA as an fp32 branch.
Also prints how far a stock `ChromaPipeline(prompt=…)` call is from the preview (not asserted)."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import reference_flux as ref
from tests.fixtures import tiny_flux
from tests.fixtures.fake_hub import fake_hub_repo
from tests.fixtures.model_roots import cached_roots
from tests.fixtures.pixels import levels, same

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.errors import ModelSourceError
from aitk_pack.pipelines.families import get_family
from aitk_pack.pipelines.registry import get_spec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SMALL = dict(width=64, height=64, steps=3, seed=7, guidance_scale=4.0)
PROMPT = "a red fox in the snow"
NEGATIVE = "blurry, low quality"
LORA = "chroma_aitk.safetensors"
RANK = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("chroma_models")
    for sub in ("diffusers", "checkpoints", "loras"):
        (root / sub).mkdir()
    folder = str(root / "diffusers" / "tiny-chroma")
    pipe = tiny_flux.save("chroma", folder)
    sd, meta = tiny_flux.chroma_lora(pipe.transformer, rank=RANK, seed=21, trigger_word="ohwx")
    save_file(sd, str(root / "loras" / LORA), metadata=meta)
    kohya = {}
    for key, value in sd.items():
        name = "lora_unet_" + key[len("diffusion_model."):].rsplit(".lora_", 1)[0].replace(".", "_")
        kohya[f"{name}.{'lora_down' if '.lora_A.' in key else 'lora_up'}.weight"] = value
        kohya[f"{name}.alpha"] = torch.tensor(float(RANK))
    save_file(kohya, str(root / "loras" / "chroma_kohya.safetensors"), metadata=meta)
    # ai-toolkit's BFL-layout transformer file: alone (parts from the HF cache) and with a Diffusers folder beside it
    tiny_flux.save_chroma_single_file(pipe, str(root / "checkpoints" / "tiny-chroma-bfl.safetensors"))
    for copy in ("side", "lonely"):  # lonely: never loaded with its parts (the cache would hide a missing one)
        shutil.copyfile(root / "checkpoints" / "tiny-chroma-bfl.safetensors",
                        root / "checkpoints" / f"{copy}.safetensors")
    shutil.copytree(folder, root / "checkpoints" / "side")
    cache = str(root / "hf_cache")
    fake_hub_repo(cache, "lodestones/Chroma1-Base",
                   {"transformer/config.json": os.path.join(folder, "transformer", "config.json")})
    fake_hub_repo(cache, "ostris/Flex.1-alpha", {"text_encoder_2": os.path.join(folder, "text_encoder"),
                                                  "tokenizer_2": os.path.join(folder, "tokenizer"),
                                                  "vae": os.path.join(folder, "vae")})
    return root


@pytest.fixture(scope="module")
def roots(models):
    yield from cached_roots(models, 12)


def load(roots, dtype, base="tiny-chroma", quantization="none"):
    with tiny_flux.chroma_single_file_dims():  # diffusers' converter hard-codes Chroma's real widths
        return engine.load("chroma", base=base, dtype=dtype, device="cpu", roots=roots, quantization=quantization)


def render(roots, dtype, loras=(), base="tiny-chroma", quantization="none", **values):
    handle = load(roots, dtype, base, quantization)
    for name, strength in loras:
        handle = engine.apply_lora(handle, name, strength, roots=roots)
    return engine.generate(handle, PROMPT, **{**SMALL, "negative_prompt": NEGATIVE, **values})[0]


def reference(models, dtype, strength=None, quantized=False, **values):
    v = dict(SMALL, **values)
    parts = ref.load_parts(str(models / "diffusers" / "tiny-chroma"), "chroma", DTYPES[dtype])
    if quantized:
        ref.quantize_like_aitk(parts["transformer"], DTYPES[dtype])
        ref.quantize_like_aitk(parts["text_encoder"], DTYPES[dtype])
    if strength is not None:
        sd = load_file(str(models / "loras" / LORA))
        if quantized:  # ai-toolkit's fp32 side branch; on split modules each takes its rows of the fused lora_B
            assert ref.branch_peft(parts, tiny_flux.bfl_to_peft(sd, parts["transformer"]), strength) == 34
        else:
            assert ref.merge_bfl(parts, sd, strength) == 34  # 20 file modules onto 34 split ones
    return ref.preview_chroma(parts, PROMPT, NEGATIVE, v["seed"], v["steps"], v["guidance_scale"], v["width"],
                              v["height"])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("guidance", [4.0, 1.0])
def test_base_matches_reference(models, roots, dtype, guidance):
    got = render(roots, dtype, guidance_scale=guidance)
    assert got.std() > 5, "the tiny model should render a non-flat image"
    same(got, reference(models, dtype, guidance_scale=guidance))


def test_true_cfg_uses_the_negative_only_above_the_threshold(roots):
    with_cfg = render(roots, "fp32")
    assert levels(with_cfg, render(roots, "fp32", guidance_scale=1.0)) > 10
    assert levels(with_cfg, render(roots, "fp32", negative_prompt="another negative")) > 0
    # pipeline.py: true CFG iff guidance_scale > 1.00001; at or below it one pass and no negative
    no_cfg = render(roots, "fp32", guidance_scale=1.0)
    same(render(roots, "fp32", guidance_scale=1.00001), no_cfg)
    same(render(roots, "fp32", guidance_scale=1.0, negative_prompt="another negative"), no_cfg)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_aitk_lora_matches_reference(models, roots, dtype, strength):
    got = render(roots, dtype, [(LORA, strength)])
    assert levels(got, render(roots, dtype)) > 10, "the LoRA should change the image"
    same(got, reference(models, dtype, strength))


def test_every_key_of_an_aitk_chroma_lora_applies(roots):
    handle = load(roots, "fp32")
    for name in (LORA, "chroma_kohya.safetensors"):
        report = engine.apply_lora(handle, name, 1.0, roots=roots).loras[-1].bound.report
        blocks = 8 * tiny_flux.N_DOUBLE + 2 * tiny_flux.N_SINGLE
        assert report.applied_keys == report.total_keys == (2 if name == LORA else 3) * blocks, report


def test_kohya_names_render_as_the_aitk_file(roots):
    same(render(roots, "fp32", [("chroma_kohya.safetensors", 0.8)]), render(roots, "fp32", [(LORA, 0.8)]))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_apply_then_remove_restores_the_base(roots, dtype):
    handle = load(roots, dtype)
    base = engine.generate(handle, PROMPT, negative_prompt=NEGATIVE, **SMALL)[0]
    lora = engine.generate(engine.apply_lora(handle, LORA, 1.0, roots=roots), PROMPT, negative_prompt=NEGATIVE,
                           **SMALL)[0]
    assert levels(lora, base) > 10
    same(engine.generate(handle, PROMPT, negative_prompt=NEGATIVE, **SMALL)[0], base)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("base", ["tiny-chroma-bfl.safetensors", "side.safetensors"])
def test_bfl_single_file_equals_the_folder(models, roots, monkeypatch, dtype, base):
    """ai-toolkit's own base: the BFL transformer file; config + T5/VAE from the HF cache (lodestones/Chroma1-Base,
    ostris/Flex.1-alpha as `ChromaModel.load_model` takes them) or from the Diffusers folder beside the file."""
    monkeypatch.setenv("HF_HUB_CACHE", str(models / "hf_cache"))
    got = render(roots, dtype, [(LORA, 1.0)], base=base)
    same(got, render(roots, dtype, [(LORA, 1.0)]))
    same(render(roots, dtype, base=base), reference(models, dtype))


def test_single_file_without_its_parts_says_what_to_download(models, roots, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(ModelSourceError, match="hf download lodestones/Chroma1-Base"):
        load(roots, "fp32", base="lonely.safetensors")
    cache = tmp_path / "config_only"
    fake_hub_repo(str(cache), "lodestones/Chroma1-Base", {"transformer/config.json": str(
        models / "diffusers" / "tiny-chroma" / "transformer" / "config.json")})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(ModelSourceError, match=r"hf download ostris/Flex\.1-alpha --include"):
        load(roots, "fp32", base="lonely.safetensors")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_quantized_base_with_lora_branch_matches_reference(models, roots, dtype):
    same(render(roots, dtype, quantization="qfloat8"), reference(models, dtype, quantized=True))
    same(render(roots, dtype, [(LORA, 1.0)], quantization="qfloat8"),
         reference(models, dtype, strength=1.0, quantized=True))


def test_live_preview_latents(roots):
    spec = get_spec("chroma")
    seen = []
    handle = load(roots, "fp32")
    engine.generate(handle, PROMPT, on_step=lambda step, total, latents: seen.append((step, total, latents)), **SMALL)
    assert [(s, t) for s, t, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    request = engine.build_request(spec, PROMPT, **SMALL)
    assert tuple(get_family(spec).preview_latents(spec, seen[-1][2], request).shape) == (16, 8, 8)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_stock_chroma_pipeline_distance(models, dtype, capsys):
    """Not asserted: how far a plain `ChromaPipeline(prompt=…, negative_prompt=…)` is from ai-toolkit's preview."""
    from diffusers import ChromaPipeline

    out = {}
    for guidance in (4.0, 1.0):
        want = reference(models, dtype, guidance_scale=guidance)
        pipe = ChromaPipeline.from_pretrained(str(models / "diffusers" / "tiny-chroma"), torch_dtype=DTYPES[dtype],
                                              local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        stock = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=3,
                     guidance_scale=guidance, generator=torch.Generator().manual_seed(SMALL["seed"]),
                     output_type="np").images
        out[guidance] = levels(ref._to_uint8(stock), want)
    with capsys.disabled():
        print(f"\nstock ChromaPipeline vs ai-toolkit preview ({dtype}): guidance 4 {out[4.0]} levels, "
              f"guidance 1 {out[1.0]} levels")
