"""Independent, hand-written Wan 2.1 I2V and Wan 2.2 TI2V 5B previews: ai-toolkit's recipe written out step by step,
sharing no code with the pack (only Diffusers' / transformers' model classes, the CLIP image processor and the
schedulers, as ai-toolkit uses them; prompts, LoRA merge and scheduler tables from `reference_wan.py`).

Wan 2.1 I2V (ai-toolkit 27a03a91 `toolkit/models/wan21/wan21_i2v.py:Wan21I2V.generate_single_image`, then the stock
Diffusers 0.42.1 `WanImageToVideoPipeline.__call__`):
- size floored to 16; control image `convert("RGB").resize((w, h), LANCZOS)`;
- image embeds: `CLIPImageProcessor(images=...)` pixel values → `CLIPVisionModel(..., output_hidden_states=True)
  .hidden_states[-2]`, cast to the transformer dtype;
- noise `randn([1, 16, T, H/8, W/8])` fp32 from the seeded CPU generator, drawn first;
- the frame as `np.float32 / 255 * 2 - 1`, followed by F-1 zero frames, in the VAE dtype, encoded with the mode (the
  posterior mean), cast to fp32, `(z - mean) * (1/std)`; mask [1, 4, T, h, w] = 1 on latent frame 0;
- per step `cat([latents, mask, cond])` in the transformer dtype, cond and uncond passes with the same image embeds,
  the scheduler on the fp32 latents; decode as Wan 2.1 T2V.

Wan 2.2 TI2V 5B (`wan22_5b_model.py:Wan225bModel.generate_single_image`, `wan_utils.py:
add_first_frame_conditioning_v22`, `wan22_pipeline.py:Wan22Pipeline.__call__`):
- frames `(n-1)//4*4+1`; size floored to 32; noise `randn([1, 48, T, H/16, W/16])` fp32 (CPU generator);
- with a control image: the noise cast to the sampling dtype; the frame `to_tensor` (x/255) → dtype → `*2-1`,
  bilinear-resized to the size, VAE-encoded, a posterior **sample** `mean + std * randn(generator)` (the same
  generator, next draws), cast to dtype, `(z - mean) * (1/std)` in dtype, written into latent frame 0; mask
  [1, 1, T, h, w] in dtype, 0 on frame 0; the latents back to fp32. Without: mask = ones(latents.shape) fp32;
- per step: `x = latents.to(tdtype)`, per-token `timestep = (mask[0][0][:, ::2, ::2] * t).flatten()[None]`, cond
  and uncond passes, the scheduler step, `latents = x * (1 - mask) + latents * mask`;
- decode: `vae.enable_tiling()` when `tiled` (ai-toolkit's low_vram preset), `latents / (1/std) + mean`, decode.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from tests import reference_wan as ref


def load_parts(folder: str, dtype, i2v: bool) -> dict:
    from transformers import CLIPImageProcessor, CLIPVisionModel

    parts = ref.load_parts(folder, dtype)
    if i2v:
        parts["image_processor"] = CLIPImageProcessor.from_pretrained(os.path.join(folder, "image_processor"))
        parts["image_encoder"] = CLIPVisionModel.from_pretrained(os.path.join(folder, "image_encoder"))
        parts["image_encoder"].to(dtype=dtype).requires_grad_(False).eval()
    return parts


def snap_pipeline(frames: int) -> int:
    """Diffusers' WanImageToVideoPipeline: n % 4 != 1 → n // 4 * 4 + 1."""
    return max(frames // 4 * 4 + 1 if frames % 4 != 1 else frames, 1)


def _decode(vae, latents, tiled=False):
    z = latents.to(vae.dtype)
    c = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1).to(z.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1).to(z.dtype)
    if tiled:
        vae.enable_tiling()
    try:
        video = vae.decode(z / inv_std + mean, return_dict=False)[0]
    finally:
        vae.disable_tiling()
    frames = (video[0].permute(1, 0, 2, 3) * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    return (frames * 255).round().astype(np.uint8)


def _steps(sched, steps):
    sched.set_timesteps(steps)
    sched.set_begin_index(0)
    return sched.timesteps


def i2v21_preview(parts: dict, image, prompt: str, negative: str, seed: int, steps: int, guidance: float, width: int,
                  height: int, frames: int, dtype, sampler: str = "flowmatch") -> np.ndarray:
    """uint8 frames [F, H, W, 3] as ai-toolkit's Wan 2.1 I2V preview."""
    from PIL import Image

    frames = snap_pipeline(frames)
    width, height = width // 16 * 16, height // 16 * 16
    image = image.convert("RGB").resize((width, height), Image.LANCZOS)
    transformer, vae = parts["transformer"], parts["vae"]
    sched = ref.scheduler(sampler)
    with torch.no_grad():
        cond = ref.encode(parts, prompt, dtype).to(transformer.dtype)
        uncond = ref.encode(parts, negative, dtype).to(transformer.dtype)
        pixel_values = parts["image_processor"](images=image, return_tensors="pt").pixel_values
        hidden = parts["image_encoder"](pixel_values=pixel_values, output_hidden_states=True).hidden_states
        image_embeds = hidden[-2].to(transformer.dtype)
        timesteps = _steps(sched, steps)
        t_lat, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
        latents = torch.randn((1, 16, t_lat, h, w), generator=torch.Generator("cpu").manual_seed(seed),
                              dtype=torch.float32)
        first = torch.from_numpy(np.array(image).astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2.0 - 1.0
        video = torch.cat([first[:, :, None], first.new_zeros(1, 3, frames - 1, height, width)], dim=2)
        z = vae.encode(video.to(vae.dtype)).latent_dist.mean.to(torch.float32)
        mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
        z = (z - mean) * inv_std
        mask = torch.zeros(1, 4, t_lat, h, w)
        mask[:, :, 0] = 1.0
        condition = torch.cat([mask, z], dim=1)
        for t in timesteps:
            x = torch.cat([latents, condition], dim=1).to(transformer.dtype)
            ts = t.expand(1)
            pred = transformer(hidden_states=x, timestep=ts, encoder_hidden_states=cond,
                               encoder_hidden_states_image=image_embeds, return_dict=False)[0]
            if guidance > 1.0:
                pred_u = transformer(hidden_states=x, timestep=ts, encoder_hidden_states=uncond,
                                     encoder_hidden_states_image=image_embeds, return_dict=False)[0]
                pred = pred_u + guidance * (pred - pred_u)
            latents = sched.step(pred, t, latents, return_dict=False)[0]
        return _decode(vae, latents)


def ti2v5b_preview(parts: dict, image, prompt: str, negative: str, seed: int, steps: int, guidance: float,
                   width: int, height: int, frames: int, dtype, sampler: str = "flowmatch", tiled: bool = True,
                   mode_instead_of_sample: bool = False, fp32_conditioning: bool = False) -> np.ndarray:
    """uint8 frames [F, H, W, 3] as ai-toolkit's Wan 2.2 5B preview (`image` None: text-to-video).
    To measure what ai-toolkit's choices weigh: `mode_instead_of_sample` encodes the first frame with the posterior
    mean (Diffusers' pipeline); `fp32_conditioning` keeps the noise, the first-frame latents and the mask (so the
    per-token timesteps) in fp32 instead of the sampling dtype."""
    from PIL import Image

    frames = max((frames - 1) // 4 * 4 + 1, 1)
    width, height = width // 32 * 32, height // 32 * 32
    transformer, vae = parts["transformer"], parts["vae"]
    sched = ref.scheduler(sampler)
    if sampler == "flowmatch":
        sched = type(sched)(num_train_timesteps=1000, shift=5.0, use_dynamic_shifting=False)
    else:
        sched = type(sched)(**dict(ref.UNIPC_CONFIG, flow_shift=5.0))
    gen = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        cond = ref.encode(parts, prompt, dtype).to(transformer.dtype)
        uncond = ref.encode(parts, negative, dtype).to(transformer.dtype)
        timesteps = _steps(sched, steps)
        t_lat, h, w = (frames - 1) // 4 + 1, height // 16, width // 16
        noise = torch.randn((1, 48, t_lat, h, w), generator=gen, dtype=torch.float32)
        if image is None:
            latents = noise
            mask = torch.ones(latents.shape, dtype=torch.float32)
        else:
            image = image.convert("RGB").resize((width, height), Image.LANCZOS)
            cdtype = torch.float32 if fp32_conditioning else dtype
            noise = noise.to(cdtype)
            pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)[None]
            first = pixels.to(dtype) * 2.0 - 1.0
            first = F.interpolate(first, size=(height, width), mode="bilinear", align_corners=False)
            dist = vae.encode(first[:, :, None]).latent_dist
            if mode_instead_of_sample:
                z = dist.mean
            else:
                z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen, dtype=dist.mean.dtype)
            z = z.to(cdtype)
            mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(cdtype)
            inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(cdtype)
            z = (z - mean) * inv_std
            latents = noise.clone()
            latents[:, :, :1] = z
            mask = torch.ones(1, 1, t_lat, h, w, dtype=cdtype)
            mask[:, :, :1] = 0.0
            latents = latents.to(torch.float32)
        for t in timesteps:
            x = latents.to(transformer.dtype)
            ts = (mask[0][0][:, ::2, ::2] * t).flatten()[None]
            pred = transformer(hidden_states=x, timestep=ts, encoder_hidden_states=cond, return_dict=False)[0]
            if guidance > 1.0:
                pred_u = transformer(hidden_states=x, timestep=ts, encoder_hidden_states=uncond, return_dict=False)[0]
                pred = pred_u + guidance * (pred - pred_u)
            latents = sched.step(pred, t, latents, return_dict=False)[0]
            latents = x * (1 - mask) + latents * mask
        return _decode(vae, latents, tiled=tiled)
