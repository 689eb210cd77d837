"""The Wan VAE side ai-toolkit's Wan 2.2 previews use: the tiled decode of its `low_vram` presets, and the Wan 2.2
14B VAE repo.

- `Wan21.use_vae_tiling` (`toolkit/models/wan21/wan21.py`, inherited by the Wan 2.2 classes) is `low_vram or
  model_kwargs.vae_tiling`; `generate_single_image` then calls `vae.enable_tiling()` (Diffusers' default tiles)
  around the pipeline. The Wan 2.2 UI presets (14B T2V, 14B I2V, 5B) set `low_vram: true`, so their previews are
  decoded tiled whenever a side exceeds the tile size (256 px); the Wan 2.1 presets leave it off. Option
  `vae_tiling` (on by default where the preset turns it on) follows the training config.
- `Wan2214bModel._wan_vae_path = "ai-toolkit/wan2.1-vae"`: `Wan21.load_model` then loads the VAE from that repo's
  root (`AutoencoderKLWan.from_pretrained(path)`), never from the base, whatever the base is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

WAN21_VAE_REPO = "ai-toolkit/wan2.1-vae"


@dataclass(frozen=True)
class WanVaeOptions:
    """Wan 2.2 settings of the training config that change the preview's decode."""
    vae_tiling: bool = field(default=True, metadata={"help": (
        "Wan 2.2 (14B, 5B): decode the preview tiled, as ai-toolkit does with model.low_vram (the Wan 2.2 UI "
        "presets turn it on) or model_kwargs.vae_tiling. Turn off only when your training config has low_vram "
        "false and no vae_tiling: the pictures differ wherever a side exceeds 256 px.")})


def decode_latents(vae, latents, tiled: bool) -> torch.Tensor:
    """`Wan22Pipeline`'s decode: latents in the VAE dtype, `latents / (1 / std) + mean`, `vae.decode`, tiled as
    `enable_tiling()` makes it when `tiled` (the VAE's own setting is restored afterwards)."""
    z = latents.to(vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(z.device, z.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(z.device, z.dtype)
    was = vae.use_tiling
    if tiled:
        vae.enable_tiling()
    try:
        return vae.decode(z / inv_std + mean, return_dict=False)[0]
    finally:
        vae.use_tiling = was


def load_wan21_vae(spec):
    """The Wan 2.1 VAE from `WAN21_VAE_REPO` (the HF cache, downloaded with progress when allowed)."""
    from diffusers import AutoencoderKLWan

    from ...errors import ModelSourceError
    from ...sources import hub_snapshot

    try:
        folder = hub_snapshot(WAN21_VAE_REPO)
    except ModelSourceError as exc:
        raise ModelSourceError(f"{spec.label} reads its VAE from {WAN21_VAE_REPO}, as ai-toolkit does: {exc}") from exc
    try:
        return AutoencoderKLWan.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - Diffusers raises many types for unreadable models
        raise ModelSourceError(f"Could not load {spec.label}'s VAE from {WAN21_VAE_REPO} ({type(exc).__name__}: "
                               f"{exc}).") from exc
