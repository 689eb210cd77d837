"""Wan 2.1 I2V 14B (720p and 480p) through the library renders ai-toolkit's preview bit for bit: library output == the
independent hand-written reference (tests/reference_wan_i2v.py), fp32 and bf16 on CPU, for the base (CLIP vision
embeds of the LANCZOS-resized control image, the first frame VAE-encoded behind the 4-channel mask, true CFG),
ai-toolkit's saved LoRA layout including the image cross-attention projections (`cross_attn.k_img` / `v_img`)
merged at strengths 1 and 0.6 with every key applied, the preview sampler by the LoRA's ai-toolkit version, frame
counts snapped to 4k+1, sizes floored to 16, the qfloat8 preset (LoRA as an fp32 branch), and a missing control image
or a missing ftfy refused with errors that name what to do, leaving the cached pipeline as it was."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests import reference_wan_i2v as ref
from tests.fixtures import tiny_wan_i2v
from tests.fixtures.model_roots import cached_roots
from tests.fixtures.pixels import levels, same

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.errors import ControlImageError, ModelSourceError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SMALL = dict(width=64, height=64, steps=2, seed=7, guidance_scale=4.0, num_frames=5)
PROMPT = "a red fox running in the snow"
NEGATIVE = "blurry, low quality"
LORA = "wan21_i2v_aitk.safetensors"
OLD = "wan21_i2v_aitk_0.9.2.safetensors"
MODEL = "wan21_i2v_14b"


def control_image(width=80, height=48, seed=3):
    """A smooth, non-square test picture (so the LANCZOS resize to the output size matters)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.RandomState(seed)
    rgb = np.stack([np.sin(x / 7 + c) * np.cos(y / 5 - c) for c in rng.rand(3) * 3], axis=-1)
    return Image.fromarray(((rgb * 0.5 + 0.5) * 255).round().astype(np.uint8))


IMAGE = control_image()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_i2v_models")
    for sub in ("diffusers", "checkpoints", "loras"):
        (root / sub).mkdir()
    for model_id in tiny_wan_i2v.I2V_IDS:
        pipe = tiny_wan_i2v.save(model_id, str(root / "diffusers" / f"tiny-{model_id}"))
        if model_id == MODEL:
            transformer = pipe.transformer
    sd, meta = tiny_wan_i2v.wan_lora(transformer, seed=31)
    save_file(sd, str(root / "loras" / LORA), metadata=meta)
    save_file(sd, str(root / "loras" / OLD), metadata=tiny_wan_i2v.aitk_metadata(sd, version="0.9.2"))
    diffusers_sd, _ = tiny_wan_i2v.wan_lora(transformer, seed=31, naming="diffusers")
    save_file(diffusers_sd, str(root / "loras" / "wan21_i2v_diffusers.safetensors"), metadata=meta)
    return root


@pytest.fixture(scope="module")
def roots(models):
    yield from cached_roots(models, 8)


def handle(roots, dtype, loras=(), model=MODEL, quantization="none"):
    h = engine.load(model, base=f"tiny-{model}", dtype=dtype, device="cpu", roots=roots, quantization=quantization)
    for name, strength in loras:
        h = engine.apply_lora(h, name, strength, roots=roots)
    return h


_RENDERS: dict = {}


def render(roots, dtype, loras=(), model=MODEL, quantization="none", sampler=None, image=IMAGE, **values):
    key = (dtype, tuple(loras), model, quantization, sampler, id(image), tuple(sorted(values.items())))
    if key not in _RENDERS:
        h = handle(roots, dtype, loras, model, quantization)
        request = engine.build_request(h.spec, PROMPT, **{**SMALL, "negative_prompt": NEGATIVE,
                                                          "controls": (image,), **values})
        _RENDERS[key] = engine.render(h, request, sampler=sampler)
    return _RENDERS[key]


def reference(models, dtype, strength=None, model=MODEL, quantized=False, sampler="flowmatch", **values):
    v = dict(SMALL, **values)
    parts = ref.load_parts(str(models / "diffusers" / f"tiny-{model}"), DTYPES[dtype], i2v=True)
    if quantized:
        from tests.reference_flux import quantize_like_aitk

        quantize_like_aitk(parts["transformer"], DTYPES[dtype])
        quantize_like_aitk(parts["text_encoder"], DTYPES[dtype])
    if strength is not None:
        sd = load_file(str(models / "loras" / LORA))
        if quantized:
            from tests.reference_flux import branch_peft

            peft = {ref.ref.to_diffusers(k.rsplit(".lora_", 1)[0]) + ".lora_" + k.rsplit(".lora_", 1)[1]: t
                    for k, t in sd.items()}
            assert branch_peft(parts, peft, strength) == 24
        else:
            assert ref.ref.merge(parts, sd, strength) == 24
    return ref.i2v21_preview(parts, IMAGE, PROMPT, NEGATIVE, v["seed"], v["steps"], v["guidance_scale"], v["width"],
                             v["height"], v["num_frames"], DTYPES[dtype], sampler=sampler)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_base_matches_reference(models, roots, dtype):
    out = render(roots, dtype)
    assert out.frames.shape == (5, 64, 64, 3) and out.fps == 16.0
    assert out.frames.std() > 5 and len({f.tobytes() for f in out.frames}) > 1
    same(out.frames, reference(models, dtype))
    assert any(n.startswith("sampler flowmatch (flow-match Euler, shift 3") for n in out.notes), out.notes


def test_the_control_image_conditions_the_video(models, roots):
    other = Image.fromarray(255 - np.asarray(IMAGE))
    moved = render(roots, "fp32", image=other).frames
    print(f"\nwan21_i2v_14b: the inverted control image moves the video by {levels(moved, render(roots, 'fp32').frames)} levels")
    assert levels(moved, render(roots, "fp32").frames) > 5, "another first frame should give another video"


def test_480p_id_matches_reference(models, roots):
    out = render(roots, "fp32", model="wan21_i2v_14b480p")
    same(out.frames, reference(models, "fp32", model="wan21_i2v_14b480p"))


@pytest.mark.parametrize("dtype,strength", [("fp32", 1.0), ("bf16", 1.0), ("fp32", 0.6)])
def test_lora_merged_matches_reference(models, roots, dtype, strength):
    got = render(roots, dtype, loras=[(LORA, strength)]).frames
    same(got, reference(models, dtype, strength=strength))
    assert levels(got, render(roots, dtype).frames) > 5, "the LoRA should change the video"


def test_every_key_applied_including_the_image_projections(models, roots):
    sd = load_file(str(models / "loras" / LORA))
    assert "diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight" in sd
    assert "diffusion_model.blocks.1.cross_attn.v_img.lora_B.weight" in sd
    report = handle(roots, "fp32", [(LORA, 1.0)]).reports()[0]
    assert (report.applied_modules, report.not_applied_keys) == (24, 0), report.summary()
    assert "48/48 keys" in report.summary()
    diffusers = handle(roots, "fp32", [("wan21_i2v_diffusers.safetensors", 1.0)])
    assert diffusers.reports()[0].applied_modules == 24
    request = engine.build_request(diffusers.spec, PROMPT, negative_prompt=NEGATIVE, controls=(IMAGE,), **SMALL)
    same(engine.render(diffusers, request).frames, render(roots, "fp32", loras=[(LORA, 1.0)]).frames)


def test_lora_from_before_0_9_3_previews_with_unipc(models, roots):
    out = render(roots, "fp32", loras=[(OLD, 1.0)])
    assert any(n.startswith("sampler unipc") and "0.9.2" in n for n in out.notes), out.notes
    same(out.frames, reference(models, "fp32", strength=1.0, sampler="unipc"))
    euler = render(roots, "fp32", loras=[(LORA, 1.0)]).frames
    print(f"\nwan21_i2v_14b: UniPC (ai-toolkit < 0.9.3) vs flow-match Euler preview: {levels(out.frames, euler)} levels")
    assert levels(out.frames, euler) > 0


def test_frames_snapped_to_4k_plus_1(models, roots):
    out = render(roots, "fp32", num_frames=8)
    assert out.frames.shape[0] == 9
    same(out.frames, reference(models, "fp32", num_frames=9))


def test_size_floored_to_16_with_a_note(models, roots):
    out = render(roots, "fp32", width=72, height=88)
    assert out.frames.shape[1:3] == (80, 64)
    assert any("floored to 64x80" in n for n in out.notes), out.notes
    same(out.frames, reference(models, "fp32", width=64, height=80))


def test_missing_control_image_names_the_input_and_leaves_the_pipeline(models, roots):
    h = handle(roots, "fp32")
    request = engine.build_request(h.spec, PROMPT, negative_prompt=NEGATIVE, **SMALL)
    with pytest.raises(ControlImageError, match="control_image"):
        engine.render(h, request)
    same(render(roots, "fp32").frames, reference(models, "fp32"))


def test_missing_ftfy_is_a_clear_error(monkeypatch):
    from aitk_pack.pipelines.families.wan import i2v21

    monkeypatch.setitem(sys.modules, "ftfy", None)  # `import ftfy` raises ImportError
    with pytest.raises(ModelSourceError, match="pip install ftfy"):
        i2v21.require_ftfy()


def test_defaults_are_the_ui_preset(roots):
    spec = handle(roots, "fp32").spec
    default = engine.build_request(spec, "x", controls=(IMAGE,))
    assert (default.num_frames, default.fps, default.width, default.height, default.steps,
            default.guidance_scale) == (41, 16, 1024, 1024, 30, 4.0)
    assert spec.quant.preset == "qfloat8" and spec.quant.components == ("transformer", "text_encoder")
    assert [(c.name, c.required) for c in spec.controls] == [("control_image", True)]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_qfloat8_preset_with_branch_lora(models, roots, dtype):
    pytest.importorskip("optimum.quanto")
    out = render(roots, dtype, loras=[(LORA, 1.0)], quantization="match training")
    assert any(n.startswith("quantized base: qfloat8 on transformer") and n.endswith("(LoRA as an fp32 branch)")
               for n in out.notes), out.notes
    same(out.frames, reference(models, dtype, strength=1.0, quantized=True))
    plain = render(roots, dtype, loras=[(LORA, 1.0)]).frames
    print(f"\nwan21_i2v_14b {dtype}: qfloat8 vs unquantized render: {levels(out.frames, plain)} levels")
    assert levels(out.frames, plain) > 0


def test_stock_pipeline_given_the_unresized_image_differs(models, roots):
    """Measured: ai-toolkit resizes the control image (LANCZOS, output size) before the pipeline, so the CLIP
    processor sees the resized picture; the stock pipeline handed the original image crops another square."""
    from diffusers import WanImageToVideoPipeline

    parts = ref.load_parts(str(models / "diffusers" / f"tiny-{MODEL}"), torch.float32, i2v=True)
    pipe = WanImageToVideoPipeline(scheduler=ref.ref.scheduler("flowmatch"), **parts)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        video = pipe(image=IMAGE, prompt_embeds=ref.ref.encode(parts, PROMPT, torch.float32),
                     negative_prompt_embeds=ref.ref.encode(parts, NEGATIVE, torch.float32), height=64, width=64,
                     num_frames=5, num_inference_steps=2, guidance_scale=4.0,
                     generator=torch.Generator("cpu").manual_seed(7), output_type="np").frames[0]
    stock = (video * 255).round().astype(np.uint8)
    got = render(roots, "fp32").frames
    print(f"\nwan21_i2v_14b fp32: the stock pipeline given the unresized control image: {levels(got, stock)} levels")
    assert levels(got, stock) > 0
