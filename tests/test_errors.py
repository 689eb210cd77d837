"""Bad input gives a clear error naming the input, and the cached pipeline renders the same pixels afterwards."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.errors import AitkError, InputError, LoraError, ModelSourceError, UnknownModelError

SMALL = dict(width=64, height=64, steps=3, seed=5)


@pytest.fixture
def base_and_pixels(models_dir):
    h = engine.load("sdxl", base="tiny-sdxl", dtype="fp32", device="cpu")
    with_lora = h.with_lora(os.path.join(models_dir, "loras", "sdxl_kohya.safetensors"), 1.0)
    return h, with_lora, engine.generate(h, "a cat", **SMALL), engine.generate(with_lora, "a cat", **SMALL)


def assert_unchanged(state):
    h, with_lora, plain, lora_pixels = state
    np.testing.assert_array_equal(engine.generate(h, "a cat", **SMALL), plain)
    np.testing.assert_array_equal(engine.generate(with_lora, "a cat", **SMALL), lora_pixels)


def write(models_dir, name, data: bytes) -> str:
    path = os.path.join(models_dir, "loras", name)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture
def scratch(models_dir):
    made = []
    yield made
    for path in made:
        os.remove(path)


def _bad_files(models_dir):
    good = open(os.path.join(models_dir, "loras", "sdxl_kohya.safetensors"), "rb").read()
    return {
        "corrupt.safetensors": (os.urandom(4096), "cannot be read as safetensors"),
        "truncated.safetensors": (good[: len(good) // 2], "truncated"),
        "empty.safetensors": (b"", "cannot be read"),
    }


@pytest.mark.parametrize("name", ["corrupt.safetensors", "truncated.safetensors", "empty.safetensors"])
def test_unreadable_lora_files(models_dir, base_and_pixels, scratch, nodes, name):
    data, message = _bad_files(models_dir)[name]
    scratch.append(write(models_dir, name, data))
    _, apply, _ = nodes
    with pytest.raises(LoraError, match=message) as err:
        apply.apply(pipeline=base_and_pixels[0], lora_name=name, strength=1.0)
    assert name in str(err.value)
    assert_unchanged(base_and_pixels)


def _save(models_dir, scratch, name, tensors, metadata=None):
    path = os.path.join(models_dir, "loras", name)
    save_file(tensors, path, metadata=metadata)
    scratch.append(path)
    return name


def test_non_lora_safetensors(models_dir, base_and_pixels, scratch, nodes):
    name = _save(models_dir, scratch, "checkpoint_like.safetensors",
                 {"model.diffusion_model.conv_in.weight": torch.zeros(4, 4, 3, 3)})
    with pytest.raises(LoraError, match="holds no LoRA weights"):
        nodes[1].apply(pipeline=base_and_pixels[0], lora_name=name, strength=1.0)
    assert_unchanged(base_and_pixels)


def test_wrong_family_by_metadata(models_dir, base_and_pixels, scratch, nodes):
    state = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(4, 8),
             "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.ones(8, 4)}
    name = _save(models_dir, scratch, "flux_lora.safetensors", state, {"ss_base_model_version": "flux.1",
                                                                      "software": json.dumps({"name": "ai-toolkit"})})
    with pytest.raises(LoraError, match=r"FLUX\.1-dev LoRA .*pipeline is Stable Diffusion XL"):
        nodes[1].apply(pipeline=base_and_pixels[0], lora_name=name, strength=1.0)
    assert_unchanged(base_and_pixels)


def test_wrong_family_by_keys(models_dir, base_and_pixels, scratch, nodes):
    state = {"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.ones(4, 8),
             "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.ones(24, 4)}
    name = _save(models_dir, scratch, "chroma_lora.safetensors", state)
    with pytest.raises(LoraError, match="looks like a FLUX.1/Chroma/FLUX.2"):
        nodes[1].apply(pipeline=base_and_pixels[0], lora_name=name, strength=1.0)
    assert_unchanged(base_and_pixels)


def test_sd15_lora_on_sdxl(models_dir, base_and_pixels, nodes):
    with pytest.raises(LoraError, match="Stable Diffusion 1.5 LoRA"):
        nodes[1].apply(pipeline=base_and_pixels[0], lora_name="sd15_kohya.safetensors", strength=1.0)
    assert_unchanged(base_and_pixels)


def test_sd15_lora_on_sdxl_without_metadata(models_dir, base_and_pixels, scratch, nodes):
    from safetensors.torch import load_file

    name = _save(models_dir, scratch, "nometa_sd15.safetensors",
                 load_file(os.path.join(models_dir, "loras", "sd15_kohya.safetensors")))
    with pytest.raises(LoraError, match="wrong shape|applies"):
        nodes[1].apply(pipeline=base_and_pixels[0], lora_name=name, strength=1.0)
    assert_unchanged(base_and_pixels)


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "missing.safetensors"])
def test_lora_names_resolve_only_inside_the_loras_folder(models_dir, base_and_pixels, nodes, name, tmp_path):
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    with pytest.raises(LoraError, match="not found in the loras folders"):
        nodes[1].apply(pipeline=base_and_pixels[0], lora_name=name, strength=1.0)
    assert_unchanged(base_and_pixels)


def test_unknown_model_id(models_dir, base_and_pixels, nodes):
    with pytest.raises(UnknownModelError, match="Unknown model id 'sdxxl'.*sd15, sdxl"):
        nodes[0].load(model="sdxxl", base="default", dtype="auto", device="cpu")
    assert_unchanged(base_and_pixels)


def test_missing_base_and_offline_hub(models_dir, base_and_pixels, nodes, tmp_path, monkeypatch):
    with pytest.raises(ModelSourceError, match="'nope' was not found"):
        nodes[0].load(model="sdxl", base="nope", dtype="auto", device="cpu")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="stabilityai/stable-diffusion-xl-base-1.0 is not in the local"):
        nodes[0].load(model="sdxl", base="default", dtype="auto", device="cpu")
    assert_unchanged(base_and_pixels)


@pytest.mark.parametrize("values, message", [
    (dict(width=32), "width 32 is outside 64..8192"),
    (dict(height=9000), "height 9000 is outside"),
    (dict(prompt="x --w abc"), "--w needs a number"),
    (dict(prompt="x --steps 0"), "steps must be"),
    (dict(prompt="x --w 20000"), "larger than 8192"),
    (dict(prompt="x --s 1001"), "steps must be 1..1000 for sdxl"),
])
def test_impossible_sizes_and_bad_flags(models_dir, base_and_pixels, nodes, values, message):
    inputs = dict(prompt="a cat", negative_prompt="", trigger_word="", width=64, height=64, seed=1, steps=2,
                  guidance_scale=6.0)
    inputs.update(values)
    with pytest.raises(InputError, match=message):
        nodes[2].sample(pipeline=base_and_pixels[1], **inputs)
    assert_unchanged(base_and_pixels)


def test_flag_sizes_below_the_minimum_are_floored_like_ai_toolkit(models_dir, base_and_pixels):
    """A --w/--h in a training prompt rendered at ai-toolkit's floor (max(64, x - x % 8)): reproduce that."""
    from aitk_pack.pipelines import get_spec

    request = engine.build_request(get_spec("sdxl"), "x --w 20 --h 100")
    assert (request.width, request.height) == (64, 96)


def test_errors_are_one_family(models_dir):
    for cls in (InputError, LoraError, ModelSourceError, UnknownModelError):
        assert issubclass(cls, AitkError)


def test_sd15_step_limit_follows_its_scheduler():
    """SD1.5's leading spacing with steps_offset 1 would ask DDPM for timestep 1000 at 1000 steps: refuse it
    clearly instead of an IndexError deep inside the scheduler (ai-toolkit itself would crash there)."""
    from aitk_pack.pipelines import get_spec

    assert engine.build_request(get_spec("sd15"), "x", steps=999).steps == 999
    with pytest.raises(InputError, match="steps must be 1..999 for sd15"):
        engine.build_request(get_spec("sd15"), "x", steps=1000)
