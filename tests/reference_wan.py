"""An independent, hand-written Wan 2.1 T2V preview: ai-toolkit's recipe written out step by step, sharing no code
with the pack (only Diffusers' model classes and schedulers, as ai-toolkit uses them).

The recipe (ai-toolkit 27a03a91 `toolkit/models/wan21/wan21.py`, `toolkit/models/base_model.py:generate_images`,
Diffusers 0.42.1 `WanPipeline.__call__`, which ai-toolkit's Wan 2.1 previews run):
- every part `.to(dtype)` after loading, frozen; a LoRA merged as `(W.float() + m * (B.float() @ A.float())).to(W.dtype)`
  (no alpha: scale 1) after renaming ai-toolkit's original Wan names back (`wan_lora_convert.py:convert_to_diffusers`);
- prompt and negative each: cleaned (whitespace, HTML entities), UMT5 on 512 padded ids with the mask, cast to the
  sampling dtype, cut to the real tokens and zero-padded back to 512;
- noise `randn([1, 16, (F-1)//4+1, H/8, W/8])` fp32 from a CPU generator seeded with the seed; F snapped to 4k+1;
- per step: the latents cast to the model dtype, the transformer run for cond and (guidance > 1) separately for the
  negative, `uncond + g * (cond - uncond)`, the scheduler stepped on the fp32 latents;
- scheduler: `FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)`
  (ai-toolkit >= 0.9.3) or `UniPCMultistepScheduler(**scheduler_configUniPC)` (before);
- decode: latents cast to the VAE dtype, `latents / (1 / std) + mean`, VAE decode, `x * 0.5 + 0.5` clamped,
  `round(x * 255)` (PIL output).
"""
from __future__ import annotations

import html
import os
import re

import numpy as np
import torch

MAX_LEN = 512
FLOW_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
# toolkit/models/wan21/wan21.py:scheduler_configUniPC, as written there
UNIPC_CONFIG = {
    "_class_name": "UniPCMultistepScheduler", "_diffusers_version": "0.33.0.dev0", "beta_end": 0.02,
    "beta_schedule": "linear", "beta_start": 0.0001, "disable_corrector": [], "dynamic_thresholding_ratio": 0.995,
    "final_sigmas_type": "zero", "flow_shift": 3.0, "lower_order_final": True, "num_train_timesteps": 1000,
    "predict_x0": True, "prediction_type": "flow_prediction", "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0, "solver_order": 2, "solver_p": None, "solver_type": "bh2", "steps_offset": 0,
    "thresholding": False, "timestep_spacing": "linspace", "trained_betas": None, "use_beta_sigmas": False,
    "use_exponential_sigmas": False, "use_flow_sigmas": True, "use_karras_sigmas": False,
}


def patched_t5_tokenizer(folder: str):
    """`toolkit/models/loaders/umt5.py:PatchedT5Tokenizer.from_pretrained` under transformers 5 (ai-toolkit pins
    5.5.3): `T5Tokenizer` rebuilt from the vocabulary with `_spm_precompiled_charsmap=None`, i.e. no normalizer."""
    from transformers import T5Tokenizer

    tokenizer = T5Tokenizer.from_pretrained(folder)
    tokenizer.backend_tokenizer.normalizer = None
    return tokenizer


def load_parts(folder: str, dtype) -> dict:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    parts = dict(tokenizer=patched_t5_tokenizer(os.path.join(folder, "tokenizer")),
                 text_encoder=UMT5EncoderModel.from_pretrained(os.path.join(folder, "text_encoder")),
                 vae=AutoencoderKLWan.from_pretrained(os.path.join(folder, "vae")),
                 transformer=WanTransformer3DModel.from_pretrained(os.path.join(folder, "transformer")))
    for name in ("text_encoder", "vae", "transformer"):
        parts[name].to(dtype=dtype).requires_grad_(False).eval()
    return parts


def to_diffusers(name: str) -> str:
    """`wan_lora_convert.py:convert_to_diffusers` for one module name (without `.lora_A.weight`)."""
    if name.startswith("diffusion_model."):
        name = "transformer." + name[len("diffusion_model."):]
    name = name.replace("self_attn", "attn1") if "self_attn" in name else name.replace("cross_attn", "attn2")
    pieces = name.split(".")
    pieces = [{"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "k_img": "add_k_proj",
               "v_img": "add_v_proj"}.get(p, p) for p in pieces]
    name = ".".join(pieces)
    if "ffn.0" in name:
        name = name.replace("ffn.0", "ffn.net.0.proj")
    elif "ffn.2" in name:
        name = name.replace("ffn.2", "ffn.net.2")
    return name


def merge(parts: dict, state_dict: dict, multiplier: float) -> int:
    """ai-toolkit's merge_in of a peft-format Wan LoRA (no alpha); returns the number of modules merged."""
    count = 0
    for key in state_dict:
        if not key.endswith(".lora_A.weight"):
            continue
        stem = key[: -len(".lora_A.weight")]
        path = to_diffusers(stem)
        assert path.startswith("transformer."), path
        module = parts["transformer"].get_submodule(path[len("transformer."):])
        a, b = state_dict[key], state_dict[f"{stem}.lora_B.weight"]
        w = module.weight
        with torch.no_grad():
            w.data = (w.data.float() + multiplier * (b.float() @ a.float())).to(w.dtype)
        count += 1
    return count


def _clean(text: str) -> str:
    text = html.unescape(html.unescape(text)).strip()  # ftfy.fix_text first when installed (Diffusers does so)
    try:
        import ftfy
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    except ImportError:
        pass
    return re.sub(r"\s+", " ", text).strip()


def encode(parts: dict, prompt: str, dtype) -> torch.Tensor:
    tok = parts["tokenizer"]([_clean(prompt)], padding="max_length", max_length=MAX_LEN, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    n = int(tok.attention_mask.gt(0).sum())
    hidden = parts["text_encoder"](tok.input_ids, tok.attention_mask).last_hidden_state.to(dtype)
    out = torch.zeros_like(hidden)
    out[:, :n] = hidden[:, :n]
    return out


def scheduler(sampler: str = "flowmatch"):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if sampler == "flowmatch":
        return FlowMatchEulerDiscreteScheduler(**FLOW_CONFIG)
    if sampler == "unipc":
        return UniPCMultistepScheduler(**UNIPC_CONFIG)
    raise ValueError(sampler)


def preview(parts: dict, prompt: str, negative: str, seed: int, steps: int, guidance: float, width: int,
            height: int, frames: int, dtype, sampler: str = "flowmatch", scheduler_obj=None) -> np.ndarray:
    """uint8 frames [F, H, W, 3] as ai-toolkit's Wan 2.1 preview."""
    if frames % 4 != 1:
        frames = frames // 4 * 4 + 1
    frames = max(frames, 1)
    transformer, vae = parts["transformer"], parts["vae"]
    sched = scheduler_obj or scheduler(sampler)
    with torch.no_grad():
        cond = encode(parts, prompt, dtype).to(transformer.dtype)
        uncond = encode(parts, negative, dtype).to(transformer.dtype)
        sched.set_timesteps(steps)
        shape = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
        latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
        sched.set_begin_index(0)
        for t in sched.timesteps:
            x = latents.to(transformer.dtype)
            ts = t.expand(1)
            pred = transformer(hidden_states=x, timestep=ts, encoder_hidden_states=cond, return_dict=False)[0]
            if guidance > 1.0:
                pred_u = transformer(hidden_states=x, timestep=ts, encoder_hidden_states=uncond, return_dict=False)[0]
                pred = pred_u + guidance * (pred - pred_u)
            latents = sched.step(pred, t, latents, return_dict=False)[0]
        z = latents.to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1).to(z.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1).to(z.dtype)
        video = vae.decode(z / inv_std + mean, return_dict=False)[0]
        frames_f = (video[0].permute(1, 0, 2, 3) * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    return (frames_f * 255).round().astype(np.uint8)
