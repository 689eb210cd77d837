"""The contract nodes render ai-toolkit's preview bit for bit: node output == the hand-written reference
(tests/reference.py: plain Diffusers configured as ai-toolkit's sampler), in fp32 and bf16 on CPU."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests import reference
from tests.conftest import DEVICE

TE_PREFIXES = {"sd15": {"text_encoder": "lora_te"}, "sdxl": {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SMALL = dict(width=64, height=64, steps=5)


def node_pixels(nodes, model, dtype, loras=(), **inputs):
    load, apply, sample = nodes
    (handle,) = load.load(model=model, base=f"tiny-{model}", dtype=dtype, device=DEVICE)
    for name, strength in loras:
        handle = apply.apply(pipeline=handle, lora_name=f"{name}.safetensors", strength=strength)["result"][0]
    values = dict(negative_prompt="", trigger_word="", seed=42, guidance_scale=6.0, **SMALL)
    values.update(inputs)
    image = sample.sample(pipeline=handle, **values)[0]
    assert image.dtype == torch.float32 and image.shape[-1] == 3
    return np.rint(image[0].numpy() * 255).astype(np.uint8)


def reference_pixels(models_dir, model, dtype, loras=(), prompt="", negative="", seed=42, guidance=6.0,
                     width=64, height=64, steps=5, guidance_rescale=0.0, negative_2=None, branch=False,
                     **scheduler):
    parts = reference.load_components(os.path.join(models_dir, "diffusers", f"tiny-{model}"), model == "sdxl",
                                      DTYPES[dtype], DEVICE)
    if loras:
        stack = [(load_file(os.path.join(models_dir, "loras", f"{n}.safetensors")), m) for n, m in loras]
        apply = reference.branch_kohya if branch else reference.merge_kohya
        assert len(apply(parts, stack, TE_PREFIXES[model])) if branch else apply(parts, stack, TE_PREFIXES[model])
    return reference.preview(parts, prompt, negative, seed, steps, guidance, width, height, guidance_rescale,
                             negative_2, **scheduler)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_base_model_matches_reference(nodes, models_dir, model, dtype):
    prompt = "a red fox sitting in the snow, photo"
    got = node_pixels(nodes, model, dtype, prompt=prompt)
    want = reference_pixels(models_dir, model, dtype, prompt=prompt)
    assert got.std() > 5, "the tiny model should render a non-flat image"
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model", ["sd15", "sdxl"])
@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_lora_matches_reference_merge(nodes, models_dir, model, dtype, strength):
    lora = (f"{model}_kohya_conv", strength)
    prompt = "photo of a ohwx dog"
    got = node_pixels(nodes, model, dtype, [lora], prompt=prompt)
    want = reference_pixels(models_dir, model, dtype, [lora], prompt=prompt)
    base = reference_pixels(models_dir, model, dtype, prompt=prompt)
    assert np.abs(want.astype(int) - base).max() > 10, "the LoRA must visibly change the image"
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_text_encoder_lora_matches_reference(nodes, models_dir, model, dtype):
    lora = (f"{model}_kohya_te", 1.0)
    got = node_pixels(nodes, model, dtype, [lora], prompt="a castle")
    np.testing.assert_array_equal(got, reference_pixels(models_dir, model, dtype, [lora], prompt="a castle"))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_flags_and_trigger_match_reference(nodes, models_dir, model, dtype):
    """Trigger substituted first (also inside --n), then the flags override the node's size, seed, cfg, steps and
    strength; the second SDXL encoder keeps the node's own negative, as ai-toolkit does."""
    text = "[trigger] riding a bike --n ugly [trigger] --w 72 --h 67 --seed 7 --cfg 4.5 --steps 4 --m 0.5 --gr 0.3"
    got = node_pixels(nodes, model, dtype, [(f"{model}_kohya", 1.0)], prompt=text, trigger_word="ohwx",
                      negative_prompt="lowres", seed=1, guidance_scale=8.0)
    want = reference_pixels(models_dir, model, dtype, [(f"{model}_kohya", 0.5)], prompt="ohwx riding a bike",
                            negative="ugly ohwx", negative_2="lowres", seed=7, guidance=4.5, width=72, height=64,
                            steps=4, guidance_rescale=0.3 if model == "sdxl" else 0.0)
    assert got.shape == (64, 72, 3)
    np.testing.assert_array_equal(got, want)


def test_two_loras_combine_in_one_merge(nodes, models_dir):
    loras = [("sdxl_kohya", 0.5), ("sdxl_kohya_b", 0.5)]
    got = node_pixels(nodes, "sdxl", "bf16", loras, prompt="a lighthouse")
    want = reference_pixels(models_dir, "sdxl", "bf16", loras, prompt="a lighthouse")
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_model_defaults_are_ai_toolkit_preset(nodes, models_dir, model):
    """0 / -1 mean the registry's values, which are ai-toolkit's UI preset: ddpm, 30 steps, guidance 6, 512 or
    1024 square (here checked on the request the node builds, not by rendering 1024 px)."""
    from aitk_pack.pipelines import engine, get_spec

    request = engine.build_request(get_spec(model), "x", width=0, height=0, steps=0, guidance_scale=-1)
    side = 512 if model == "sd15" else 1024
    assert (request.width, request.height, request.steps, request.guidance_scale) == (side, side, 30, 6.0)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_unmerged_fp32_branch_matches_reference(nodes, models_dir, model, dtype):
    """ai-toolkit's path for sample events with mixed multipliers: the LoRA is not merged but runs in fp32 beside
    each layer. In bf16 that differs from the merged render, and each matches its own reference."""
    loras = [(f"{model}_kohya_conv", 0.8), (f"{model}_kohya_te", 1.0)]
    got = node_pixels(nodes, model, dtype, loras, prompt="a blue car", lora_mode="fp32 branch")
    want = reference_pixels(models_dir, model, dtype, loras, prompt="a blue car", branch=True)
    np.testing.assert_array_equal(got, want)
    if dtype == "bf16":
        merged = node_pixels(nodes, model, dtype, loras, prompt="a blue car")
        assert (merged != got).any(), "in bf16 the merged and unmerged paths round differently"


# ai-toolkit's get_sampler(name) for arch "sd": the class, and the init args it adds to sd_config
OTHER_SAMPLERS = {"euler": ("EulerDiscreteScheduler", {}),
                  "k_dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++",
                                                                     "use_karras_sigmas": True})}


@pytest.mark.parametrize("sampler", list(OTHER_SAMPLERS))
@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_sampler_chosen_on_the_node_matches_ai_toolkits_get_sampler(nodes, models_dir, model, sampler, caplog):
    """The node's `sampler` input renders as ai-toolkit does with that `sample.sampler` (a different picture from
    the default ddpm, so the input is really used), and the text under the node says which one ran."""
    prompt = "photo of a ohwx dog"
    lora = (f"{model}_kohya", 1.0)
    with caplog.at_level("INFO", logger="aitk_inference"):
        got = node_pixels(nodes, model, "fp32", [lora], prompt=prompt, sampler=sampler)
    assert f"sampler {sampler}: chosen on the node (ai-toolkit previews" in caplog.text
    cls, args = OTHER_SAMPLERS[sampler]
    want = reference_pixels(models_dir, model, "fp32", [lora], prompt=prompt, scheduler_class=cls, **args)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, node_pixels(nodes, model, "fp32", [lora], prompt=prompt))


def test_sampler_the_model_lacks_is_refused_with_its_list(nodes):
    from aitk_pack.pipelines.errors import InputError

    load, _, sample = nodes
    (handle,) = load.load(model="sd15", base="tiny-sd15", dtype="fp32", device=DEVICE)
    with pytest.raises(InputError, match=r"'unipc' is not available for sd15; choose one of: match training, .*ddpm"):
        sample.sample(pipeline=handle, prompt="x", sampler="unipc", **SMALL)
