"""LTX-2 and LTX-2.3 through the library render ai-toolkit's preview bit for bit, frames and audio samples: library
output == the independent hand-written reference (tests/reference_ltx2.py: ai-toolkit's recipe as its own loop with
CFG + STG + modality isolation + rescale + audio guidance, the dynamic-shift schedule and the 1024-token left
padding), fp32 and bf16 on CPU, for the base and ai-toolkit's saved LoRA layout
(`diffusion_model.transformer_blocks.N…`, every key applied) at strength 1 and 0.6 on the first run; frame counts
snapped to 8k+1 (down), sizes floored to 32, fps setting the video's rate but not the pixels or the audio, and 2.3's
explicit guidance (its tiny transformer has 29 blocks, so STG at block 28 perturbs it). Image-to-video (a control
image: ai-toolkit's `LTX2ImageToVideoPipeline` with the LANCZOS-resized RGB image and the pipeline's CRF 33 H.264 round
trip) the same way, through the library and the node, with the cost of skipping the round trip printed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import reference_ltx2 as ref
from tests.fixtures import tiny_ltx2
from tests.fixtures.model_roots import cached_roots
from tests.fixtures.pixels import levels, same

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.errors import LoraError, ModelSourceError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SMALL = dict(width=64, height=64, steps=2, seed=7, guidance_scale=4.0, num_frames=9)
PROMPT = "a red fox running in the snow"
NEGATIVE = "blurry"
LORA = {"ltx2": "ltx2_aitk.safetensors", "ltx2.3": "ltx23_aitk.safetensors"}
# Linears outside transformer_blocks (a LoRA trained without transformer_only) -> the names ai-toolkit saves them
# under (`convert_lora_diffusers_to_original`: the inverse of LTX_2_0_TRANSFORMER_KEYS_RENAME_DICT, written out here)
OUTSIDE = {"proj_in": "patchify_proj", "audio_proj_in": "audio_patchify_proj",
           "time_embed.linear": "adaln_single.linear",
           "audio_time_embed.emb.timestep_embedder.linear_1": "audio_adaln_single.emb.timestep_embedder.linear_1",
           "av_cross_attn_video_a2v_gate.linear": "av_ca_a2v_gate_adaln_single.linear", "proj_out": "proj_out"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ltx2_models")
    for sub in ("diffusers", "checkpoints", "loras"):
        (root / sub).mkdir()
    for model_id in tiny_ltx2.MODEL_IDS:
        pipe = tiny_ltx2.save(model_id, str(root / "diffusers" / f"tiny-{model_id}"))
        sd, meta = tiny_ltx2.ltx2_lora(pipe.transformer, seed=31, trigger_word="ohwx")
        save_file(sd, str(root / "loras" / LORA[model_id]), metadata=meta)
        if model_id == "ltx2":
            save_file(sd, str(root / "loras" / "ltx2_as_wan.safetensors"),
                      metadata=tiny_ltx2.aitk_metadata(sd, base_version="wan_2.1"))
            for naming in ("original", "diffusers"):
                extra = tiny_ltx2.outside_blocks_lora(pipe.transformer, OUTSIDE, naming=naming)
                save_file(extra, str(root / "loras" / f"ltx2_outside_{naming}.safetensors"),
                          metadata=tiny_ltx2.aitk_metadata(extra))
    return root


@pytest.fixture(scope="module")
def roots(models):
    yield from cached_roots(models, 8)


def handle(roots, dtype, loras=(), model="ltx2", quantization="none"):
    h = engine.load(model, base=f"tiny-{model}", dtype=dtype, device="cpu", roots=roots, quantization=quantization)
    for name, strength in loras:
        h = engine.apply_lora(h, name, strength, roots=roots)
    return h


_RENDERS: dict = {}


def _hashable(value):
    """A memo key part: control images by their mode, size and pixels."""
    if isinstance(value, tuple):
        return tuple(_hashable(v) for v in value)
    if hasattr(value, "tobytes") and hasattr(value, "mode"):
        return ("image", value.mode, value.size, value.tobytes())
    return value


def render(roots, dtype, loras=(), model="ltx2", prompt=PROMPT, quantization="none", **values):
    """The library's render (memoized per arguments: several tests compare against the same one)."""
    key = (dtype, tuple(loras), model, prompt, quantization,
           tuple(sorted((k, _hashable(v)) for k, v in values.items())))
    if key not in _RENDERS:
        h = handle(roots, dtype, loras, model, quantization)
        request = engine.build_request(h.spec, prompt, **{**SMALL, "negative_prompt": NEGATIVE, **values})
        _RENDERS[key] = engine.render(h, request)
    return _RENDERS[key]


_PARTS: dict = {}


def reference(models, dtype, strength=None, model="ltx2", prompt=PROMPT, negative=NEGATIVE, quantized=False,
              image=None, crf=ref.IMAGE_CRF, low_vram=True, **values):
    v = dict(SMALL, **values)
    parts = ref.load_parts(str(models / "diffusers" / f"tiny-{model}"), DTYPES[dtype], v23=model == "ltx2.3")
    if quantized:  # the preset: qfloat8 transformer and Gemma 3, the LoRA as ai-toolkit's unmerged fp32 branch
        from tests.reference_flux import branch_peft, quantize_like_aitk

        quantize_like_aitk(parts["transformer"], DTYPES[dtype])
        quantize_like_aitk(parts["text_encoder"], DTYPES[dtype])
    if strength is not None:
        sd = load_file(str(models / "loras" / LORA[model]))
        if quantized:
            peft = {"transformer." + k[len("diffusion_model."):]: t for k, t in sd.items()}
            assert branch_peft(parts, peft, strength) == len(sd) // 2
        else:
            assert ref.merge(parts, sd, strength) == len(sd) // 2
    return ref.preview(parts, prompt, negative, v["seed"], v["steps"], v["guidance_scale"], v["width"],
                       v["height"], v["num_frames"], DTYPES[dtype], image=image, crf=crf, low_vram=low_vram)


def same_audio(out, want_wave, want_rate):
    assert out.audio is not None, "an LTX-2 video preview carries its audio"
    assert out.audio.sample_rate == want_rate == tiny_ltx2.SAMPLE_RATE
    got = np.asarray(out.audio.waveform)
    assert got.dtype == np.float32 and got.shape == want_wave.shape and got.shape[0] == 2, (got.shape, want_wave.shape)
    assert np.array_equal(got, want_wave), f"audio differs by up to {np.abs(got - want_wave).max()}"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_base_matches_reference(models, roots, dtype):
    out = render(roots, dtype)
    assert out.frames.shape == (9, 64, 64, 3) and out.fps == 24.0
    assert out.frames.std() > 5, "the tiny model should render a non-flat video"
    assert len({frame.tobytes() for frame in out.frames}) > 1, "the frames should differ"
    frames, wave, rate = reference(models, dtype)
    same(out.frames, frames)
    same_audio(out, wave, rate)
    assert np.abs(wave).max() > 1e-3, "the tiny vocoder should make a non-silent track"


def test_guidance_1_still_guides_the_audio(models, roots):
    out = render(roots, "fp32", guidance_scale=1.0)
    frames, wave, rate = reference(models, "fp32", guidance_scale=1.0)
    same(out.frames, frames)
    same_audio(out, wave, rate)
    assert levels(out.frames, render(roots, "fp32").frames) > 5  # the negative pass matters above 1


@pytest.mark.parametrize("dtype,strength", [("fp32", 1.0), ("bf16", 1.0), ("fp32", 0.6)])
def test_lora_merged_matches_reference(models, roots, dtype, strength):
    out = render(roots, dtype, loras=[(LORA["ltx2"], strength)])
    frames, wave, rate = reference(models, dtype, strength=strength)
    same(out.frames, frames)
    same_audio(out, wave, rate)
    base = render(roots, dtype)
    assert levels(out.frames, base.frames) > 5, "the LoRA should change the video"
    assert not np.array_equal(out.audio.waveform, base.audio.waveform), "the LoRA should change the audio"


def test_every_key_applied_and_wrong_family_refused(models, roots):
    report = handle(roots, "fp32", [(LORA["ltx2"], 1.0)]).reports()[0]
    n = len(load_file(str(models / "loras" / LORA["ltx2"]))) // 2
    assert n == 28 * tiny_ltx2.LAYERS["ltx2"]  # ai-toolkit's 28 Linears per block
    assert (report.applied_modules, report.not_applied_keys) == (n, 0), report.summary()
    with pytest.raises(LoraError, match="wan"):
        handle(roots, "fp32", [("ltx2_as_wan.safetensors", 1.0)])


@pytest.mark.parametrize("asked,snapped", [(12, 9), (16, 9), (20, 17)])
def test_frames_snapped_down_to_8k_plus_1(models, roots, asked, snapped):
    h = handle(roots, "fp32")
    assert engine.build_request(h.spec, "x", num_frames=asked).num_frames == snapped
    if asked == 12:
        out = render(roots, "fp32", num_frames=asked)
        assert out.frames.shape[0] == snapped
        same(out.frames, render(roots, "fp32").frames)  # 12 renders exactly the 9-frame preview


def test_size_floored_to_32(models, roots):
    out = render(roots, "fp32", width=100, height=72)  # GenerateImageConfig: 96x72; the pipeline: 96x64
    assert out.frames.shape[1:3] == (64, 96)
    assert any("floored to 96x64" in n for n in out.notes), out.notes
    frames, wave, rate = reference(models, "fp32", width=96, height=64)
    same(out.frames, frames)
    same_audio(out, wave, rate)


def test_fps_sets_the_rate_not_the_pixels(models, roots):
    out = render(roots, "fp32", fps=12)
    base = render(roots, "fp32")
    assert (out.fps, base.fps) == (12.0, 24.0)
    same(out.frames, base.frames)
    assert np.array_equal(out.audio.waveform, base.audio.waveform)
    assert any("frame rate only" in n for n in out.notes), out.notes


def test_defaults(roots):
    h = handle(roots, "fp32")
    default = engine.build_request(h.spec, "x")
    assert (default.num_frames, default.fps, default.width, default.height, default.steps,
            default.guidance_scale) == (121, 24, 768, 768, 30, 4.0)


def test_one_frame_is_an_image_without_audio(models, roots):
    out = render(roots, "fp32", num_frames=1)
    frames, wave, _ = reference(models, "fp32", num_frames=1)
    assert out.frames.shape == (1, 64, 64, 3) and out.audio is None and wave is None
    same(out.frames, frames)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_ltx23_explicit_guidance_matches_reference(models, roots, dtype):
    out = render(roots, dtype, model="ltx2.3")
    assert out.frames.shape == (9, 64, 64, 3)
    frames, wave, rate = reference(models, dtype, model="ltx2.3")
    same(out.frames, frames)
    same_audio(out, wave, rate)


def test_ltx23_lora_and_stg_block_28(models, roots):
    out = render(roots, "fp32", loras=[(LORA["ltx2.3"], 0.6)], model="ltx2.3")
    frames, wave, rate = reference(models, "fp32", strength=0.6, model="ltx2.3")
    same(out.frames, frames)
    same_audio(out, wave, rate)
    report = handle(roots, "fp32", [(LORA["ltx2.3"], 0.6)], model="ltx2.3").reports()[0]
    assert report.not_applied_keys == 0 and report.applied_modules > 28 * 29
    # STG really perturbs block 28 of 2.3: without it (guidance on the other terms only) the preview differs
    parts = ref.load_parts(str(models / "diffusers" / "tiny-ltx2.3"), torch.float32, v23=True)
    plain = dict(ref.GUIDANCE)
    try:
        ref.GUIDANCE.update(stg_blocks=())
        no_stg, _, _ = ref.preview(parts, PROMPT, NEGATIVE, **{k: SMALL[k] for k in ("seed", "steps")},
                                   guidance=SMALL["guidance_scale"], width=64, height=64, frames=9,
                                   dtype=torch.float32)
    finally:
        ref.GUIDANCE.update(plain)
    print(f"\nltx2.3 fp32: STG at block 28 vs none: {levels(no_stg, render(roots, 'fp32', model='ltx2.3').frames)} "
          "levels")
    assert levels(no_stg, render(roots, "fp32", model="ltx2.3").frames) > 0


def test_wrong_vocoder_is_refused(models, roots):
    with pytest.raises(ModelSourceError, match="LTX2VocoderWithBWE"):
        engine.load("ltx2.3", base="tiny-ltx2", dtype="fp32", device="cpu", roots=roots, quantization="none")


def test_node_outputs_audio_and_a_video_carrying_it(models, roots, monkeypatch):
    """AIToolkitSample: IMAGE = the frames, AUDIO = ComfyUI AUDIO {"waveform": [1, 2, S], "sample_rate"} equal to the
    library's samples (= the reference's), and the VIDEO carries that same AUDIO, so Save Video writes the track."""
    from tests.conftest import pack

    monkeypatch.setenv("AITK_MODELS_DIR", str(models))
    mapping = pack.NODE_CLASS_MAPPINGS
    (h,) = mapping["LoadAIToolkitPipeline"]().load(model="ltx2", base="tiny-ltx2", dtype="fp32", device="cpu",
                                                   quantization="none")
    image, video, audio = mapping["AIToolkitSample"]().sample(
        pipeline=h, prompt=PROMPT, negative_prompt=NEGATIVE, trigger_word="", width=64, height=64, seed=7, steps=2,
        guidance_scale=4.0, num_frames=9, fps=12)
    want = render(roots, "fp32", fps=12)
    assert np.array_equal(np.rint(image.numpy() * 255).astype(np.uint8), want.frames)
    assert audio["sample_rate"] == tiny_ltx2.SAMPLE_RATE and audio["waveform"].dtype == torch.float32
    assert audio["waveform"].shape == (1,) + want.audio.waveform.shape
    assert np.array_equal(audio["waveform"][0].numpy(), want.audio.waveform)
    parts = video.get_components()
    assert parts.frame_rate == 12 and parts.audio is audio and torch.equal(parts.images, image)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_qfloat8_preset_with_branch_lora(models, roots, dtype):
    pytest.importorskip("optimum.quanto")
    out = render(roots, dtype, loras=[(LORA["ltx2"], 1.0)], quantization="match training")
    assert any(n.startswith("quantized base: qfloat8 on transformer, text_encoder") and
               n.endswith("(LoRA as an fp32 branch)") for n in out.notes), out.notes
    frames, wave, rate = reference(models, dtype, strength=1.0, quantized=True)
    same(out.frames, frames)
    same_audio(out, wave, rate)
    plain = render(roots, dtype, loras=[(LORA["ltx2"], 1.0)])
    print(f"\nltx2 {dtype}: qfloat8 vs unquantized render: {levels(out.frames, plain.frames)} levels")
    assert levels(out.frames, plain.frames) > 0


def test_live_preview_unpacks_the_middle_latent_frame():
    """The sampler's packed video tokens [1, F*h*w, 128] → the middle latent frame [128, h, w] (ComfyUI's LTXV
    factors)."""
    from aitk_pack.pipelines.families import get_family
    from aitk_pack.pipelines.preview import latent_to_image
    from aitk_pack.pipelines.registry import get_spec

    spec = get_spec("ltx2")
    request = engine.build_request(spec, "x", width=128, height=64, num_frames=17)  # 3 latent frames of 2x4
    grid = torch.zeros(1, 3, 2, 4, 128)
    grid[0, 1] = torch.linspace(-1, 1, 128)  # only the middle frame is non-zero
    packed = grid.reshape(1, 3 * 2 * 4, 128)
    middle = get_family(spec).preview_latents(spec, packed, request)
    assert torch.equal(middle, grid[0, 1].permute(2, 0, 1))
    image = latent_to_image(spec, packed, 64, request)
    flat = latent_to_image(spec, torch.zeros_like(packed), 64, request)
    assert image is not None and image.size == (64, 32)
    assert np.asarray(image).tolist() != np.asarray(flat).tolist()


def test_layers_outside_the_blocks_under_their_original_names(roots):
    """A file with the non-block Linears under the names ai-toolkit saves (`patchify_proj`, `adaln_single.` …)
    applies every key and renders exactly as the same tensors under Diffusers paths."""
    reports = [handle(roots, "fp32", [(f"ltx2_outside_{n}.safetensors", 1.0)]).reports()[0]
               for n in ("original", "diffusers")]
    assert [(r.applied_modules, r.not_applied_keys) for r in reports] == [(len(OUTSIDE), 0)] * 2, \
        [r.summary() for r in reports]
    original = render(roots, "fp32", loras=[("ltx2_outside_original.safetensors", 1.0)])
    same(original.frames, render(roots, "fp32", loras=[("ltx2_outside_diffusers.safetensors", 1.0)]).frames)
    assert levels(original.frames, render(roots, "fp32").frames) > 0


# ---- image-to-video (ai-toolkit's ctrl_img: LTX2ImageToVideoPipeline) ------------------------------------------------

def control_image(mode="RGB", size=(64, 64)):
    """A deterministic picture with structure (gradients and a block), in `mode` and `size`."""
    from PIL import Image

    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(w + h - 2, 1)], -1)
    rgb[h // 4: h // 2, w // 3: 2 * w // 3] = (250, 30, 200)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray(((x * 7 + y * 3) % 256).astype(np.uint8), "L")
        image = image.convert("RGBA")
        image.putalpha(alpha)
        return image
    return image.convert(mode)


IMAGE = control_image()


@pytest.mark.parametrize("model,dtype,strength", [("ltx2", "fp32", None), ("ltx2", "bf16", None),
                                                  ("ltx2", "fp32", 0.6), ("ltx2", "bf16", 0.6),
                                                  ("ltx2.3", "fp32", None), ("ltx2.3", "fp32", 0.6)])
def test_image_to_video_matches_reference(models, roots, model, dtype, strength):
    """A control image: LTX2ImageToVideoPipeline as ai-toolkit calls it (image only: the H.264 CRF 33 round trip,
    the VAE mode latent as frame 0, per-token timesteps 0 there, Euler on the other frames), frames and audio bit
    for bit against the hand-written loop; the image changes the video."""
    loras = [(LORA[model], strength)] if strength is not None else []
    out = render(roots, dtype, loras=loras, model=model, controls=(IMAGE,))
    assert out.frames.shape == (9, 64, 64, 3)
    assert any("image-to-video" in n and "CRF 33" in n for n in out.notes), out.notes
    frames, wave, rate = reference(models, dtype, strength=strength, model=model, image=IMAGE)
    same(out.frames, frames)
    same_audio(out, wave, rate)
    t2v = render(roots, dtype, loras=loras, model=model)
    print(f"\n{model} {dtype} LoRA {strength}: image-to-video vs text-to-video: {levels(out.frames, t2v.frames)} "
          "levels")
    assert levels(out.frames, t2v.frames) > 5, "the control image should change the video"
    if strength is not None:
        assert levels(out.frames, render(roots, dtype, model=model, controls=(IMAGE,)).frames) > 5, \
            "the LoRA should change the image-to-video preview"


def test_image_to_video_odd_image_as_ai_toolkit(models, roots):
    """An RGBA image of odd size: `convert("RGB")` (alpha dropped, not composited) and a LANCZOS resize to the
    floored size, as generate_single_image does with the opened ctrl_img."""
    odd = control_image("RGBA", (50, 37))
    out = render(roots, "fp32", controls=(odd,), width=100, height=72)  # -> 96x64
    assert out.frames.shape == (9, 64, 96, 3)
    frames, wave, rate = reference(models, "fp32", image=odd, width=96, height=64)
    same(out.frames, frames)
    same_audio(out, wave, rate)
    gray = control_image("L", (50, 37))
    same(render(roots, "fp32", controls=(gray.convert("RGB"),)).frames,
         render(roots, "fp32", controls=(gray,)).frames)


def test_image_to_video_one_frame_matches_reference(models, roots):
    """One frame with a control image: the single latent frame is the image's (never stepped), decoded as an image
    without audio, as the reference's loop gives."""
    out = render(roots, "fp32", controls=(IMAGE,), num_frames=1)
    frames, wave, _ = reference(models, "fp32", image=IMAGE, num_frames=1)
    assert out.frames.shape == (1, 64, 64, 3) and out.audio is None and wave is None
    same(out.frames, frames)
    assert levels(out.frames, render(roots, "fp32", num_frames=1).frames) > 5


def test_image_crf_round_trip_measured(models, roots):
    """ai-toolkit passes no image_crf, so the pipeline's 33 applies: skipping the H.264 round trip (image_crf=0)
    renders a different preview; the difference is printed."""
    out = render(roots, "fp32", controls=(IMAGE,))
    no_crf, wave, _ = reference(models, "fp32", image=IMAGE, crf=0)
    pixels = np.asarray(IMAGE)
    trip = ref.h264_round_trip(pixels, ref.IMAGE_CRF)
    print(f"\nltx2 fp32 image-to-video: image_crf 0 instead of 33: {levels(out.frames, no_crf)} levels (frames), "
          f"audio up to {np.abs(out.audio.waveform - wave).max():.3g}; the round trip moves the image by "
          f"{levels(pixels, trip)} levels")
    assert levels(pixels, trip) > 0
    assert levels(out.frames, no_crf) > 0


def test_image_to_video_without_av_is_an_error(roots, monkeypatch):
    """Without PyAV the H.264 round trip cannot run: an error naming av and the fix, before anything renders; the
    cached pipeline then renders the same preview."""
    from aitk_pack.pipelines.errors import ControlImageError

    h = handle(roots, "fp32")
    request = engine.build_request(h.spec, PROMPT, **{**SMALL, "negative_prompt": NEGATIVE, "controls": (IMAGE,)})
    with monkeypatch.context() as patch:
        patch.setitem(__import__("sys").modules, "av", None)
        with pytest.raises(ControlImageError, match="pip install av"):
            engine.render(h, request)
    same(engine.render(h, request).frames, render(roots, "fp32", controls=(IMAGE,)).frames)


def test_node_control_image_renders_image_to_video(models, roots, monkeypatch):
    """AIToolkitSample with an IMAGE on control_image (LoadImage -> control_image) renders the library's
    image-to-video preview; without it, text-to-video."""
    from tests.conftest import pack

    monkeypatch.setenv("AITK_MODELS_DIR", str(models))
    mapping = pack.NODE_CLASS_MAPPINGS
    (h,) = mapping["LoadAIToolkitPipeline"]().load(model="ltx2", base="tiny-ltx2", dtype="fp32", device="cpu",
                                                   quantization="none")
    comfy = torch.from_numpy(np.asarray(IMAGE).astype(np.float32) / 255.0)[None]
    image, _video, audio = mapping["AIToolkitSample"]().sample(
        pipeline=h, prompt=PROMPT, negative_prompt=NEGATIVE, trigger_word="", width=64, height=64, seed=7, steps=2,
        guidance_scale=4.0, num_frames=9, fps=24, control_image=comfy)
    want = render(roots, "fp32", controls=(IMAGE,))
    assert np.array_equal(np.rint(image.numpy() * 255).astype(np.uint8), want.frames)
    assert np.array_equal(audio["waveform"][0].numpy(), want.audio.waveform)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_low_vram_framewise_decode_as_the_presets(models, roots, dtype):
    """The presets' `low_vram`: 25 frames (4 latent frames, over the 16-frame tile) decode in temporal tiles, as
    ai-toolkit's preview does; option `low_vram` off decodes them whole, as a config with low_vram false."""
    tiled = render(roots, dtype, num_frames=25)
    frames, wave, rate = reference(models, dtype, num_frames=25)
    same(tiled.frames, frames)
    same_audio(tiled, wave, rate)
    h = handle(roots, dtype).with_options(low_vram=False)
    whole = engine.render(h, engine.build_request(h.spec, PROMPT, **{**SMALL, "negative_prompt": NEGATIVE,
                                                                      "num_frames": 25}))
    frames_whole, _, _ = reference(models, dtype, num_frames=25, low_vram=False)
    same(whole.frames, frames_whole)
    gap = levels(tiled.frames, whole.frames)
    print(f"\nLTX-2 {dtype} 25 frames: framewise (low_vram) vs whole decode: {gap} levels")
    assert gap > 0, "the framewise decode should change a 25-frame video"
    assert not handle(roots, dtype).base.pipe.vae.use_framewise_decoding, "the cached VAE is left as it was"
