"""FLUX.1-dev, Flex.1 and Kontext through the library render ai-toolkit's preview bit for bit: library output ==
the independent hand-written reference (tests/reference_flux.py: plain Diffusers configured with ai-toolkit's
settings), fp32 and bf16 on CPU, for the base, LoRA files in ai-toolkit's layout (and BFL names with fused keys),
strength, flags, trigger, the Kontext control image, model options and the qfloat8 base with the fp32 branch."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests import reference_flux as ref
from tests.fixtures import tiny_flux
from tests.fixtures.pixels import same

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.cache import CACHE
from aitk_pack.pipelines.errors import ControlImageError
from aitk_pack.pipelines.sources import ModelRoots

MODELS = ("flux", "flex1", "flux_kontext")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SMALL = dict(width=64, height=64, steps=3, seed=7, guidance_scale=4.0)
PROMPT = "a red fox in the snow"


def control_image():
    """A deterministic control image of another size than the output (so ai-toolkit's resize matters)."""
    x = np.linspace(0, 255, 80, dtype=np.float32)
    y = np.linspace(0, 255, 48, dtype=np.float32)
    rgb = np.stack([np.add.outer(y, x) / 2, np.outer(y, np.ones_like(x)), np.outer(np.ones_like(y), x)], -1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def flux_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux_models")
    (root / "loras").mkdir()
    for model in MODELS:
        pipe = tiny_flux.save(model, str(root / "diffusers" / f"tiny-{model}"))
        sd, meta = tiny_flux.flux_peft_lora(pipe.transformer, seed=11, model_id=model, trigger_word="ohwx")
        save_file(sd, str(root / "loras" / f"{model}_peft.safetensors"), metadata=meta)
        if model == "flux":
            for form, dim in (("full", 10 ** 10), ("factor", 2)):  # ai-toolkit's full-rank default, factorised w2
                sd = lokr_file(pipe.transformer, dim)
                save_file(sd, str(root / "loras" / f"flux_lokr_{form}.safetensors"),
                          metadata=tiny_flux.aitk_metadata(sd, model))
            sd, meta = tiny_flux.flux_bfl_lora(pipe.transformer, seed=12)
            save_file(sd, str(root / "loras" / "flux_bfl.safetensors"), metadata=meta)
            save_file(tiny_flux.bfl_to_peft(sd, pipe.transformer), str(root / "loras" / "flux_bfl_split.safetensors"),
                      metadata=meta)
    return root


def lokr_file(transformer, lora_dim):
    """ai-toolkit's FLUX LoKr layout (`network.type: lokr`, peft format for transformers): keys
    `transformer.<path>.lokr_w1` / `.lokr_w2` (or `_a`/`_b`) and `.alpha` (kept for LoKr, `save_weights`)."""
    from tests.fixtures.lokr_files import lokr_tensors

    gen = torch.Generator().manual_seed(5)
    sd = {}
    for path in tiny_flux.aitk_target_modules(transformer):
        for part, tensor in lokr_tensors(transformer.get_submodule(path), lora_dim, lora_dim, 4, gen=gen,
                                         gain=0.6).items():
            sd[f"transformer.{path}.{part}"] = tensor
    return sd


@pytest.fixture(scope="module")
def roots(flux_models):
    yield ModelRoots(diffusers=(str(flux_models / "diffusers"),), loras=(str(flux_models / "loras"),))
    CACHE.release()


def folder(flux_models, model):
    return str(flux_models / "diffusers" / f"tiny-{model}")


def render(roots, model, dtype, loras=(), quantization="none", prompt=PROMPT, options=None, **values):
    handle = engine.load(model, base=f"tiny-{model}", dtype=dtype, device="cpu", roots=roots,
                         quantization=quantization)
    for name, strength in loras:
        handle = engine.apply_lora(handle, name, strength, roots=roots)
    if options:
        handle = handle.with_options(**options)
    return engine.generate(handle, prompt, **dict(SMALL, **values))[0]


def reference(flux_models, model, dtype, loras=(), prompt=PROMPT, quantized=False, control=None, **values):
    v = dict(SMALL, **values)
    parts = ref.load_parts(folder(flux_models, model), model, DTYPES[dtype])
    if quantized:
        ref.quantize_like_aitk(parts["transformer"], DTYPES[dtype])
        ref.quantize_like_aitk(parts["text_encoder_2"], DTYPES[dtype])
    for name, strength in loras:
        sd = load_file(str(flux_models / "loras" / f"{name}.safetensors"))
        assert (ref.branch_peft if quantized else ref.merge_peft)(parts, sd, strength) > 0
    args = (prompt, v["seed"], v["steps"], v["guidance_scale"], v["width"], v["height"])
    if model == "flux_kontext":
        return ref.preview_kontext(parts, prompt, control if control is not None else control_image(), *args[1:])
    return ref.preview_flux(parts, *args, attn_masking=values.get("attn_masking", False))


def kontext_values(model):
    return {"controls": (control_image(),)} if model == "flux_kontext" else {}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model", MODELS)
def test_base_matches_reference(flux_models, roots, model, dtype):
    got = render(roots, model, dtype, **kontext_values(model))
    assert got.std() > 5, "the tiny model should render a non-flat image"
    same(got, reference(flux_models, model, dtype))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_aitk_lora_matches_reference(flux_models, roots, model, dtype, strength):
    lora = (f"{model}_peft", strength)
    got = render(roots, model, dtype, [(lora[0] + ".safetensors", strength)], **kontext_values(model))
    base = render(roots, model, dtype, **kontext_values(model))
    assert np.abs(got.astype(int) - base.astype(int)).max() > 10, "the LoRA should change the image"
    same(got, reference(flux_models, model, dtype, [lora]))


def test_every_key_of_an_aitk_file_applies(flux_models, roots):
    handle = engine.load("flux", base="tiny-flux", dtype="fp32", device="cpu", roots=roots, quantization="none")
    report = engine.apply_lora(handle, "flux_peft.safetensors", 1.0, roots=roots).loras[-1].bound.report
    assert report.applied_keys == report.total_keys == 2 * (14 * tiny_flux.N_DOUBLE + 6 * tiny_flux.N_SINGLE)
    assert not report.warnings()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_bfl_names_with_fused_keys_equal_the_split_file(roots, dtype):
    """A `diffusion_model.` BFL file (fused qkv and linear1) patches row slices of the split Diffusers layers: the
    same pixels as the same LoRA split into peft keys; applying and removing it restores the base exactly."""
    handle = engine.load("flux", base="tiny-flux", dtype=dtype, device="cpu", roots=roots, quantization="none")
    base = engine.generate(handle, PROMPT, **SMALL)[0]
    fused = engine.apply_lora(handle, "flux_bfl.safetensors", 0.8, roots=roots)
    report = fused.loras[-1].bound.report
    assert report.applied_keys == report.total_keys and not report.warnings()
    split = engine.apply_lora(handle, "flux_bfl_split.safetensors", 0.8, roots=roots)
    got = engine.generate(fused, PROMPT, **SMALL)[0]
    assert np.abs(got.astype(int) - base.astype(int)).max() > 10
    same(got, engine.generate(split, PROMPT, **SMALL)[0])
    same(engine.generate(handle, PROMPT, **SMALL)[0], base)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_fused_branch_equals_split_branch(roots, dtype):
    """Row slices also work unmerged (the fp32 branch mode)."""
    handle = engine.load("flux", base="tiny-flux", dtype=dtype, device="cpu", roots=roots, quantization="none")
    fused = engine.apply_lora(handle, "flux_bfl.safetensors", 0.8, roots=roots)
    split = engine.apply_lora(handle, "flux_bfl_split.safetensors", 0.8, roots=roots)
    same(engine.generate(fused, PROMPT, lora_mode="branch", **SMALL)[0],
         engine.generate(split, PROMPT, lora_mode="branch", **SMALL)[0])


@pytest.mark.parametrize("model", ["flux", "flex1"])
def test_guidance_feeds_the_embedding_and_the_negative_is_unused(flux_models, roots, model):
    base = render(roots, model, "fp32")
    other = render(roots, model, "fp32", guidance_scale=2.0)
    assert np.abs(base.astype(int) - other.astype(int)).max() > 0, "guidance is not bypassed at sampling"
    same(other, reference(flux_models, model, "fp32", guidance_scale=2.0))
    same(render(roots, model, "fp32", negative_prompt="blurry, ugly"), base)


def test_flags_trigger_and_size_flooring(flux_models, roots):
    """`--w 120 --h 72 --cfg 3 --seed 9` and `[trigger]`: ai-toolkit floors 120x72 to 8 (unchanged), FluxPipeline
    to 16 → 112x64."""
    got = render(roots, "flux", "fp32", prompt="photo of [trigger] --w 120 --h 72 --cfg 3 --seed 9",
                 trigger_word="ohwx")
    assert got.shape == (64, 112, 3)
    same(got, reference(flux_models, "flux", "fp32", prompt="photo of ohwx", width=120, height=72,
                        guidance_scale=3.0, seed=9))


def test_attn_masking_option(flux_models, roots):
    got = render(roots, "flux", "fp32", options={"attn_masking": True})
    same(got, reference(flux_models, "flux", "fp32", attn_masking=True))
    assert np.abs(got.astype(int) - render(roots, "flux", "fp32").astype(int)).max() > 0


def test_unknown_option_is_refused(roots):
    handle = engine.load("flux", base="tiny-flux", dtype="fp32", device="cpu", roots=roots, quantization="none")
    with pytest.raises(Exception, match="no option 'attn_mask'"):
        handle.with_options(attn_mask=True)


def test_kontext_needs_its_control_image(roots):
    handle = engine.load("flux_kontext", base="tiny-flux_kontext", dtype="fp32", device="cpu", roots=roots,
                         quantization="none")
    with pytest.raises(ControlImageError, match="control_image"):
        engine.generate(handle, PROMPT, **SMALL)


def test_kontext_control_image_at_the_output_size(flux_models, roots):
    """A control image already at the 8-floored size is not resized by ai-toolkit (only the pipeline's own)."""
    image = control_image().resize((64, 64), Image.NEAREST)
    got = render(roots, "flux_kontext", "fp32", controls=(image,))
    same(got, reference(flux_models, "flux_kontext", "fp32", control=image))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_quantized_base_with_fp32_branch_matches_reference(flux_models, roots, dtype, strength):
    """qfloat8 as ai-toolkit builds it (transformer and T5, after the cast) and the LoRA unmerged in fp32."""
    pytest.importorskip("optimum.quanto")
    got = render(roots, "flux", dtype, [("flux_peft.safetensors", strength)], quantization="qfloat8")
    same(got, reference(flux_models, "flux", dtype, [("flux_peft", strength)], quantized=True))
    plain = render(roots, "flux", dtype, [("flux_peft.safetensors", strength)])
    print(f"\n[quantized vs unquantized, {dtype}, strength {strength}] max "
          f"{np.abs(got.astype(int) - plain.astype(int)).max()} levels")


def test_match_training_quantizes_like_the_preset(roots):
    pytest.importorskip("optimum.quanto")
    handle = engine.load("flux", base="tiny-flux", dtype="fp32", device="cpu", roots=roots)
    assert handle.base.quantization == "qfloat8"
    unquantized = engine.load("flux", base="tiny-flux", dtype="fp32", device="cpu", roots=roots, quantization="none")
    assert unquantized.base is not handle.base and unquantized.base.quantization is None


def test_steps_report_progress_and_live_previews_unpack_the_tokens(roots):
    """`on_step` sees every step; FLUX's packed tokens become a [16, h, w] latent for the live preview."""
    from aitk_pack.pipelines.preview import latent_to_image

    handle = engine.load("flux", base="tiny-flux", dtype="fp32", device="cpu", roots=roots, quantization="none")
    request = engine.build_request(handle.spec, PROMPT, width=96, height=64, steps=3, seed=7, guidance_scale=4.0)
    seen = []
    engine.render(handle, request, on_step=lambda step, total, latents: seen.append((step, total, latents)))
    assert [(s, t) for s, t, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    latents = seen[-1][2]
    assert latents.shape == (1, (96 // 16) * (64 // 16), 64)
    unpacked = handle.base.family.preview_latents(handle.spec, latents, request)
    assert unpacked.shape == (16, 64 // 8, 96 // 8)
    image = latent_to_image(handle.spec, latents, 96, request)
    assert image.size == (96, 64)


def test_wrong_family_files_are_refused_by_name(flux_models, roots, models_dir):
    """An SDXL LoRA on FLUX.1 and a FLUX.1 LoRA on SDXL are refused at Apply, naming the file's model."""
    from aitk_pack.pipelines.errors import LoraError

    flux = engine.load("flux", base="tiny-flux", dtype="fp32", device="cpu", roots=roots, quantization="none")
    sdxl_lora = os.path.join(models_dir, "loras", "sdxl_kohya.safetensors")
    with pytest.raises(LoraError, match="Stable Diffusion XL"):
        flux.with_lora(sdxl_lora, 1.0)
    sdxl = engine.load("sdxl", base="tiny-sdxl", dtype="fp32", device="cpu",
                       roots=ModelRoots(diffusers=(os.path.join(models_dir, "diffusers"),)))
    with pytest.raises(LoraError, match="FLUX.1-dev LoRA"):
        sdxl.with_lora(str(flux_models / "loras" / "flux_peft.safetensors"), 1.0)


def test_nodes_with_options_and_a_control_image(flux_models, roots, monkeypatch):
    """The node path: the options node's attn_masking and Kontext's control_image (an IMAGE as LoadImage gives it)
    render the reference pixels."""
    from tests.conftest import pack

    monkeypatch.setenv("AITK_MODELS_DIR", str(flux_models))
    load, apply, sample, options = (pack.NODE_CLASS_MAPPINGS[n]() for n in (
        "LoadAIToolkitPipeline", "ApplyAIToolkitLoRA", "AIToolkitSample", "AIToolkitModelOptions"))
    values = dict(prompt=PROMPT, negative_prompt="", trigger_word="", **SMALL)

    def pixels(image):
        return np.rint(image[0].numpy() * 255).astype(np.uint8)

    (flux,) = load.load(model="flux", base="tiny-flux", dtype="fp32", device="cpu", quantization="none")
    (masked,) = options.apply(pipeline=flux, attn_masking=True)
    same(pixels(sample.sample(pipeline=masked, **values)[0]),
         reference(flux_models, "flux", "fp32", attn_masking=True))
    (kontext,) = load.load(model="flux_kontext", base="tiny-flux_kontext", dtype="fp32", device="cpu",
                           quantization="none")
    kontext = apply.apply(pipeline=kontext, lora_name="flux_kontext_peft.safetensors", strength=0.6)["result"][0]
    image = torch.from_numpy(np.asarray(control_image(), dtype=np.float32) / 255.0)[None]
    got = pixels(sample.sample(pipeline=kontext, control_image=image, **values)[0])
    same(got, reference(flux_models, "flux_kontext", "fp32", [("flux_kontext_peft", 0.6)]))
    with pytest.raises(Exception, match="no option"):
        options.apply(pipeline=kontext, attn_masking=True)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("form", ["full", "factor"])
def test_lokr_files_match_the_merged_reference(flux_models, roots, form, dtype):
    """LoKr in ai-toolkit's FLUX layout: every key applies, and the render equals the reference with
    `(W.float() + m * kron(w1, w2) * scale).to(W.dtype)` merged by hand (the formula written in tests/test_lokr.py)."""
    from tests.test_lokr import module_tensors, ref_delta

    name = f"flux_lokr_{form}"
    handle = engine.load("flux", base="tiny-flux", dtype=dtype, device="cpu", roots=roots, quantization="none")
    with_lokr = engine.apply_lora(handle, f"{name}.safetensors", 0.8, roots=roots)
    report = with_lokr.loras[-1].bound.report
    assert report.applied_keys == report.total_keys and not report.warnings()
    got = engine.generate(with_lokr, PROMPT, **SMALL)[0]
    assert np.abs(got.astype(int) - engine.generate(handle, PROMPT, **SMALL)[0].astype(int)).max() > 5

    parts = ref.load_parts(folder(flux_models, "flux"), "flux", DTYPES[dtype])
    with torch.no_grad():
        for key, t in module_tensors(load_file(str(flux_models / "loras" / f"{name}.safetensors"))).items():
            layer = parts["transformer"].get_submodule(key[len("transformer."):])
            layer.weight.copy_((layer.weight.float() + 0.8 * ref_delta(t, layer.weight.shape)).to(layer.weight.dtype))
    same(got, ref.preview_flux(parts, PROMPT, SMALL["seed"], SMALL["steps"], SMALL["guidance_scale"], 64, 64))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_lokr_on_the_qfloat8_base_runs_as_ai_toolkits_unmerged_forward(flux_models, roots, dtype):
    """LoKr on the quantized preset: every key applies as a branch over the QLinear layers (quanto weights never
    written), equal to ai-toolkit's `_call_forward_fast_linear` over a base quantized with quanto directly."""
    from tests.test_lokr import lokr_linear_forward, module_tensors

    name = "flux_lokr_factor"
    handle = engine.load("flux", base="tiny-flux", dtype=dtype, device="cpu", roots=roots, quantization="qfloat8")
    with_lokr = engine.apply_lora(handle, f"{name}.safetensors", 0.8, roots=roots)
    report = with_lokr.loras[-1].bound.report
    assert report.applied_keys == report.total_keys and not report.warnings()
    got = engine.generate(with_lokr, PROMPT, **SMALL)[0]

    parts = ref.load_parts(folder(flux_models, "flux"), "flux", DTYPES[dtype])
    ref.quantize_like_aitk(parts["transformer"], DTYPES[dtype])
    ref.quantize_like_aitk(parts["text_encoder_2"], DTYPES[dtype])
    for key, t in module_tensors(load_file(str(flux_models / "loras" / f"{name}.safetensors"))).items():
        layer = parts["transformer"].get_submodule(key[len("transformer."):])
        assert type(layer).__name__ == "QLinear"
        layer.forward = lokr_linear_forward(layer.forward, t, 0.8)
    same(got, ref.preview_flux(parts, PROMPT, SMALL["seed"], SMALL["steps"], SMALL["guidance_scale"], 64, 64))
    assert (got != engine.generate(handle, PROMPT, **SMALL)[0]).any()


def test_bad_input_names_the_input_and_leaves_the_base_as_it_was(flux_models, roots, tmp_path):
    """Bad FLUX-family input: each error names the input and says what to do; the cached base (and a handle with a
    LoRA) render exactly as before afterwards."""
    from aitk_pack.pipelines.errors import AitkError, InputError, LoraError, QuantizationError

    handle = engine.load("flux", base="tiny-flux", dtype="fp32", device="cpu", roots=roots, quantization="none")
    with_lora = engine.apply_lora(handle, "flux_peft.safetensors", 1.0, roots=roots)
    before = (engine.generate(handle, PROMPT, **SMALL)[0], engine.generate(with_lora, PROMPT, **SMALL)[0])
    loras = flux_models / "loras"
    good = (loras / "flux_peft.safetensors").read_bytes()
    (loras / "bad_truncated.safetensors").write_bytes(good[: len(good) // 2])
    sd = load_file(str(loras / "flux_peft.safetensors"))
    sd[sorted(sd)[0]][0, 0] = float("nan")
    save_file(sd, str(loras / "bad_nan.safetensors"))
    cases = [
        (lambda: engine.apply_lora(handle, "bad_truncated.safetensors", 1.0, roots=roots), LoraError,
         "bad_truncated.safetensors"),
        (lambda: engine.apply_lora(handle, "bad_nan.safetensors", 1.0, roots=roots), LoraError, "NaN"),
        (lambda: engine.generate(with_lora, PROMPT + " --m nan", **SMALL), InputError, "--m"),
        (lambda: engine.generate(with_lora, PROMPT, **dict(SMALL, width=32)), InputError, "width"),
        (lambda: engine.load("flux", base="tiny-flux", dtype="fp32", device="cpu", roots=roots,
                             quantization="uint4"), QuantizationError, "uint4"),
        (lambda: engine.load("flux", base="no-such-base", dtype="fp32", device="cpu", roots=roots), AitkError,
         "no-such-base"),
        (lambda: engine.load("sdxl", base="tiny-flux", dtype="fp32", device="cpu", roots=roots), AitkError,
         "FluxPipeline"),
    ]
    for call, kind, named in cases:
        with pytest.raises(kind) as err:
            call()
        assert named in str(err.value), str(err.value)
    same(engine.generate(handle, PROMPT, **SMALL)[0], before[0])
    same(engine.generate(with_lora, PROMPT, **SMALL)[0], before[1])


def _job_folder(flux_models, tmp_path, name, quantize):
    """An ai-toolkit training folder: `<name>/config.yaml` (the job config) and `<name>/<name>_000000250.safetensors`."""
    import shutil

    import yaml

    run = tmp_path / "loras" / name
    run.mkdir(parents=True)
    shutil.copy(flux_models / "loras" / "flux_peft.safetensors", run / f"{name}_000000250.safetensors")
    model = {"name_or_path": "black-forest-labs/FLUX.1-dev", "arch": "flux", "quantize": quantize}
    if quantize:
        model["qtype"] = "qfloat8"
    (run / "config.yaml").write_text(yaml.safe_dump({"job": "extension", "config": {
        "name": name, "process": [{"type": "sd_trainer", "model": model}]}}))
    return ModelRoots(diffusers=(str(flux_models / "diffusers"),), loras=(str(tmp_path / "loras"),))


def test_match_training_follows_the_runs_config_yaml(flux_models, tmp_path):
    """ai-toolkit saves the job's config.yaml beside the checkpoints; with "match training" it decides the base's
    quantization (the LoRA's metadata does not record it), and the report says so."""
    pytest.importorskip("optimum.quanto")
    roots = _job_folder(flux_models, tmp_path, "my_run", quantize=False)
    handle = engine.load("flux", base="tiny-flux", dtype="fp32", device="cpu", roots=roots)
    assert handle.base.quantization == "qfloat8"  # the preset, until a LoRA says otherwise
    lora = engine.apply_lora(handle, "my_run/my_run_000000250.safetensors", 1.0, roots=roots)
    assert lora.base.quantization is None
    assert any("quantization none" in n and "config.yaml" in n for n in lora.loras[-1].bound.report.notes)
    same(engine.generate(lora, PROMPT, **SMALL)[0],
         reference(flux_models, "flux", "fp32", [("flux_peft", 1.0)]))
    explicit = engine.load("flux", base="tiny-flux", dtype="fp32", device="cpu", roots=roots,
                           quantization="qfloat8")
    assert engine.apply_lora(explicit, "my_run/my_run_000000250.safetensors", 1.0,
                             roots=roots).base.quantization == "qfloat8", "an explicit choice wins"


def test_an_unrelated_config_yaml_is_ignored(flux_models, tmp_path):
    roots = _job_folder(flux_models, tmp_path, "other_job", quantize=False)
    os.rename(tmp_path / "loras" / "other_job" / "other_job_000000250.safetensors",
              tmp_path / "loras" / "other_job" / "renamed.safetensors")
    handle = engine.load("flux", base="tiny-flux", dtype="fp32", device="cpu", roots=roots, quantization="none")
    from aitk_pack.pipelines.training_config import find_training_config

    assert find_training_config(str(tmp_path / "loras" / "other_job" / "renamed.safetensors")) is None
    assert engine.apply_lora(handle, "other_job/renamed.safetensors", 1.0, roots=roots).base is handle.base


def test_folders_of_the_same_parts_load_as_either_flux_pipeline(flux_models, roots, tmp_path):
    """A FluxPipeline folder loads as Kontext (ai-toolkit reads the parts, not model_index.json) and renders with a
    control image; a Flex.2 folder (196 input channels) loaded as FLUX.1 is refused, naming flex2."""
    from aitk_pack.pipelines.errors import ModelSourceError

    kontext = engine.load("flux_kontext", base="tiny-flux", dtype="fp32", device="cpu", roots=roots,
                          quantization="none")
    assert engine.generate(kontext, PROMPT, controls=(control_image(),), **SMALL)[0].std() > 5
    tiny_flux.save("flex2", str(tmp_path / "diffusers" / "tiny-flex2"))
    flex_roots = ModelRoots(diffusers=(str(tmp_path / "diffusers"),))
    with pytest.raises(ModelSourceError, match="flex2"):
        engine.load("flux", base="tiny-flex2", dtype="fp32", device="cpu", roots=flex_roots, quantization="none")
