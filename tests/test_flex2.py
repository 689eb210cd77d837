"""Flex.2-preview through the library renders ai-toolkit's preview bit for bit: library output == the independent
hand-written `Flex2Pipeline.__call__` (tests/reference_flux.py:preview_flex2), fp32 and bf16 on CPU, without and with
a control image, with ai-toolkit's peft LoRA (merged, strengths 1 and 0.7), and on a qfloat8 base with the LoRA as
ai-toolkit's fp32 side branch. Also prints what the documented mistakes would cost (for the README)."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests import reference_flux as ref
from tests.fixtures import tiny_flux
from tests.fixtures.pixels import levels, same

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.cache import CACHE
from aitk_pack.pipelines.errors import InputError, ModelSourceError
from aitk_pack.pipelines.families import get_family
from aitk_pack.pipelines.families.flux.flex2 import Flex2
from aitk_pack.pipelines.sources import ModelRoots

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SMALL = dict(width=64, height=64, steps=3, seed=7, guidance_scale=4.0)
PROMPT = "a red fox in the snow"
LORA = "flex2_peft.safetensors"


def control_image(width=80, height=48):
    """A deterministic control image of another size than the output (so the LANCZOS resize matters)."""
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)
    rgb = np.stack([np.add.outer(y, x) / 2, np.outer(y, np.ones_like(x)), np.outer(np.ones_like(y), x)], -1)
    rgb[height // 3: height // 2, width // 4: width // 2] = (250, 20, 40)  # an edge for the resize to smear
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    start = time.time()
    root = tmp_path_factory.mktemp("flex2_models")
    (root / "loras").mkdir()
    pipe = tiny_flux.save("flex2", str(root / "diffusers" / "tiny-flex2"))
    sd, meta = tiny_flux.flux_peft_lora(pipe.transformer, seed=21, model_id="flex2", trigger_word="ohwx")
    save_file(sd, str(root / "loras" / LORA), metadata=meta)
    tiny_flux.save("flux", str(root / "diffusers" / "tiny-flux"))
    print(f"\n[flex2 fixtures built in {time.time() - start:.1f} s]")
    return root


@pytest.fixture(scope="module")
def roots(models):
    yield ModelRoots(diffusers=(str(models / "diffusers"),), loras=(str(models / "loras"),))
    CACHE.release()


def handle_for(roots, dtype, loras=(), quantization="none"):
    handle = engine.load("flex2", base="tiny-flex2", dtype=dtype, device="cpu", roots=roots,
                         quantization=quantization)
    for name, strength in loras:
        handle = engine.apply_lora(handle, name, strength, roots=roots)
    return handle


def render(roots, dtype, loras=(), quantization="none", prompt=PROMPT, **values):
    return engine.generate(handle_for(roots, dtype, loras, quantization), prompt, **dict(SMALL, **values))[0]


def reference(models, dtype, lora_strength=None, quantized=False, control=None, prompt=PROMPT, **values):
    v = dict(SMALL, **values)
    parts = ref.load_parts(str(models / "diffusers" / "tiny-flex2"), "flex2", DTYPES[dtype])
    if quantized:
        ref.quantize_like_aitk(parts["transformer"], DTYPES[dtype])
        ref.quantize_like_aitk(parts["text_encoder_2"], DTYPES[dtype])
    if lora_strength is not None:
        sd = load_file(str(models / "loras" / LORA))
        assert (ref.branch_peft if quantized else ref.merge_peft)(parts, sd, lora_strength) > 0
    return ref.preview_flex2(parts, prompt, v["seed"], v["steps"], v["guidance_scale"], v["width"], v["height"],
                             control_pil=control)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_base_matches_reference(models, roots, dtype):
    got = render(roots, dtype)
    assert got.shape == (64, 64, 3) and got.std() > 5, "the tiny model should render a non-flat image"
    same(got, reference(models, dtype))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_control_image_matches_reference(models, roots, dtype):
    """An 80x48 control: LANCZOS to 64x64, VAE sample from the seed's generator before the noise, control slot."""
    control = control_image()
    got = render(roots, dtype, controls=(control,))
    same(got, reference(models, dtype, control=control))
    assert levels(got, render(roots, dtype)) > 10, "the control image should change the image"


def test_control_image_with_size_flooring(models, roots):
    """`--w 120 --h 72`: ai-toolkit holds 120x72 (8-floored); the control is resized to and the image rendered at
    the 16-floored 112x64."""
    control = control_image(96, 96)
    got = render(roots, "fp32", prompt="photo of [trigger] --w 120 --h 72 --seed 9", trigger_word="ohwx",
                 controls=(control,))
    assert got.shape == (64, 112, 3)
    same(got, reference(models, "fp32", control=control, prompt="photo of ohwx", width=120, height=72, seed=9))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_aitk_lora_matches_reference(models, roots, dtype, strength):
    got = render(roots, dtype, [(LORA, strength)])
    assert levels(got, render(roots, dtype)) > 10, "the LoRA should change the image"
    same(got, reference(models, dtype, lora_strength=strength))


def test_every_key_of_the_aitk_file_applies(roots):
    report = handle_for(roots, "fp32", [(LORA, 1.0)]).loras[-1].bound.report
    assert report.applied_keys == report.total_keys == 2 * (14 * tiny_flux.N_DOUBLE + 6 * tiny_flux.N_SINGLE)
    assert not report.warnings()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_quantized_base_with_fp32_branch_matches_reference(models, roots, dtype):
    """qfloat8 as Flex2.load_model builds it (transformer and T5, after the cast), the LoRA unmerged in fp32."""
    pytest.importorskip("optimum.quanto")
    got = render(roots, dtype, [(LORA, 0.7)], quantization="qfloat8")
    same(got, reference(models, dtype, lora_strength=0.7, quantized=True))
    print(f"\n[flex2 quantized vs unquantized, {dtype}] max "
          f"{levels(got, render(roots, dtype, [(LORA, 0.7)]))} levels")


def test_guidance_feeds_the_embedding_and_the_negative_is_unused(models, roots):
    base = render(roots, "fp32")
    other = render(roots, "fp32", guidance_scale=2.0)
    assert levels(base, other) > 0, "guidance is not bypassed at sampling"
    same(other, reference(models, "fp32", guidance_scale=2.0))
    same(render(roots, "fp32", negative_prompt="blurry, ugly"), base)


def test_steps_report_packed_latents(roots):
    seen = []
    handle = handle_for(roots, "fp32")
    engine.generate(handle, PROMPT, on_step=lambda s, n, lat: seen.append((s, n, tuple(lat.shape))), **SMALL)
    assert seen == [(i, 3, (1, 16, 64)) for i in (1, 2, 3)]
    request = engine.build_request(handle.spec, PROMPT, **SMALL)
    assert get_family(handle.spec).preview_latents(handle.spec, torch.zeros(1, 16, 64), request).shape == (16, 8, 8)


def test_no_attn_masking_option(roots):
    """Flex2.get_prompt_embeds calls encode_prompts_flux without attn masking: the option is not offered."""
    with pytest.raises(InputError, match="no model options"):
        handle_for(roots, "fp32").with_options(attn_masking=True)


def test_a_flux1_folder_is_refused(roots):
    with pytest.raises(ModelSourceError, match="196"):
        engine.load("flex2", base="tiny-flux", dtype="fp32", device="cpu", roots=roots, quantization="none")


# ----------------------------------------------------------------------------- what the mistakes would cost
class _MaskZero(Flex2):
    @staticmethod
    def blank_slots(latents):
        return [torch.zeros_like(torch.cat([latents, latents[:, :, :4]], dim=2)), torch.zeros_like(latents)]


class _VaeMode(Flex2):
    @staticmethod
    def control_latents(sampling, control, width, height, generator):
        vae = sampling.vae
        real = vae.encode

        class _Mode:
            def __init__(self, dist):
                self.latent_dist = type("D", (), {"sample": lambda _s, generator=None: dist.mode()})()

        vae.encode = lambda x: _Mode(real(x).latent_dist)
        try:
            return Flex2.control_latents(sampling, control, width, height, generator)
        finally:
            del vae.encode


class _NoiseFirst(Flex2):
    def start(self, sampling, request, width, height, dtype, device, generator):
        latents, image_ids = sampling.prepare_latents(1, 16, height, width, dtype, device, generator)
        control = self.control_latents(sampling, request.controls[0], width, height, generator)
        return latents, image_ids, control


def _direct(family, handle, request):
    base = handle.base
    with base.lock:
        base.patcher.set_stack([], "merge")
        return engine.to_uint8(family.generate(base.spec, base.pipe, request))[0]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cost_of_the_documented_mistakes(roots, dtype):
    """Not asserted beyond "it differs": printed for the README (levels of 255, tiny 64x64 / 3-step model)."""
    handle = handle_for(roots, dtype)
    request = engine.build_request(handle.spec, PROMPT, controls=(control_image(),), **SMALL)
    right = _direct(Flex2(), handle, request)
    same(right, render(roots, dtype, controls=(control_image(),)))
    costs = {
        "mask 0 instead of 1 (no control)": levels(_direct(_MaskZero(), handle, replace(request, controls=())),
                                                   _direct(Flex2(), handle, replace(request, controls=()))),
        "VAE mode instead of a sample": levels(_direct(_VaeMode(), handle, request), right),
        "noise drawn before the control latent": levels(_direct(_NoiseFirst(), handle, request), right),
    }
    print(f"\n[flex2 mistakes, {dtype}] " + "; ".join(f"{k}: {v} levels" for k, v in costs.items()))
    assert all(v > 0 for v in costs.values())
