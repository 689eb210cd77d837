"""ComfyUI's memory management reaches our cached bases: "Unload models" / `POST /free` releases them, and the
next run loads the base again and renders the same pixels."""
from __future__ import annotations

import time

import numpy as np
from PIL import Image


def _graph(seed: int) -> dict:
    return {
        "1": {"class_type": "LoadAIToolkitPipeline",
              "inputs": {"model": "sd15", "base": "tiny-sd15", "dtype": "fp32", "device": "cpu"}},
        "2": {"class_type": "ApplyAIToolkitLoRA",
              "inputs": {"pipeline": ["1", 0], "lora_name": "sd15_kohya.safetensors", "strength": 1.0}},
        "3": {"class_type": "AIToolkitSample",
              "inputs": {"pipeline": ["2", 0], "prompt": "photo of [trigger]", "negative_prompt": "",
                         "trigger_word": "ohwx", "width": 64, "height": 64, "seed": seed, "steps": 3,
                         "guidance_scale": -1.0}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "aitk_memory"}},
    }


def _pixels(server, entry) -> np.ndarray:
    return np.asarray(Image.open(server.output_paths(entry)[0]))


def _wait_for_log(server, text: str, timeout: float = 120) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if text in server.log_text():
            return True
        time.sleep(0.2)
    return False


def test_free_releases_our_bases_and_the_next_run_reloads(comfy_server, models_dir):
    comfy_server.add_models(models_dir)
    first = comfy_server.run_prompt(_graph(seed=21))
    assert first["status"]["status_str"] == "success", first["status"]
    released_before = comfy_server.log_text().count("released")
    comfy_server.free(unload_models=True, free_memory=True)
    assert _wait_for_log(comfy_server, "cached base model(s): ComfyUI unloaded all models"), comfy_server.log_tail()
    assert comfy_server.log_text().count("released") > released_before
    again = comfy_server.run_prompt(_graph(seed=21))
    assert again["status"]["status_str"] == "success", again["status"]
    cached = [m[1].get("nodes", []) for m in again["status"].get("messages", []) if m[0] == "execution_cached"]
    assert cached and "3" not in cached[0], "after /free the sampler must run again"
    np.testing.assert_array_equal(_pixels(comfy_server, again), _pixels(comfy_server, first))
