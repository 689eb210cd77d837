"""Qwen-Image and Qwen-Image-2512 through the library render ai-toolkit's preview bit for bit: library output == the
independent hand-written reference (tests/reference_qwen.py `preview_t2i`: own prompt encoding, own denoise loop with
ai-toolkit's scheduler config, true CFG with the norm rescale, own LoRA merge), fp32 and bf16 on CPU, for the base
(CFG on and off), ai-toolkit's LoRA layout merged at strengths 1 and 0.6, prompt flags and the trigger word, the
qfloat8 base with the LoRA as an fp32 branch. Also tests that the wrong choices (the folder's / stock scheduler,
no norm rescale, a skipped CFG for an empty negative) change the picture. The edit models: test_qwen_edit.py."""
from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import reference_qwen as ref
from tests.fixtures import tiny_flux, tiny_qwen
from tests.fixtures.model_roots import cached_roots
from tests.fixtures.pixels import levels, same

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.errors import LoraError, RenderError
from aitk_pack.pipelines.families import get_family
from aitk_pack.pipelines.registry import get_spec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SMALL = dict(width=64, height=64, steps=2, seed=7, guidance_scale=4.0)
PROMPT = "a red fox in the snow"
NEGATIVE = "blurry, low quality"
LORA = "qwen_image_lora.safetensors"
IDS = ("qwen_image", "qwen_image_2512")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    start = time.time()
    root = tmp_path_factory.mktemp("qwen_models")
    (root / "loras").mkdir()
    for model_id in IDS:
        pipe = tiny_qwen.save(model_id, str(root / "diffusers" / f"tiny-{model_id}"))
        if model_id == "qwen_image":
            sd, meta = tiny_qwen.peft_lora(pipe.transformer, seed=21, trigger_word="ohwx")
            save_file(sd, str(root / "loras" / LORA), metadata=meta)
    flux = tiny_flux.build("flux")
    sd, meta = tiny_flux.flux_peft_lora(flux.transformer, seed=1)
    save_file(sd, str(root / "loras" / "flux_lora.safetensors"), metadata=meta)
    print(f"\n[qwen fixtures built in {time.time() - start:.1f} s]")
    return root


@pytest.fixture(scope="module")
def roots(models):
    yield from cached_roots(models, 8)


def handle_for(roots, dtype, model_id="qwen_image", loras=(), quantization="none"):
    handle = engine.load(model_id, base=f"tiny-{model_id}", dtype=dtype, device="cpu", roots=roots,
                         quantization=quantization)
    for name, strength in loras:
        handle = engine.apply_lora(handle, name, strength, roots=roots)
    return handle


def render(roots, dtype, model_id="qwen_image", loras=(), quantization="none", prompt=PROMPT, **values):
    handle = handle_for(roots, dtype, model_id, loras, quantization)
    return engine.generate(handle, prompt, **{**SMALL, "negative_prompt": NEGATIVE, **values})[0]


def reference(models, dtype, model_id="qwen_image", strength=None, quantized=False, prompt=PROMPT,
              negative=NEGATIVE, **values):
    v = dict(SMALL, **values)
    parts = ref.load_parts(str(models / "diffusers" / f"tiny-{model_id}"), DTYPES[dtype], edit=False)
    if quantized:
        ref.quantize_qfloat8(parts, DTYPES[dtype])
    if strength is not None:
        sd = load_file(str(models / "loras" / LORA))
        merged = (ref.branch_lora if quantized else ref.merge_lora)(parts, sd, strength)
        assert merged == tiny_qwen.N_BLOCKS * len(tiny_qwen.AITK_BLOCK)
    return ref.preview_t2i(parts, prompt, negative, v["seed"], v["steps"], v["guidance_scale"], v["width"],
                           v["height"])


@pytest.mark.parametrize("model_id, dtype", [("qwen_image", "fp32"), ("qwen_image", "bf16"),
                                             ("qwen_image_2512", "fp32"), ("qwen_image_2512", "bf16")])
def test_base_matches_reference(models, roots, dtype, model_id):
    got = render(roots, dtype, model_id)
    assert got.std() > 5, "the tiny model should render a non-flat image"
    same(got, reference(models, dtype, model_id))


def test_no_cfg_at_guidance_one_and_the_negative_matters_above(models, roots):
    no_cfg = render(roots, "fp32", guidance_scale=1.0)
    same(no_cfg, reference(models, "fp32", guidance_scale=1.0))
    same(render(roots, "fp32", guidance_scale=1.0, negative_prompt="another negative"), no_cfg)
    with_cfg = render(roots, "fp32")
    assert levels(with_cfg, no_cfg) > 10
    # an empty negative is encoded and used (true CFG runs; stock Diffusers with negative_prompt=None would skip it)
    empty = render(roots, "fp32", negative_prompt="")
    assert levels(empty, no_cfg) > 0 and levels(empty, with_cfg) > 0
    same(empty, reference(models, "fp32", negative=""))


@pytest.mark.parametrize("strength, dtype", [(1.0, "fp32"), (0.6, "bf16")])
def test_aitk_lora_matches_reference(models, roots, dtype, strength):
    got = render(roots, dtype, loras=[(LORA, strength)])
    assert levels(got, render(roots, dtype)) > 10, "the LoRA should change the image"
    same(got, reference(models, dtype, strength=strength))


def test_the_lora_applies_to_2512_too(models, roots):
    same(render(roots, "bf16", "qwen_image_2512", loras=[(LORA, 1.0)]),
         reference(models, "bf16", "qwen_image_2512", strength=1.0))


def test_2512_lora_strength_flags_and_trigger(models, roots):
    """2512 in fp32: the LoRA at 0.6 with the trigger and --n / --cfg / --seed flags, as ai-toolkit renders them."""
    handle = handle_for(roots, "fp32", "qwen_image_2512", loras=[(LORA, 0.6)])
    got = engine.generate(handle, "photo of [trigger] --n no [trigger] here --cfg 3 --seed 11", trigger_word="ohwx",
                          negative_prompt=NEGATIVE, **SMALL)[0]
    same(got, reference(models, "fp32", "qwen_image_2512", strength=0.6, prompt="photo of ohwx",
                        negative="no ohwx here", guidance_scale=3.0, seed=11))


def test_every_key_of_an_aitk_qwen_lora_applies(roots):
    report = engine.apply_lora(handle_for(roots, "fp32"), LORA, 1.0, roots=roots).loras[-1].bound.report
    modules = tiny_qwen.N_BLOCKS * len(tiny_qwen.AITK_BLOCK)  # 14 per block, modulation linears included
    assert report.applied_keys == report.total_keys == 2 * modules, report
    assert report.applied == {"transformer": modules} and not report.unmatched


def test_a_flux_lora_is_refused(roots):
    with pytest.raises(LoraError, match="FLUX.1"):
        engine.apply_lora(handle_for(roots, "fp32"), "flux_lora.safetensors", 1.0, roots=roots)


def test_prompt_flags_and_trigger_as_aitk(models, roots):
    """`[trigger]` is replaced before the flags are parsed; --n, --cfg, --seed, --w/--h (8-floored, then 32)."""
    prompt = "photo of [trigger] --n no [trigger] here --cfg 3.5 --seed 11 --w 100 --h 72"
    handle = handle_for(roots, "fp32", loras=[(LORA, 1.0)])
    got = engine.generate(handle, prompt, trigger_word="ohwx", negative_prompt=NEGATIVE, **SMALL)[0]
    assert got.shape == (64, 96, 3)  # 100 -> 96 -> 96, 72 -> 72 -> 64
    same(got, reference(models, "fp32", strength=1.0, prompt="photo of ohwx", negative="no ohwx here",
                        guidance_scale=3.5, seed=11, width=100, height=72))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_quantized_base_with_lora_branch_matches_reference(models, roots, dtype):
    if dtype == "bf16":
        same(render(roots, dtype, quantization="qfloat8"), reference(models, dtype, quantized=True))
    same(render(roots, dtype, loras=[(LORA, 0.8)], quantization="qfloat8"),
         reference(models, dtype, strength=0.8, quantized=True))


def test_quantization_covers_transformer_and_text_encoder(roots):
    from optimum.quanto import QModuleMixin

    pipe = handle_for(roots, "bf16", quantization="qfloat8").base.pipe
    assert pipe.text_encoder.model.visual is None  # QwenImageModel drops the vision tower before quantize_te
    for module in (pipe.transformer, pipe.text_encoder):
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(isinstance(m, QModuleMixin) for m in linears)


def test_wrong_choices_change_the_picture(models, roots, monkeypatch, capsys):
    """The things easy to get wrong, each measured against the preview: the stock FlowMatch scheduler (no Qwen
    shift), no CFG norm rescale, the 1/n-less sigmas. Each must move the picture (these are what ai-toolkit does)."""
    want = render(roots, "fp32")
    out = {}
    stock = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False, "base_shift": 0.5,
             "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
    monkeypatch.setattr(ref, "SCHEDULER_CONFIG", stock)  # FlowMatchEulerDiscreteScheduler() defaults
    out["stock scheduler"] = levels(reference(models, "fp32"), want)
    monkeypatch.undo()
    original = ref._denoise
    monkeypatch.setattr(ref, "_denoise", lambda *a, **k: original(*a, **{**k, "norm": False}))
    out["no norm rescale"] = levels(reference(models, "fp32"), want)
    monkeypatch.undo()
    with capsys.disabled():
        print(f"\nQwen-Image wrong choices vs the preview (levels): {out}")
    assert all(v > 0 for v in out.values()), out


def test_live_preview_latents(roots):
    spec = get_spec("qwen_image")
    seen = []
    engine.generate(handle_for(roots, "fp32"), PROMPT, on_step=lambda s, t, latents: seen.append((s, t, latents)),
                    **SMALL)
    assert [(s, t) for s, t, _ in seen] == [(1, 2), (2, 2)]
    request = engine.build_request(spec, PROMPT, **SMALL)
    assert tuple(get_family(spec).preview_latents(spec, seen[-1][2], request).shape) == (16, 8, 8)


def test_one_step_is_nan_as_in_aitk(roots):
    """Qwen's `shift_terminal` stretch divides by 1 - sigma_last = 0 for sigmas linspace(1, 1, 1): ai-toolkit's
    1-step preview is NaN (black); the pack says so instead of returning a black image."""
    with pytest.raises(RenderError, match="NaN"):
        render(roots, "fp32", steps=1)
