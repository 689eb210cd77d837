"""Wan 2.2 TI2V 5B through the library renders ai-toolkit's preview bit for bit: library output == the independent
hand-written reference (tests/reference_wan_i2v.py: ai-toolkit's Wan22Pipeline loop written out), fp32 and bf16 on
CPU, text-to-video (per-token timesteps, all t) and image-to-video (the first latent frame a VAE *sample* of the
LANCZOS-resized control image, t = 0 on its tokens, re-imposed after every step; noise cast to the sampling dtype
first), ai-toolkit's saved LoRA layout merged at strengths 1 and 0.6 with every key applied, the preview sampler by
the LoRA's ai-toolkit version, frame counts snapped down as `generate_single_image` does ((n-1)//4*4+1), sizes
floored to 32, the tiled decode of the low_vram preset, and the qfloat8 preset (without the conditioning embedders
and proj_out; LoRA as an fp32 branch). Measured: Diffusers' choice (the VAE mode) for the first frame."""
from __future__ import annotations

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

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SMALL = dict(width=64, height=64, steps=2, seed=7, guidance_scale=4.0, num_frames=5)
PROMPT = "a red fox running in the snow"
NEGATIVE = "blurry, low quality"
LORA = "wan22_5b_aitk.safetensors"
OLD = "wan22_5b_aitk_0.9.2.safetensors"
MODEL = "wan22_5b"


def control_image(width=96, height=80, seed=5):
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.RandomState(seed)
    rgb = np.stack([np.sin(x / 9 + c) * np.cos(y / 6 - c) for c in rng.rand(3) * 3], axis=-1)
    return Image.fromarray(((rgb * 0.5 + 0.5) * 255).round().astype(np.uint8))


IMAGE = control_image()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan22_5b_models")
    for sub in ("diffusers", "checkpoints", "loras"):
        (root / sub).mkdir()
    pipe = tiny_wan_i2v.save(MODEL, str(root / "diffusers" / f"tiny-{MODEL}"))
    sd, meta = tiny_wan_i2v.wan_lora(pipe.transformer, seed=41, base_version="wan_2.2_5b")
    save_file(sd, str(root / "loras" / LORA), metadata=meta)
    save_file(sd, str(root / "loras" / OLD),
              metadata=tiny_wan_i2v.aitk_metadata(sd, version="0.9.2", base_version="wan_2.2_5b"))
    return root


@pytest.fixture(scope="module")
def roots(models):
    yield from cached_roots(models, 8)


def handle(roots, dtype, loras=(), quantization="none"):
    h = engine.load(MODEL, base=f"tiny-{MODEL}", dtype=dtype, device="cpu", roots=roots, quantization=quantization)
    for name, strength in loras:
        h = engine.apply_lora(h, name, strength, roots=roots)
    return h


_RENDERS: dict = {}


def render(roots, dtype, loras=(), quantization="none", sampler=None, image=IMAGE, options=(), **values):
    key = (dtype, tuple(loras), quantization, sampler, image is None, options, tuple(sorted(values.items())))
    if key not in _RENDERS:
        h = handle(roots, dtype, loras, quantization)
        if options:
            h = h.with_options(**dict(options))
        request = engine.build_request(h.spec, PROMPT, **{**SMALL, "negative_prompt": NEGATIVE,
                                                          "controls": () if image is None else (image,), **values})
        _RENDERS[key] = engine.render(h, request, sampler=sampler)
    return _RENDERS[key]


def _quantize_like_aitk(module, dtype, exclude=()):
    """`quantize_model` with the 5B's exclusions: cast, quanto qfloat8 on every Linear not excluded, freeze (the
    blocks-first order gives the same modules: no block-relative name matches the patterns)."""
    from optimum.quanto import freeze, qfloat8, quantize

    module.to(dtype=dtype)
    quantize(module, weights=qfloat8, exclude=list(exclude) or None)
    freeze(module)


def reference(models, dtype, strength=None, quantized=False, sampler="flowmatch", image=IMAGE, **values):
    v = dict(SMALL, **values)
    tiled = v.pop("tiled", True)
    parts = ref.load_parts(str(models / "diffusers" / f"tiny-{MODEL}"), DTYPES[dtype], i2v=False)
    if quantized:
        _quantize_like_aitk(parts["transformer"], DTYPES[dtype], ("condition_embedder*", "proj_out*"))
        _quantize_like_aitk(parts["text_encoder"], DTYPES[dtype])
    if strength is not None:
        sd = load_file(str(models / "loras" / LORA))
        if quantized:
            from tests.reference_flux import branch_peft

            peft = {ref.ref.to_diffusers(k.rsplit(".lora_", 1)[0]) + ".lora_" + k.rsplit(".lora_", 1)[1]: t
                    for k, t in sd.items()}
            assert branch_peft(parts, peft, strength) == 20
        else:
            assert ref.ref.merge(parts, sd, strength) == 20
    return ref.ti2v5b_preview(parts, image, PROMPT, NEGATIVE, v["seed"], v["steps"], v["guidance_scale"], v["width"],
                              v["height"], v["num_frames"], DTYPES[dtype], sampler=sampler, tiled=tiled,
                              mode_instead_of_sample=v.get("mode", False),
                              fp32_conditioning=v.get("fp32_conditioning", False))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_text_to_video_matches_reference(models, roots, dtype):
    out = render(roots, dtype, image=None)
    assert out.frames.shape == (5, 64, 64, 3) and out.fps == 24.0
    assert out.frames.std() > 5 and len({f.tobytes() for f in out.frames}) > 1
    assert "text-to-video (no control image)" in out.notes
    same(out.frames, reference(models, dtype, image=None))
    assert any(n.startswith("sampler flowmatch (flow-match Euler, shift 5") for n in out.notes), out.notes


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_image_to_video_matches_reference(models, roots, dtype):
    out = render(roots, dtype)
    assert any(n.startswith("image-to-video") for n in out.notes), out.notes
    same(out.frames, reference(models, dtype))
    t2v = render(roots, dtype, image=None).frames
    assert levels(out.frames, t2v) > 5, "the control image should condition the video"


def test_first_frame_is_a_vae_sample_not_the_mode(models, roots):
    got = render(roots, "fp32").frames
    mode = reference(models, "fp32", mode=True)
    print(f"\nwan22_5b fp32: the first frame VAE-encoded with the mode (Diffusers' WanImageToVideoPipeline) instead "
          f"of ai-toolkit's sample: {levels(got, mode)} levels")
    assert levels(got, mode) > 0


def test_bf16_conditioning_is_ai_toolkits(models, roots):
    """Measured: in bf16 ai-toolkit casts the noise and the first-frame latents to bf16 before its pipeline, and
    its bf16 mask makes the per-token timesteps bf16; keeping them fp32 is another video."""
    got = render(roots, "bf16").frames
    fp32 = reference(models, "bf16", fp32_conditioning=True)
    print(f"\nwan22_5b bf16 image-to-video: noise, first frame and mask kept in fp32: {levels(got, fp32)} levels")
    assert levels(got, fp32) > 0


@pytest.mark.parametrize("dtype,strength", [("fp32", 1.0), ("bf16", 1.0), ("fp32", 0.6)])
def test_lora_merged_matches_reference(models, roots, dtype, strength):
    got = render(roots, dtype, loras=[(LORA, strength)]).frames
    same(got, reference(models, dtype, strength=strength))
    assert levels(got, render(roots, dtype).frames) > 5, "the LoRA should change the video"


def test_every_key_applied(models, roots):
    report = handle(roots, "fp32", [(LORA, 1.0)]).reports()[0]
    assert (report.applied_modules, report.not_applied_keys) == (20, 0), report.summary()
    assert "40/40 keys" in report.summary()


def test_lora_from_before_0_9_3_previews_with_unipc(models, roots):
    out = render(roots, "fp32", loras=[(OLD, 1.0)], image=None)
    assert any(n.startswith("sampler unipc (UniPC, flow sigmas, flow_shift 5)") and "0.9.2" in n
               for n in out.notes), out.notes
    same(out.frames, reference(models, "fp32", strength=1.0, sampler="unipc", image=None))


@pytest.mark.parametrize("asked,snapped", [(8, 5), (9, 9)])
def test_frames_snapped_down_as_generate_single_image(models, roots, asked, snapped):
    out = render(roots, "fp32", num_frames=asked)
    assert out.frames.shape[0] == snapped
    same(out.frames, reference(models, "fp32", num_frames=snapped))


def test_size_floored_to_32_with_a_note(models, roots):
    out = render(roots, "fp32", width=72, height=104)
    assert out.frames.shape[1:3] == (96, 64)
    assert any("floored to 64x96" in n for n in out.notes), out.notes
    same(out.frames, reference(models, "fp32", width=64, height=96))


def test_tiled_decode_as_the_low_vram_preset(models, roots):
    """Above 256 px a side the VAE decodes in tiles, as ai-toolkit's low_vram preset does (`use_vae_tiling`)."""
    big = dict(width=288, height=288, num_frames=1, steps=1)
    tiled = render(roots, "fp32", image=None, **big).frames
    same(tiled, reference(models, "fp32", image=None, **big))
    untiled = render(roots, "fp32", image=None, options=(("vae_tiling", False),), **big).frames
    same(untiled, reference(models, "fp32", image=None, tiled=False, **big))
    print(f"\nwan22_5b fp32 288x288: tiled vs untiled decode: {levels(tiled, untiled)} levels")
    assert levels(tiled, untiled) > 0


def test_defaults_are_the_ui_preset(roots):
    spec = handle(roots, "fp32").spec
    default = engine.build_request(spec, "x")
    assert (default.num_frames, default.fps, default.width, default.height, default.steps,
            default.guidance_scale) == (121, 24, 768, 768, 30, 4.0)
    assert [(c.name, c.required) for c in spec.controls] == [("control_image", False)]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_qfloat8_preset_with_branch_lora(models, roots, dtype):
    pytest.importorskip("optimum.quanto")
    out = render(roots, dtype, loras=[(LORA, 1.0)], quantization="match training")
    assert any(n.startswith("quantized base: qfloat8 on transformer") and n.endswith("(LoRA as an fp32 branch)")
               for n in out.notes), out.notes
    same(out.frames, reference(models, dtype, strength=1.0, quantized=True))
    plain = render(roots, dtype, loras=[(LORA, 1.0)]).frames
    print(f"\nwan22_5b {dtype}: qfloat8 vs unquantized render: {levels(out.frames, plain)} levels")
    assert levels(out.frames, plain) > 0


def test_text_to_video_at_small_sizes_is_also_the_stock_pipeline(models, roots):
    """A cross-check: for text-to-video below the tiling size, ai-toolkit's Wan22Pipeline computes what Diffusers'
    WanPipeline(expand_timesteps=True) does; they part on frame snapping (8 -> 5 vs 9), the 32-floor, the tiled
    decode and the image-to-video conditioning."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    parts = ref.load_parts(str(models / "diffusers" / f"tiny-{MODEL}"), torch.float32, i2v=False)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0, use_dynamic_shifting=False)
    pipe = WanPipeline(scheduler=scheduler, expand_timesteps=True, **parts)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        video = pipe(prompt_embeds=ref.ref.encode(parts, PROMPT, torch.float32),
                     negative_prompt_embeds=ref.ref.encode(parts, NEGATIVE, torch.float32), height=64, width=64,
                     num_frames=5, num_inference_steps=2, guidance_scale=4.0,
                     generator=torch.Generator("cpu").manual_seed(7), output_type="np").frames[0]
    same(render(roots, "fp32", image=None).frames, (video * 255).round().astype(np.uint8))
