"""The LTX-2 video decode of ai-toolkit's `low_vram` presets: option `low_vram` and the framewise decode it turns on.

`LTX2Model.generate_single_image` (ai-toolkit 27a03a91), when `low_vram` (both UI presets, `ltx2` and `ltx2.3`, set
it): `vae.tile_sample_min_num_frames = 16`, `vae.tile_sample_stride_num_frames = 8`, `vae.use_framewise_decoding =
True` before the pipeline call, `use_framewise_decoding = False` after it. Diffusers' `AutoencoderKLLTX2Video` then
decodes in temporal tiles (2 latent frames, stride 1, blended over 8 frames) once a video has more than 2 latent
frames (17 frames and up); shorter videos decode as without it.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LTX2Options:
    """LTX-2 settings of the training config that change the preview."""
    low_vram: bool = field(default=True, metadata={"help": (
        "Decode the video in temporal tiles (16 frames, stride 8) as ai-toolkit's preview does with model.low_vram "
        "(the LTX-2 and LTX-2.3 UI presets turn it on). Turn off only when your training config has low_vram false: "
        "the frames differ once the video has more than 16 frames.")})


@contextmanager
def framewise_decoding(vae, on: bool):
    """`generate_single_image` with `low_vram`: `use_framewise_decoding` on (tiles of 16 frames, stride 8, the
    VAE's defaults) around the pipeline call; the VAE's settings are restored afterwards."""
    names = ("use_framewise_decoding", "tile_sample_min_num_frames", "tile_sample_stride_num_frames")
    was = {name: getattr(vae, name) for name in names}
    if on:
        vae.use_framewise_decoding, vae.tile_sample_min_num_frames, vae.tile_sample_stride_num_frames = True, 16, 8
    try:
        yield
    finally:
        for name, value in was.items():
            setattr(vae, name, value)
