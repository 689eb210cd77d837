"""FLUX.2 preview sampling as ai-toolkit's own pipeline does it (`flux2/src/pipeline.py:Flux2Pipeline.__call__`,
`src/sampling.py`), on the BFL-layout transformer and VAE of this package.

- prompts: klein (Qwen3) = `_get_qwen_prompt_embeds` (chat template user message, `add_generation_prompt`,
  `enable_thinking=False`, padded/truncated to 512, mask passed, `hidden_states[9, 18, 27]` stacked →
  [B, L, 3·hidden]); dev (Mistral3) = `_get_mistral_prompt_embeds` (system message + user text, `[IMG]` removed,
  512, `hidden_states[10, 20, 30]`). Both equal Diffusers' static `_get_qwen3_prompt_embeds` /
  `_get_mistral_3_small_prompt_embeds`, which are used. `BaseModel.generate_images` casts the embeds to the
  transformer's dtype. Text positions: (0, 0, 0, l).
- noise `randn(1, C, H/16, W/16)` from the `torch.manual_seed(seed)` generator in the embeds' dtype (C = the
  transformer's input channels: 128); image positions (0, h, w, 0).
- schedule (`sampling.py:get_schedule`): `linspace(1, 0, n+1)` shifted by `exp(μ)/(exp(μ) + (1/t − 1))`,
  μ = the line through (256, 0.5) and (4096, 1.15) at the packed token count, as Python floats; Euler
  `x = x + (t_prev − t_curr)·pred`, timestep `full(t_curr)` in the latents' dtype. (Diffusers' Klein pipeline
  uses `compute_empirical_mu` instead.)
- guidance: klein is not guidance-distilled: true CFG `uncond + g·(cond − uncond)` with the encoded negative iff
  g > 1; dev: one pass, g only in the guidance embedding (`full(g)` in the latents' dtype).
- reference images (`encode_image_refs` / `default_prep`, `limit_pixels` 1024²): RGB; a side < 64 or an aspect
  ratio > 8 raises; above 1024² pixels LANCZOS to `int(side·sqrt(1024²/pixels))`; center-cropped to multiples
  of 16; `ToTensor()·2 − 1` (float32); `AutoEncoder.encode` in the VAE's dtype; tokens with time offset
  10·(i+1); the tokens are cast to **bf16** (also in fp32 sampling, where `cat` promotes them back); they are
  appended after the image tokens and the prediction is cut to the image tokens.
- decode: positions scattered back to [1, C, h, w], `.to(vae dtype)`, `AutoEncoder.decode`, `.float()`,
  `VaeImageProcessor.postprocess` (x/2 + 0.5, clamped).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ...errors import ControlImageError

MAX_LENGTH = 512
QWEN_LAYERS = (9, 18, 27)
MISTRAL_LAYERS = (10, 20, 30)
REF_LIMIT = 1024 ** 2
REF_MIN_SIDE = 64
REF_MAX_ASPECT = 8
REF_MULTIPLE = 16
REF_TIME_SCALE = 10


def encode_prompt(pipe, prompt: str, text_encoder_type: str, dtype):
    """[1, 512, 3·hidden] embeds in `dtype`."""
    from diffusers import Flux2KleinPipeline, Flux2Pipeline

    if text_encoder_type == "qwen":
        embeds = Flux2KleinPipeline._get_qwen3_prompt_embeds(
            pipe.text_encoder, pipe.tokenizer, [prompt], max_sequence_length=MAX_LENGTH,
            hidden_states_layers=QWEN_LAYERS)
    else:
        embeds = Flux2Pipeline._get_mistral_3_small_prompt_embeds(
            pipe.text_encoder, pipe.tokenizer, [prompt], max_sequence_length=MAX_LENGTH,
            hidden_states_layers=MISTRAL_LAYERS)
    return embeds.to(dtype)


def text_ids(length: int) -> torch.Tensor:
    return torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(length))[None]


def image_ids(h: int, w: int, t: torch.Tensor | None = None) -> torch.Tensor:
    return torch.cartesian_prod(torch.arange(1) if t is None else t, torch.arange(h), torch.arange(w), torch.arange(1))


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[C, h, w] → [h·w, C]."""
    c, h, w = latents.shape
    return latents.reshape(c, h * w).permute(1, 0)


def schedule(steps: int, image_seq_len: int, base_shift: float = 0.5, max_shift: float = 1.15) -> list[float]:
    t = torch.linspace(1, 0, steps + 1)
    slope = (max_shift - base_shift) / (4096 - 256)
    mu = slope * image_seq_len + (base_shift - slope * 256)
    return (math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** 1.0)).tolist()


def prepare_reference(image, index: int):
    """One reference image as `default_prep` leaves it: [3, h, w] float32 in -1..1."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    if w < REF_MIN_SIDE or h < REF_MIN_SIDE:
        raise ControlImageError(
            f"Reference image {index + 1} is {w}x{h}: FLUX.2 takes reference images with both sides at least "
            f"{REF_MIN_SIDE} pixels (ai-toolkit's encode_image_refs refuses smaller ones). Use a larger image.")
    if w / h > REF_MAX_ASPECT or h / w > REF_MAX_ASPECT:
        raise ControlImageError(
            f"Reference image {index + 1} is {w}x{h}: FLUX.2 takes reference images with an aspect ratio up to "
            f"{REF_MAX_ASPECT}:1 (ai-toolkit's encode_image_refs refuses wider ones). Crop it first.")
    if w * h > REF_LIMIT:
        factor = math.sqrt(REF_LIMIT / (w * h))
        image = image.resize((int(w * factor), int(h * factor)), Image.Resampling.LANCZOS)
        w, h = image.size
    cw, ch = w // REF_MULTIPLE * REF_MULTIPLE, h // REF_MULTIPLE * REF_MULTIPLE
    left, top = (w - cw) // 2, (h - ch) // 2
    image = image.crop((left, top, left + cw, top + ch))
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    return 2 * pixels.to(dtype=torch.float32).div(255) - 1


def reference_tokens(vae, images):
    """(tokens [1, N, C] in bf16, positions [1, N, 4]) of the reference images, or (None, None)."""
    if not images:
        return None, None
    tokens, ids = [], []
    for i, image in enumerate(images):
        x = prepare_reference(image, i)[None].to(vae.device, vae.dtype)
        latent = vae.encode(x)[0]
        tokens.append(pack(latent))
        t = (REF_TIME_SCALE + REF_TIME_SCALE * torch.arange(0, len(images))[i]).view(-1)
        ids.append(image_ids(latent.shape[1], latent.shape[2], t))
    return torch.cat(tokens, dim=0)[None].to(torch.bfloat16), torch.cat(ids, dim=0)[None]


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[1, h·w, C] → [1, C, h, w] (the image positions are row-major, so scattering them is a reshape)."""
    return tokens[0].permute(1, 0).reshape(1, tokens.shape[-1], h, w)


def sample(transformer, vae, cond, uncond, *, width: int, height: int, steps: int, guidance: float, seed: int,
           cfg: bool, references=(), on_step=None):
    """The preview's float pixels [1, H, W, 3] in 0..1 (`cond`/`uncond`: embeds in the transformer's dtype)."""
    from diffusers.image_processor import VaeImageProcessor

    device = transformer.device
    generator = torch.Generator("cpu").manual_seed(seed)  # = the reseeded default generator ai-toolkit uses
    h, w = height // 16, width // 16
    channels = transformer.params.in_channels
    noise = torch.randn((1, channels, h, w), generator=generator, dtype=cond.dtype).to(device)
    latents = torch.stack([pack(noise[0])])  # batched_prc_img stacks: contiguous tokens
    ids = image_ids(h, w)[None].to(device)
    txt_ids = text_ids(cond.shape[1]).to(device)
    times = schedule(steps, latents.shape[1])
    guidance_vec = torch.full((1,), guidance, device=device, dtype=latents.dtype)
    ref_tokens, ref_ids = reference_tokens(vae, list(references))
    for i, (t_curr, t_prev) in enumerate(zip(times[:-1], times[1:])):
        t_vec = torch.full((1,), t_curr, dtype=latents.dtype, device=device)
        x, x_ids = latents, ids
        if ref_tokens is not None:
            x = torch.cat((x, ref_tokens.to(device)), dim=1)
            x_ids = torch.cat((x_ids, ref_ids.to(device)), dim=1)
        pred = transformer(x, x_ids, t_vec, cond, txt_ids, guidance_vec)
        if cfg:
            pred_uncond = transformer(x, x_ids, t_vec, uncond, txt_ids, guidance_vec)
            pred = pred_uncond + guidance * (pred - pred_uncond)
        if ref_tokens is not None:
            pred = pred[:, : latents.shape[1]]
        latents = latents + (t_prev - t_curr) * pred
        if on_step is not None:
            on_step(i + 1, steps, latents)
    image = vae.decode(unpack(latents, h, w).to(vae.dtype)).float()
    return VaeImageProcessor(vae_scale_factor=16).postprocess(image, output_type="np")
