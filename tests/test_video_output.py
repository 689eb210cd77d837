"""The sampler node's video outputs, generically: the IMAGE first (a video's frames as the batch, exactly the
library's pixels), then ComfyUI's VIDEO with the fps (what the stock Save Video node writes); image models give a
1-frame-per-image video at 1 fps and ignore num_frames/fps with a warning; the ai-toolkit sampler note reaches the
log; live previews show the middle latent frame of a video."""
from __future__ import annotations

import logging
import os
import sys
import types
from fractions import Fraction

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.fixtures import tiny_wan

from aitk_pack.nodes import comfy_bridge, pipeline_nodes
from aitk_pack.pipelines import engine
from aitk_pack.pipelines.families import get_family
from aitk_pack.pipelines.preview import latent_to_image
from aitk_pack.pipelines.registry import get_spec

SMALL = dict(negative_prompt="", trigger_word="", width=64, height=64, seed=3, steps=2, guidance_scale=4.0)


@pytest.fixture(scope="module")
def wan_models(models_dir):
    folder = os.path.join(models_dir, "diffusers", "tiny-wan21_1b")
    pipe = tiny_wan.save("wan21_1b", folder)
    sd, meta = tiny_wan.wan_lora(pipe.transformer, seed=5, version="0.9.2")
    save_file(sd, os.path.join(models_dir, "loras", "wan_old.safetensors"), metadata=meta)
    return models_dir


def test_video_model_gives_frames_and_a_video(nodes, wan_models, caplog):
    load, apply, sample = nodes
    (handle,) = load.load(model="wan21_1b", base="tiny-wan21_1b", dtype="fp32", device="cpu",
                          quantization="none")
    handle = apply.apply(pipeline=handle, lora_name="wan_old.safetensors", strength=1.0)["result"][0]
    with caplog.at_level(logging.INFO, logger="aitk_inference"):
        image, video, audio = sample.sample(pipeline=handle, prompt="a fox", num_frames=6, fps=12, **SMALL)
    assert image.shape == (5, 64, 64, 3) and image.dtype == torch.float32  # 6 frames snapped to 5
    parts = video.get_components()
    assert parts.frame_rate == Fraction(12) and parts.audio is None and video.get_dimensions() == (64, 64)
    # no audio model: the AUDIO output is silence as long as the video (5 frames at 12 fps), the VIDEO has none
    rate = pipeline_nodes.SILENCE_RATE
    assert audio["sample_rate"] == rate and audio["waveform"].shape == (1, 1, round(5 / 12 * rate))
    assert audio["waveform"].dtype == torch.float32 and not audio["waveform"].any()
    assert torch.equal(parts.images, image)
    request = engine.build_request(handle.spec, "a fox", num_frames=6, fps=12, **SMALL)
    want = engine.render(handle, request).frames
    assert np.array_equal(np.rint(image.numpy() * 255).astype(np.uint8), want)
    assert any("sampler unipc" in r.getMessage() for r in caplog.records), "the sampler note should be logged"


def test_image_model_ignores_frames_and_gives_a_one_frame_video(nodes, caplog):
    load, _, sample = nodes
    (handle,) = load.load(model="sd15", base="tiny-sd15", dtype="fp32", device="cpu")
    with caplog.at_level(logging.WARNING, logger="aitk_inference"):
        image, video, audio = sample.sample(pipeline=handle, prompt="a cat", num_frames=9, fps=24, **SMALL)
    assert image.shape == (1, 64, 64, 3)
    assert audio["waveform"].shape == (1, 1, pipeline_nodes.SILENCE_RATE)  # one image at 1 fps: one second
    assert video.get_components().frame_rate == 1 and torch.equal(video.get_components().images, image)
    assert any("num_frames 9 is ignored" in r.getMessage() for r in caplog.records)
    (plain, _, _) = sample.sample(pipeline=handle, prompt="a cat", **SMALL)
    assert torch.equal(plain, image)


def test_video_is_comfyui_video_inside_comfyui(monkeypatch):
    """With ComfyUI's comfy_api importable, the VIDEO is its VideoFromComponents(VideoComponents(...))."""
    made = {}

    class VideoComponents:
        def __init__(self, images, frame_rate, audio=None):
            made.update(images=images, frame_rate=frame_rate, audio=audio)

    class VideoFromComponents:
        def __init__(self, components):
            self.components = components

    monkeypatch.setitem(sys.modules, "comfy_api", types.ModuleType("comfy_api"))
    monkeypatch.setitem(sys.modules, "comfy_api.input_impl",
                        types.SimpleNamespace(VideoFromComponents=VideoFromComponents))
    monkeypatch.setitem(sys.modules, "comfy_api.util", types.SimpleNamespace(VideoComponents=VideoComponents))
    frames = torch.zeros(3, 16, 16, 3)
    audio = {"waveform": torch.zeros(1, 2, 10), "sample_rate": 8000}
    video = comfy_bridge.make_video(frames, 16.0, audio)
    assert isinstance(video, VideoFromComponents) and isinstance(video.components, VideoComponents)
    assert made["images"] is frames and made["frame_rate"] == Fraction(16) and made["audio"] is audio


def test_live_preview_shows_the_middle_latent_frame():
    spec = get_spec("wan21_1b")
    latents = torch.zeros(1, 16, 3, 4, 4)
    latents[0, :, 1] = torch.linspace(-1, 1, 16).view(16, 1, 1)  # only the middle frame is non-zero
    middle = get_family(spec).preview_latents(spec, latents, None)
    assert torch.equal(middle, latents[0, :, 1])
    image = latent_to_image(spec, latents, 64)
    assert image is not None and image.size == (64, 64)
    flat = latent_to_image(spec, torch.zeros(1, 16, 3, 4, 4), 64)
    assert np.asarray(image).tolist() != np.asarray(flat).tolist()


def test_frames_snap_per_model():
    wan, sd, ltx = get_spec("wan21_1b").media, get_spec("sd15").media, get_spec("ltx2").media
    assert [wan.snap_frames(n) for n in (1, 2, 4, 5, 6, 7, 8, 41, 42)] == [1, 1, 5, 5, 5, 5, 9, 41, 41]
    assert [sd.snap_frames(n) for n in (1, 5, 41)] == [1, 1, 1]
    # LTX-2: ((n-1)//8)*8+1 when (n-1) % 8 (ai-toolkit's generate_single_image): always down, 1 stays 1
    assert [ltx.snap_frames(n) for n in (1, 2, 8, 9, 12, 16, 17, 20, 121, 128)] == [1, 1, 1, 9, 9, 9, 17, 17, 121,
                                                                                   121]
