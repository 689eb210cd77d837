"""Node schema and ComfyUI types: the contract inputs with tooltips, registry-driven defaults, the IMAGE format."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import pack

CONTRACT = {
    "LoadAIToolkitPipeline": ["model", "base", "dtype", "device"],
    "ApplyAIToolkitLoRA": ["pipeline", "lora_name", "strength"],
    "AIToolkitSample": ["pipeline", "prompt", "negative_prompt", "trigger_word", "width", "height", "seed", "steps",
                        "guidance_scale"],
}


def test_contract_inputs_with_tooltips(models_dir):
    for name, inputs in CONTRACT.items():
        cls = pack.NODE_CLASS_MAPPINGS[name]
        spec = cls.INPUT_TYPES()
        fields = {**spec["required"], **spec.get("optional", {})}
        assert [i for i in inputs if i not in fields] == []
        for field, (_, options) in fields.items():
            assert options.get("tooltip"), f"{name}.{field} has no tooltip"
        assert callable(getattr(cls(), cls.FUNCTION)) and cls.CATEGORY and cls.DESCRIPTION
    assert pack.NODE_CLASS_MAPPINGS["AIToolkitSample"].RETURN_TYPES == ("IMAGE", "VIDEO", "AUDIO")  # IMAGE first
    assert pack.WEB_DIRECTORY == "./web"


def test_combos_list_registry_and_model_folders(models_dir):
    load = pack.NODE_CLASS_MAPPINGS["LoadAIToolkitPipeline"].INPUT_TYPES()["required"]
    from aitk_pack.pipelines.registry import REGISTRY

    assert load["model"][0] == list(REGISTRY) and load["model"][0][:3] == ["sd15", "sdxl", "flux"]
    assert load["base"][0][0] == "default" and "tiny-sdxl" in load["base"][0]
    assert "tiny-sd15.safetensors" in load["base"][0]
    loras = pack.NODE_CLASS_MAPPINGS["ApplyAIToolkitLoRA"].INPUT_TYPES()["required"]["lora_name"][0]
    assert "sdxl_kohya.safetensors" in loras


def test_image_holds_the_preview_bytes_and_survives_saveimage():
    """k/255 in float32, times 255 as SaveImage does (`np.clip(255. * x, 0, 255).astype(uint8)`), gives k."""
    from aitk_pack.nodes.pipeline_nodes import images_to_comfy

    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    image = images_to_comfy(pixels)
    assert image.dtype == torch.float32 and image.shape == (1, 16, 16, 3)
    saved = np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(saved, pixels)


@pytest.mark.parametrize("model, first, last", [("sd15", 951, 1), ("sdxl", 950, 0)])
def test_preview_scheduler_is_ai_toolkits_ddpm(model, first, last):
    """ai-toolkit's DDPM: leading spacing; steps_offset 1 on SD1.5 (its pipeline rewrites the 0 in sd_config),
    0 on SDXL. 20 steps → 951…1 and 950…0."""
    from aitk_pack.pipelines import get_spec
    from aitk_pack.pipelines.samplers import make_scheduler

    sched = make_scheduler(get_spec(model))
    assert type(sched).__name__ == "DDPMScheduler"
    sched.set_timesteps(20)
    assert (int(sched.timesteps[0]), int(sched.timesteps[-1]), len(sched.timesteps)) == (first, last, 20)
    assert sched.config.variance_type == "fixed_small" and sched.config.prediction_type == "epsilon"


def test_repo_scheduler_does_not_leak(models_dir):
    """The Diffusers folder ships its own scheduler config; sampling still uses ai-toolkit's."""
    import json
    import os

    with open(os.path.join(models_dir, "diffusers", "tiny-sd15", "scheduler", "scheduler_config.json")) as f:
        saved = json.load(f)
    saved["_class_name"] = "PNDMScheduler"
    with open(os.path.join(models_dir, "diffusers", "tiny-sd15", "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(saved, f)
    load, _, sample = (pack.NODE_CLASS_MAPPINGS[n]() for n in CONTRACT)
    (h,) = load.load(model="sd15", base="tiny-sd15", dtype="fp32", device="cpu")
    assert type(h.base.family._sampling_pipeline(h.spec, h.base.pipe, None).scheduler).__name__ == "DDPMScheduler"


def test_progress_callback_outside_comfyui_is_none():
    from aitk_pack.nodes.comfy_bridge import step_callback
    from aitk_pack.pipelines import get_spec

    assert step_callback(get_spec("sdxl"), 4) is None


def test_latent_preview_is_an_image():
    from aitk_pack.pipelines import get_spec
    from aitk_pack.pipelines.preview import latent_to_image

    image = latent_to_image(get_spec("sdxl"), torch.randn(1, 4, 8, 8), max_size=64)
    assert image.size == (64, 64) and image.mode == "RGB"
