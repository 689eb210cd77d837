"""Lumina-Image 2.0 through the library renders ai-toolkit's preview bit for bit: library output == the independent
hand-written reference (tests/reference_lumina2.py: a plain Lumina2Pipeline call with the prompt and the negative both
encoded with the system prompt, ai-toolkit's own scheduler construction, its own LoRA merge), fp32 and bf16 on CPU,
for the base (unquantized, and the preset's qfloat8 Gemma2), true CFG and guidance 1, ai-toolkit's LoRA at strengths
1 and 0.6 (merged, also on the preset's quantized-TE base), prompt flags and the trigger word. The wrong choices
(shift 6 as the config says, the negative without the system prompt, no CFG normalisation) are shown to give other
pictures; sizes the pipeline would refuse get a clear error before anything runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import reference_lumina2 as ref
from tests.fixtures import tiny_lumina2
from tests.fixtures.model_roots import cached_roots
from tests.fixtures.pixels import levels, same

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.errors import InputError, LoraError
from aitk_pack.pipelines.families import get_family
from aitk_pack.pipelines.registry import get_spec
from aitk_pack.pipelines.sources import ModelRoots

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SMALL = dict(width=64, height=64, steps=3, seed=7, guidance_scale=4.0)
PROMPT = "a red fox in the snow"
NEGATIVE = "blurry, low quality"
LORA = "lumina2_lora.safetensors"
QUANT = {"none": False, "qfloat8": True}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("lumina2_models")
    (root / "loras").mkdir()
    pipe = tiny_lumina2.save(str(root / "diffusers" / "tiny-lumina2"))
    sd, meta = tiny_lumina2.lumina2_lora(pipe.transformer, seed=21, trigger_word="ohwx", name="lumina2_lora")
    save_file(sd, str(root / "loras" / LORA), metadata=meta)
    # the same layout, but the metadata says FLUX.1 (ai-toolkit writes ss_base_model_version per arch)
    save_file(sd, str(root / "loras" / "flux_named.safetensors"),
              metadata=tiny_lumina2.aitk_metadata(sd, base_version="flux.1"))
    # keys of another model (SD-style UNet names), no metadata
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)},
              str(root / "loras" / "sd_keys.safetensors"))
    return root


@pytest.fixture(scope="module")
def roots(models):
    yield from cached_roots(models, 8)


def load(roots, dtype, quantization="none"):
    return engine.load("lumina2", base="tiny-lumina2", dtype=dtype, device="cpu", roots=roots,
                       quantization=quantization)


def render(roots, dtype, loras=(), quantization="none", prompt=PROMPT, **values):
    handle = load(roots, dtype, quantization)
    for name, strength in loras:
        handle = engine.apply_lora(handle, name, strength, roots=roots)
    return engine.generate(handle, prompt, **{**SMALL, "negative_prompt": NEGATIVE, **values})[0]


def reference(models, dtype, strength=None, quantization="none", prompt=PROMPT, negative=NEGATIVE, **values):
    v = dict(SMALL, **values)
    call = {k: v.pop(k) for k in ("scheduler", "negative_system_prompt", "cfg_normalization") if k in v}
    parts = ref.load_parts(str(models / "diffusers" / "tiny-lumina2"), DTYPES[dtype], QUANT[quantization])
    if strength is not None:
        assert ref.merge_peft(parts, load_file(str(models / "loras" / LORA)), strength) == tiny_lumina2.N_LORA_MODULES
    return ref.preview(parts, prompt, negative, v["seed"], v["steps"], v["guidance_scale"], v["width"], v["height"],
                       **call)


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("quantization", ["none", "qfloat8"])
def test_base_matches_reference(models, roots, dtype, quantization):
    if quantization != "none":
        pytest.importorskip("optimum.quanto")
    got = render(roots, dtype, quantization=quantization)
    assert got.std() > 5, "the tiny model should render a non-flat image"
    same(got, reference(models, dtype, quantization=quantization))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_aitk_lora_matches_reference(models, roots, dtype, strength):
    got = render(roots, dtype, [(LORA, strength)])
    assert levels(got, render(roots, dtype)) > 10, "the LoRA should change the image"
    same(got, reference(models, dtype, strength))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_lora_is_merged_on_the_presets_quantized_text_encoder_base(models, roots, dtype):
    """The preset quantizes only Gemma2 (`quantize_te`), so `can_merge_in` stays True and ai-toolkit merges the
    LoRA into the bf16/fp32 transformer (a side branch would round otherwise in bf16)."""
    pytest.importorskip("optimum.quanto")
    got = render(roots, dtype, [(LORA, 1.0)], quantization="qfloat8")
    same(got, reference(models, dtype, 1.0, quantization="qfloat8"))


def test_match_training_quantizes_gemma2_only(roots):
    pytest.importorskip("optimum.quanto")
    from aitk_pack.pipelines.quantize import is_quantized

    handle = engine.load("lumina2", base="tiny-lumina2", dtype="fp32", device="cpu", roots=roots)
    assert handle.base.quantization == "qfloat8"
    pipe = handle.base.pipe
    linears = [m for m in pipe.text_encoder.modules() if isinstance(m, torch.nn.Linear) or is_quantized(m)]
    assert linears and all(is_quantized(m) for m in linears), "every Gemma2 Linear is qfloat8"
    assert not any(is_quantized(m) for m in pipe.transformer.modules()), "the transformer is not quantized"
    assert not handle.base.patcher.quantized, "LoRAs merge into the unquantized transformer"


def test_every_key_of_an_aitk_lumina2_lora_applies(roots):
    report = engine.apply_lora(load(roots, "fp32"), LORA, 1.0, roots=roots).loras[-1].bound.report
    assert report.applied_keys == report.total_keys == 2 * tiny_lumina2.N_LORA_MODULES
    assert report.applied == {"transformer": tiny_lumina2.N_LORA_MODULES}
    assert not report.warnings()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_apply_then_remove_restores_the_base(roots, dtype):
    handle = load(roots, dtype)
    base = engine.generate(handle, PROMPT, negative_prompt=NEGATIVE, **SMALL)[0]
    lora = engine.generate(engine.apply_lora(handle, LORA, 1.0, roots=roots), PROMPT, negative_prompt=NEGATIVE,
                           **SMALL)[0]
    assert levels(lora, base) > 10
    same(engine.generate(handle, PROMPT, negative_prompt=NEGATIVE, **SMALL)[0], base)


def test_flags_trigger_and_size_floor(models, roots):
    """`[trigger]` and `--w 100 --h 86 --cfg 3 --seed 9 --n ...`: ai-toolkit floors to 8 → 96x80 (both multiples
    of 16, so the pipeline renders it), the --n text is the negative, `--m 0.5` the LoRA strength."""
    got = render(roots, "fp32", [(LORA, 1.0)], prompt="photo of [trigger] --w 100 --h 86 --cfg 3 --seed 9 "
                                                      "--n ugly [trigger] --m 0.5", trigger_word="ohwx")
    assert got.shape == (80, 96, 3)
    same(got, reference(models, "fp32", 0.5, prompt="photo of ohwx", negative="ugly ohwx", width=100, height=86,
                        guidance_scale=3.0, seed=9))


def test_true_cfg_only_above_1(models, roots):
    """do_classifier_free_guidance is `guidance_scale > 1`: at 1 the negative is never used."""
    no_cfg = render(roots, "fp32", guidance_scale=1.0)
    same(no_cfg, reference(models, "fp32", guidance_scale=1.0))
    same(render(roots, "fp32", guidance_scale=1.0, negative_prompt="another negative"), no_cfg)
    assert levels(render(roots, "fp32", guidance_scale=1.5, negative_prompt="another negative"),
                  render(roots, "fp32", guidance_scale=1.5)) > 0


def test_empty_negative_is_encoded_with_the_system_prompt(models, roots):
    same(render(roots, "fp32", negative_prompt=""), reference(models, "fp32", negative=""))


# ----------------------------------------------------------------------------- the easy-to-get-wrong choices
def test_shift_is_what_the_custom_scheduler_really_uses(models, roots, capsys):
    """lumina2_config says shift 6, but ai-toolkit's scheduler construction leaves `self.shift` at 1.0: the entry's
    effective config must give ai-toolkit's timesteps, and honouring shift 6 renders another picture."""
    spec = get_spec("lumina2")
    aitk = ref.aitk_scheduler()
    assert aitk.config.shift == 6.0 and spec.scheduler.config["shift"] == aitk.shift != aitk.config.shift
    ours = get_family(spec).scheduler(spec)
    sigmas = np.linspace(1.0, 1 / 4, 4)
    for scheduler in (aitk, ours):
        scheduler.set_timesteps(sigmas=sigmas, mu=0.5)
    assert torch.equal(ours.timesteps, aitk.timesteps) and torch.equal(ours.sigmas, aitk.sigmas)
    got = render(roots, "fp32")
    shifted = reference(models, "fp32", scheduler=ref.honoured_scheduler())
    with capsys.disabled():
        print(f"\n[lumina2] shift 6 (as the config says) vs the preview: {levels(shifted, got)} levels")
    assert levels(shifted, got) > 0


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_negative_without_the_system_prompt_differs(models, roots, dtype, capsys):
    """Stock Diffusers' `negative_prompt=` path encodes the bare negative; ai-toolkit's encodes it with the system
    prompt. Also prints how far a plain `Lumina2Pipeline(prompt=…, negative_prompt=…)` call is (not asserted)."""
    from diffusers import Lumina2Pipeline

    got = render(roots, dtype)
    bare = reference(models, dtype, negative_system_prompt=False)
    assert levels(bare, got) > 0
    stock = Lumina2Pipeline.from_pretrained(str(models / "diffusers" / "tiny-lumina2"), torch_dtype=DTYPES[dtype],
                                            local_files_only=True)
    stock.set_progress_bar_config(disable=True)
    images = stock(prompt=PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=3,
                   guidance_scale=4.0, generator=torch.Generator().manual_seed(SMALL["seed"]), output_type="np").images
    with capsys.disabled():
        print(f"\n[lumina2 {dtype}] negative without the system prompt: {levels(bare, got)} levels; stock "
              f"Lumina2Pipeline(prompt=…) call: {levels((images[0] * 255).round().astype('uint8'), got)} levels")


def test_cfg_normalization_is_on(models, roots):
    assert levels(reference(models, "fp32", cfg_normalization=False), render(roots, "fp32")) > 0


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("width,height,floored,hint", [(72, 64, "72x64", "width 64 or 80"),
                                                      (64, 100, "64x96", None), (76, 120, "72x120",
                                                                                  "width 64 or 80; height 112 or 128")])
def test_sizes_the_pipeline_refuses_are_named_before_anything_runs(roots, width, height, floored, hint):
    handle = load(roots, "fp32")
    steps = []
    if hint is None:  # 100 floors to 96, a multiple of 16: renders
        out = engine.generate(handle, PROMPT, **{**SMALL, "width": width, "height": height})
        assert out.shape[1:3] == (96, 64)
        return
    with pytest.raises(InputError, match="multiples of 16") as info:
        engine.generate(handle, PROMPT, on_step=lambda *a: steps.append(a),
                        **{**SMALL, "width": width, "height": height})
    assert floored in str(info.value) and hint in str(info.value)
    assert not steps, "nothing ran"


def test_wrong_family_lora_is_refused(roots):
    handle = load(roots, "fp32")
    with pytest.raises(LoraError, match="FLUX"):
        engine.apply_lora(handle, "flux_named.safetensors", 1.0, roots=roots)
    with pytest.raises(LoraError, match="No key"):
        engine.apply_lora(handle, "sd_keys.safetensors", 1.0, roots=roots)


# ----------------------------------------------------------------------------- live previews
def test_live_preview_latents(roots):
    from aitk_pack.pipelines.preview import latent_to_image

    spec = get_spec("lumina2")
    seen = []
    engine.generate(load(roots, "fp32"), PROMPT, on_step=lambda step, total, latents: seen.append((step, total,
                                                                                                  latents)), **SMALL)
    assert [(s, t) for s, t, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    request = engine.build_request(spec, PROMPT, **SMALL)
    assert tuple(get_family(spec).preview_latents(spec, seen[-1][2], request).shape) == (16, 8, 8)
    assert latent_to_image(spec, seen[-1][2], request=request) is not None


# ----------------------------------------------------------------------------- "match training" from config.yaml
def _job_folder(models, tmp_path, name, **model_keys):
    """An ai-toolkit training folder: `<name>/config.yaml` (the job config, `model:` as the UI's Lumina2 preset
    writes it, overridden by `model_keys`) and `<name>/<name>_000000250.safetensors`."""
    import shutil

    import yaml

    run = tmp_path / "loras" / name
    run.mkdir(parents=True)
    shutil.copy(models / "loras" / LORA, run / f"{name}_000000250.safetensors")
    model = {"name_or_path": "Alpha-VLLM/Lumina-Image-2.0", "arch": "lumina2", "quantize": False, "qtype": "qfloat8",
             "quantize_te": True, "qtype_te": "qfloat8", **model_keys}
    (run / "config.yaml").write_text(yaml.safe_dump({"job": "extension", "config": {
        "name": name, "process": [{"type": "sd_trainer", "model": model}]}}))
    return ModelRoots(diffusers=(str(models / "diffusers"),), loras=(str(tmp_path / "loras"),))


def test_match_training_reads_quantize_te_from_the_runs_config(models, tmp_path):
    """The UI preset writes `quantize: false, quantize_te: true`: Gemma2 stays qfloat8 (the flag for Lumina2 is
    `quantize_te`, not `quantize`); a run with `quantize_te: false` gets the unquantized text encoder."""
    pytest.importorskip("optimum.quanto")
    from aitk_pack.pipelines.training_config import find_training_config

    preset = _job_folder(models, tmp_path / "a", "preset_run")
    handle = engine.load("lumina2", base="tiny-lumina2", dtype="fp32", device="cpu", roots=preset)
    lora = engine.apply_lora(handle, "preset_run/preset_run_000000250.safetensors", 1.0, roots=preset)
    assert lora.base is handle.base and lora.base.quantization == "qfloat8"
    assert any("quantization qfloat8" in n for n in lora.loras[-1].bound.report.notes)
    same(engine.generate(lora, PROMPT, negative_prompt=NEGATIVE, **SMALL)[0],
         reference(models, "fp32", 1.0, quantization="qfloat8"))
    plain = _job_folder(models, tmp_path / "b", "plain_run", quantize_te=False)
    lora = engine.apply_lora(engine.load("lumina2", base="tiny-lumina2", dtype="fp32", device="cpu", roots=plain),
                             "plain_run/plain_run_000000250.safetensors", 1.0, roots=plain)
    assert lora.base.quantization is None
    # quantize_te follows quantize when the config leaves it out (ModelConfig.__init__)
    config = find_training_config(str(tmp_path / "b" / "loras" / "plain_run" / "plain_run_000000250.safetensors"))
    assert config.quantization_for("quantize_te") is None
    for quantize in (True, False):
        config.model.pop("quantize_te")
        config.model["quantize"] = quantize
        assert config.quantization_for("quantize_te") == ("qfloat8" if quantize else None)
        config.model["quantize_te"] = False


def test_render_notes_say_the_lora_is_merged_on_the_quantized_text_encoder_base(roots):
    pytest.importorskip("optimum.quanto")
    handle = engine.apply_lora(load(roots, "fp32", "qfloat8"), LORA, 1.0, roots=roots)
    out = engine.render(handle, engine.build_request(handle.spec, PROMPT, **SMALL))
    assert "quantized base: qfloat8 on text_encoder (LoRA merged)" in out.notes
