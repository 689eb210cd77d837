"""Wan 2.1 T2V through the library renders ai-toolkit's preview bit for bit: library output == the independent
hand-written reference (tests/reference_wan.py: ai-toolkit's recipe as its own loop), fp32 and bf16 on CPU, for the
base (true CFG with the encoded negative, guidance 1 without), ai-toolkit's saved LoRA layout (`diffusion_model.` +
original Wan names) merged at strengths 1 and 0.6 with every key applied, the same tensors under Diffusers names,
prompt flags and the trigger, frame counts snapped to 4k+1, sizes floored to 16, the preview sampler picked from
the LoRA's ai-toolkit version (UniPC before 0.9.3, flow-match Euler since; the user's choice wins), and wan21_14b's
qfloat8 preset (transformer and UMT5 quantized, the LoRA as an fp32 branch)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import reference_wan as ref
from tests.fixtures import tiny_wan
from tests.fixtures.model_roots import cached_roots
from tests.fixtures.pixels import levels, same

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.errors import InputError, LoraError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SMALL = dict(width=64, height=64, steps=2, seed=7, guidance_scale=4.0, num_frames=5)
PROMPT = "a red fox running in the snow"
NEGATIVE = "blurry, low quality"
LORA = "wan21_aitk.safetensors"
OLD = "wan21_aitk_0.9.2.safetensors"  # the same tensors, saved by an ai-toolkit that previewed Wan with UniPC


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_models")
    for sub in ("diffusers", "checkpoints", "loras"):
        (root / sub).mkdir()
    for model_id in tiny_wan.MODEL_IDS:
        pipe = tiny_wan.save(model_id, str(root / "diffusers" / f"tiny-{model_id}"))
        if model_id == "wan21_1b":
            transformer = pipe.transformer
    sd, meta = tiny_wan.wan_lora(transformer, seed=21, trigger_word="ohwx")
    save_file(sd, str(root / "loras" / LORA), metadata=meta)
    for version in ("0.9.2", "0.9.3", "0.9.4"):
        save_file(sd, str(root / "loras" / f"wan21_aitk_{version}.safetensors"),
                  metadata=tiny_wan.aitk_metadata(sd, version=version))
    save_file(sd, str(root / "loras" / "wan21_noversion.safetensors"), metadata=tiny_wan.aitk_metadata(sd, version=None))
    diffusers_sd, _ = tiny_wan.wan_lora(transformer, seed=21, naming="diffusers")
    save_file(diffusers_sd, str(root / "loras" / "wan21_diffusers.safetensors"), metadata=meta)
    save_file(sd, str(root / "loras" / "wan21_as_flux.safetensors"),
              metadata=tiny_wan.aitk_metadata(sd, base_version="flux.1"))
    return root


@pytest.fixture(scope="module")
def roots(models):
    yield from cached_roots(models, 8)


def handle(roots, dtype, loras=(), model="wan21_1b", quantization="none"):
    h = engine.load(model, base=f"tiny-{model}", dtype=dtype, device="cpu", roots=roots, quantization=quantization)
    for name, strength in loras:
        h = engine.apply_lora(h, name, strength, roots=roots)
    return h


_RENDERS: dict = {}


def render(roots, dtype, loras=(), model="wan21_1b", quantization="none", sampler=None, prompt=PROMPT, **values):
    """The library's render (memoized per arguments: several tests compare against the same one)."""
    key = (dtype, tuple(loras), model, quantization, sampler, prompt, tuple(sorted(values.items())))
    if key not in _RENDERS:
        _RENDERS[key] = _render(roots, dtype, loras, model, quantization, sampler, prompt, **values)
    return _RENDERS[key]


def _render(roots, dtype, loras, model, quantization, sampler, prompt, **values):
    h = handle(roots, dtype, loras, model, quantization)
    request = engine.build_request(h.spec, prompt, **{**SMALL, "negative_prompt": NEGATIVE, **values})
    return engine.render(h, request, sampler=sampler)


def reference(models, dtype, strength=None, model="wan21_1b", quantized=False, sampler="flowmatch",
              prompt=PROMPT, negative=NEGATIVE, **values):
    v = dict(SMALL, **values)
    parts = ref.load_parts(str(models / "diffusers" / f"tiny-{model}"), DTYPES[dtype])
    if quantized:
        from tests.reference_flux import quantize_like_aitk

        quantize_like_aitk(parts["transformer"], DTYPES[dtype])
        quantize_like_aitk(parts["text_encoder"], DTYPES[dtype])
    if strength is not None:
        sd = load_file(str(models / "loras" / LORA))
        if quantized:  # ai-toolkit's unmerged fp32 side branch over the quantized Linears
            from tests.reference_flux import branch_peft

            peft = {ref.to_diffusers(k.rsplit(".lora_", 1)[0]) + ".lora_" + k.rsplit(".lora_", 1)[1]: t
                    for k, t in sd.items()}
            assert branch_peft(parts, peft, strength) == 20
        else:
            assert ref.merge(parts, sd, strength) == 20
    return ref.preview(parts, prompt, negative, v["seed"], v["steps"], v["guidance_scale"], v["width"],
                       v["height"], v["num_frames"], DTYPES[dtype], sampler=sampler)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_base_matches_reference(models, roots, dtype):
    out = render(roots, dtype)
    assert out.frames.shape == (5, 64, 64, 3) and out.fps == 16.0
    assert out.frames.std() > 5, "the tiny model should render a non-flat video"
    assert len({frame.tobytes() for frame in out.frames}) > 1, "the frames should differ"
    same(out.frames, reference(models, dtype))
    assert any(n.startswith("sampler flowmatch") for n in out.notes), out.notes


def test_guidance_1_runs_without_cfg(models, roots):
    got = render(roots, "fp32", guidance_scale=1.0).frames
    same(got, reference(models, "fp32", guidance_scale=1.0))
    assert levels(got, render(roots, "fp32").frames) > 5  # the negative pass matters above 1


@pytest.mark.parametrize("dtype,strength", [("fp32", 1.0), ("bf16", 1.0), ("fp32", 0.6)])
def test_lora_merged_matches_reference(models, roots, dtype, strength):
    got = render(roots, dtype, loras=[(LORA, strength)]).frames
    same(got, reference(models, dtype, strength=strength))
    assert levels(got, render(roots, dtype).frames) > 5, "the LoRA should change the video"


def test_every_key_applied_in_both_layouts(models, roots):
    aitk = handle(roots, "fp32", [(LORA, 1.0)]).reports()[0]
    assert (aitk.applied_modules, aitk.not_applied_keys) == (20, 0), aitk.summary()
    assert "40/40 keys" in aitk.summary()
    diffusers = handle(roots, "fp32", [("wan21_diffusers.safetensors", 1.0)])
    assert diffusers.reports()[0].applied_modules == 20
    same(engine.render(diffusers, engine.build_request(diffusers.spec, PROMPT, negative_prompt=NEGATIVE,
                                                       **SMALL)).frames,
         render(roots, "fp32", loras=[(LORA, 1.0)]).frames)


def test_a_conv3d_patch_embedding_key_is_reported_not_applied(models, roots, tmp_path):
    """ai-toolkit never writes one (its LoRA wraps Linear and Conv2d only); another trainer's 5-D LoRA on the
    Conv3d `patch_embedding` is counted as not applied, with the reason, and the rest applies."""
    sd = load_file(str(models / "loras" / LORA))
    sd["diffusion_model.patch_embedding.lora_A.weight"] = torch.zeros(4, 16, 1, 2, 2)
    sd["diffusion_model.patch_embedding.lora_B.weight"] = torch.zeros(24, 4, 1, 1, 1)
    name = "wan21_with_conv3d.safetensors"
    save_file(sd, str(models / "loras" / name), metadata=tiny_wan.aitk_metadata(sd, version=tiny_wan.VERSION))
    report = handle(roots, "fp32", [(name, 1.0)]).reports()[0]
    assert (report.applied_modules, report.not_applied_keys) == (20, 2), report.summary()
    assert any("patch_embedding" in w for w in report.warnings()), report.summary()


def test_wrong_family_lora_is_refused(roots):
    with pytest.raises(LoraError, match="flux"):
        handle(roots, "fp32", [("wan21_as_flux.safetensors", 1.0)])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_lora_from_before_0_9_3_previews_with_unipc(models, roots, dtype):
    out = render(roots, dtype, loras=[(OLD, 1.0)])
    assert any(n.startswith("sampler unipc") and "0.9.2" in n for n in out.notes), out.notes
    same(out.frames, reference(models, dtype, strength=1.0, sampler="unipc"))
    # the same tensors from a newer ai-toolkit preview with flow-match Euler: a different video
    euler = render(roots, dtype, loras=[(LORA, 1.0)]).frames
    print(f"\nwan21_1b {dtype}: UniPC (ai-toolkit < 0.9.3) vs flow-match Euler preview: {levels(out.frames, euler)} levels")
    assert levels(out.frames, euler) > 0


def test_sampler_versions_and_override(models, roots):
    newer = render(roots, "fp32", loras=[("wan21_aitk_0.9.4.safetensors", 1.0)])
    same(newer.frames, render(roots, "fp32", loras=[(LORA, 1.0)]).frames)
    ambiguous = render(roots, "fp32", loras=[("wan21_aitk_0.9.3.safetensors", 1.0)])
    assert any(n.startswith("sampler flowmatch") and "choose sampler unipc" in n for n in ambiguous.notes)
    unknown = render(roots, "fp32", loras=[("wan21_noversion.safetensors", 1.0)])
    assert any("records no ai-toolkit version" in n for n in unknown.notes), unknown.notes
    forced = render(roots, "fp32", loras=[(OLD, 1.0)], sampler="flowmatch")
    assert any("chosen on the node" in n and "match training: unipc" in n for n in forced.notes), forced.notes
    same(forced.frames, newer.frames)
    base_unipc = render(roots, "fp32", sampler="unipc")
    same(base_unipc.frames, reference(models, "fp32", sampler="unipc"))
    with pytest.raises(InputError, match="flowmatch, unipc"):
        render(roots, "fp32", sampler="euler")


@pytest.mark.parametrize("asked,snapped", [(6, 5), (8, 9)])
def test_frames_snapped_to_4k_plus_1(models, roots, asked, snapped):
    out = render(roots, "fp32", num_frames=asked)
    assert out.frames.shape[0] == snapped
    same(out.frames, reference(models, "fp32", num_frames=snapped))


def test_defaults_flags_and_trigger(models, roots):
    h = handle(roots, "fp32")
    default = engine.build_request(h.spec, "x")
    assert (default.num_frames, default.fps, default.width, default.height, default.steps,
            default.guidance_scale) == (41, 16, 1024, 1024, 30, 4.0)
    request = engine.build_request(h.spec, "[trigger] in a field --n dark, noisy --frames 7 --fps 24 --cfg 3 "
                                          "--seed 3 --w 64 --h 64 --s 2", trigger_word="ohwx")
    assert (request.prompt, request.negative_prompt, request.num_frames, request.fps) == \
        ("ohwx in a field", "dark, noisy", 5, 24)
    out = engine.render(h, request)
    assert out.fps == 24.0
    same(out.frames, reference(models, "fp32", prompt="ohwx in a field", negative="dark, noisy", num_frames=5,
                               guidance_scale=3.0, seed=3, steps=2))


def test_size_floored_to_16_with_a_note(models, roots):
    out = render(roots, "fp32", width=72, height=88)
    assert out.frames.shape[1:3] == (80, 64)
    assert any("floored to 64x80" in n for n in out.notes), out.notes
    same(out.frames, reference(models, "fp32", width=64, height=80))


def test_bad_frame_values_are_refused(roots):
    h = handle(roots, "fp32")
    with pytest.raises(InputError, match="num_frames"):
        engine.build_request(h.spec, "x --frames 5000")
    with pytest.raises(InputError, match="fps"):
        engine.build_request(h.spec, "x", fps=-3)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_14b_qfloat8_preset_with_branch_lora(models, roots, dtype):
    pytest.importorskip("optimum.quanto")
    out = render(roots, dtype, loras=[(LORA, 1.0)], model="wan21_14b", quantization="match training")
    assert any(n.startswith("quantized base: qfloat8 on transformer") and n.endswith("(LoRA as an fp32 branch)")
               for n in out.notes), out.notes
    same(out.frames, reference(models, dtype, strength=1.0, model="wan21_14b", quantized=True))
    plain = render(roots, dtype, loras=[(LORA, 1.0)], model="wan21_14b", quantization="none").frames
    print(f"\nwan21_14b {dtype}: qfloat8 vs unquantized render: {levels(out.frames, plain)} levels")
    assert levels(out.frames, plain) > 0
