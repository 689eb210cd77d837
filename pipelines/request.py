"""The generic request and result every family works with: `SampleRequest` in, `Render` out.

A request is what ai-toolkit's `GenerateImageConfig` holds once the node's values and the prompt's `--flags` are
applied (`prompts.prepare`); a render is the preview as ai-toolkit saves it: 8-bit frames, plus fps and audio for
video models. Nothing here is specific to a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SampleRequest:
    """One preview to render: the node's values, before and after the prompt's flags are applied."""
    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    seed: int = 42
    steps: int = 30
    guidance_scale: float = 6.0
    guidance_rescale: float = 0.0
    network_multiplier: float | None = None  # None: the strengths of the LoRA chain as given
    negative_prompt_2: str | None = None      # second SDXL encoder's negative (ai-toolkit: the sample's own `neg`)
    controls: tuple = ()                       # control/reference images (PIL RGB), in slot order; None = not given
    num_frames: int = 1
    fps: int = 16
    ctrl_img: str | None = None
    ctrl_idx: int = 0
    adapter_conditioning_scale: float = 1.0
    refiner_start_at: float = 0.5
    extra_values: tuple[float, ...] = ()
    ignored_prompt_2: str | None = None
    ignored_negative_prompt_2: str | None = None
    flags: tuple[str, ...] = field(default_factory=tuple)  # flags found in the prompt, in order
    options: tuple = ()   # (name, value) overrides of the model's family options (`PipelineHandle.with_options`)


@dataclass(frozen=True)
class Audio:
    """A preview's audio track: float waveform [channels, samples] at `sample_rate`."""
    waveform: np.ndarray
    sample_rate: int


@dataclass(frozen=True)
class Render:
    """A rendered preview: uint8 frames [T, H, W, 3] (T = 1 for an image; a batch of images for image models),
    the frame rate for video (None for images), the audio where the model makes it, and notes on what was used
    (the sampler, the quantization …) for the node's output text."""
    frames: np.ndarray
    fps: float | None = None
    audio: Audio | None = None
    notes: tuple[str, ...] = ()
