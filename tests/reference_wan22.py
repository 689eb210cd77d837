"""An independent, hand-written Wan 2.2 A14B preview (T2V and I2V): ai-toolkit's `Wan22Pipeline` loop written out
step by step, sharing no code with the pack (Diffusers' model classes and schedulers only, as ai-toolkit uses them;
prompt encoding, LoRA renaming and the Wan 2.1 scheduler configs from tests/reference_wan.py).

The recipe (ai-toolkit 27a03a91 `extensions_built_in/diffusion_models/wan22/{wan22_14b_model.py,
wan22_14b_i2v_model.py,wan22_pipeline.py}`, `toolkit/models/wan21/wan_utils.py:add_first_frame_conditioning`,
`toolkit/models/base_model.py:generate_images`):
- both experts, UMT5 and VAE `.to(dtype)`; a LoRA pair merged as `(W.float() + m * (B.float() @ A.float())).to(W.dtype)`
  into `transformer` (the `_high_noise` file) and `transformer_2` (the `_low_noise` file);
- `torch.manual_seed(seed)` is the generator (the global CPU one);
- size floored to 16 (`vae.config.scale_factor_spatial * 2`), frames snapped to 4k+1;
- T2V: noise `randn([1, 16, (F-1)//4+1, H/8, W/8])` fp32; I2V: the same noise cast to the sampling dtype, the
  control image LANCZOS-resized, `to_tensor * 2 - 1` in the dtype, first frame + F-1 zero frames VAE-encoded with
  `latent_dist.sample()` (no generator argument: the global generator, right after the noise), `(z - mean) * (1/std)`,
  mask 4 channels (frame 0 ×4), `cat([noise, mask, z])`; the pipeline splits off channels 16: and casts the noise
  back to fp32;
- per step: `t >= 0.875 * 1000` → `transformer`, else `transformer_2`; cond pass, then (g > 1) uncond pass,
  `uncond + g * (cond - uncond)`; Euler (shift 5) or UniPC step; `pre * (1 - mask) + latents * mask` (mask ones);
- decode as Wan 2.1 (`latents / (1/std) + mean`, `x * 0.5 + 0.5` clamped, `round(x * 255)`).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from tests import reference_wan as ref21

BOUNDARY = 0.875
FLOW_CONFIG = dict(num_train_timesteps=1000, shift=5.0, use_dynamic_shifting=False)
# wan22_14b_model.py:scheduler_configUniPC (flow_shift 3.0), as written there
UNIPC_CONFIG = dict(ref21.UNIPC_CONFIG, _diffusers_version="0.35.0.dev0", time_shift_type="exponential",
                    use_dynamic_shifting=False)


def load_parts(folder: str, dtype, vae_folder: str | None = None) -> dict:
    """The parts as `Wan2214bModel` loads them; `vae_folder`: the root of `ai-toolkit/wan2.1-vae`
    (`_wan_vae_path`, where ai-toolkit always reads the VAE from; default: the folder's own `vae/`)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    parts = dict(tokenizer=ref21.patched_t5_tokenizer(os.path.join(folder, "tokenizer")),
                 text_encoder=UMT5EncoderModel.from_pretrained(os.path.join(folder, "text_encoder")),
                 vae=AutoencoderKLWan.from_pretrained(vae_folder or os.path.join(folder, "vae")),
                 transformer=WanTransformer3DModel.from_pretrained(os.path.join(folder, "transformer")),
                 transformer_2=WanTransformer3DModel.from_pretrained(os.path.join(folder, "transformer_2")))
    for name in ("text_encoder", "vae", "transformer", "transformer_2"):
        parts[name].to(dtype=dtype).requires_grad_(False).eval()
    return parts


def merge(parts: dict, state_dict: dict, multiplier: float, expert: str) -> int:
    """ai-toolkit's merge_in of one expert's file (plain `diffusion_model.` original names) into `expert`."""
    return ref21.merge({"transformer": parts[expert]}, state_dict, multiplier)


def quantize(parts: dict, dtype) -> None:
    """qfloat8 as `load_wan_transformer` + `quantize_model` (each expert: exclusions condition_embedder*, proj_out*)
    and `quantize_te` (plain quantize of the UMT5) do it."""
    from optimum.quanto import freeze, qfloat8, quantize as quanto_quantize

    for name in ("transformer", "transformer_2"):
        parts[name].to(dtype=dtype)
        quanto_quantize(parts[name], weights=qfloat8, exclude=["condition_embedder*", "proj_out*"])
        freeze(parts[name])
    parts["text_encoder"].to(dtype=dtype)
    quanto_quantize(parts["text_encoder"], weights=qfloat8)
    freeze(parts["text_encoder"])


def scheduler(sampler: str = "flowmatch"):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if sampler == "flowmatch":
        return FlowMatchEulerDiscreteScheduler(**FLOW_CONFIG)
    if sampler == "unipc":
        return UniPCMultistepScheduler(**UNIPC_CONFIG)
    raise ValueError(sampler)


def first_frame_conditioning(parts, image, noise, width, height, dtype) -> torch.Tensor:
    """`generate_single_image`'s control image + `add_first_frame_conditioning`: the 36-channel input (in `dtype`).
    Draws the VAE sample from the global generator."""
    from PIL import Image

    vae = parts["vae"]
    img = image.convert("RGB").resize((width, height), Image.LANCZOS)
    tensor = torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1) / 255.0
    first = tensor.unsqueeze(0).to(dtype=dtype) * 2.0 - 1.0
    n_latent = noise.shape[2]
    n_frames = (n_latent - 1) * 4 + 1
    first = torch.nn.functional.interpolate(first, size=(noise.shape[3] * 8, noise.shape[4] * 8), mode="bilinear",
                                            align_corners=False)
    first = first.unsqueeze(2)
    cond_video = torch.cat([first] + [torch.zeros_like(first)] * (n_frames - 1), dim=2)
    z = vae.encode(cond_video.to(dtype)).latent_dist.sample().to(dtype)
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1).to(dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1).to(dtype)
    z = (z - mean) * inv_std
    h, w = z.shape[3], z.shape[4]
    mask = torch.ones(1, 1, n_frames, h, w)
    mask[:, :, list(range(1, n_frames))] = 0
    head = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=4)
    mask = torch.concat([head, mask[:, :, 1:, :]], dim=2)
    mask = mask.view(1, -1, 4, h, w).transpose(1, 2).to(dtype)
    return torch.cat([noise, torch.concat([mask, z], dim=1)], dim=1)


def preview(parts: dict, prompt: str, negative: str, seed: int, steps: int, guidance: float, width: int,
            height: int, frames: int, dtype, sampler: str = "flowmatch", image=None,
            boundary: float = BOUNDARY, tiled: bool = True) -> np.ndarray:
    """uint8 frames [F, H, W, 3] as ai-toolkit's Wan 2.2 A14B preview (`image`: the I2V control image; `tiled`:
    `generate_single_image`'s `vae.enable_tiling()` under the presets' `low_vram`)."""
    if frames % 4 != 1:
        frames = frames // 4 * 4 + 1
    frames = max(frames, 1)
    width, height = width // 16 * 16, height // 16 * 16
    high, low, vae = parts["transformer"], parts["transformer_2"], parts["vae"]
    sched = scheduler(sampler)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        cond = ref21.encode(parts, prompt, dtype).to(high.dtype)
        uncond = ref21.encode(parts, negative, dtype).to(high.dtype)
        generator = torch.manual_seed(seed)
        shape = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
        latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        conditioning = None
        if image is not None:
            packed = first_frame_conditioning(parts, image, latents.to(dtype), width, height, dtype)
            conditioning = packed[:, 16:]
            latents = packed[:, :16].to(torch.float32)
        sched.set_timesteps(steps)
        mask = torch.ones(latents.shape, dtype=torch.float32)
        for t in sched.timesteps:
            model = high if t >= boundary * 1000 else low
            x = latents.to(high.dtype)
            pre = x.clone()
            if conditioning is not None:
                x = torch.cat([x, conditioning], dim=1)
            ts = t.expand(1)
            pred = model(hidden_states=x, timestep=ts, encoder_hidden_states=cond, return_dict=False)[0]
            if guidance > 1.0:
                pred_u = model(hidden_states=x, timestep=ts, encoder_hidden_states=uncond, return_dict=False)[0]
                pred = pred_u + guidance * (pred - pred_u)
            latents = sched.step(pred, t, latents, return_dict=False)[0]
            latents = pre * (1 - mask) + latents * mask
        z = latents.to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1).to(z.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1).to(z.dtype)
        if tiled:
            vae.enable_tiling()
        video = vae.decode(z / inv_std + mean, return_dict=False)[0]
        vae.disable_tiling()
        frames_f = (video[0].permute(1, 0, 2, 3) * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    return (frames_f * 255).round().astype(np.uint8)
