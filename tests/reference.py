"""Independent reference: ai-toolkit's SD/SDXL preview written out by hand with plain Diffusers.

Nothing here imports the pack. It follows ai-toolkit 0.12.26 (`27a03a91`) as its code reads:
- `toolkit/sampler.py` `sd_config` → `DDPMScheduler.from_config` (steps_offset 0, leading); the stock pipeline
  constructor does whatever it does with it (SD1.5 rewrites steps_offset to 1, SDXL keeps 0);
- `toolkit/train_tools.py` prompt encoding: SD1.5 `text_encoder(ids)[0]`; SDXL `hidden_states[-2]` of both
  encoders concatenated + `text_encoder_2(ids)[0]` pooled; 77 tokens, max_length padding, truncation;
- `StableDiffusion.generate_images`: embeds cast to the UNet dtype, `generator=torch.manual_seed(seed)` (the global
  CPU generator), watermark off, `guidance_rescale` only on SDXL, `.images[0]` PIL;
- `ToolkitModuleMixin.merge_in`: `W + multiplier * (up @ down) * scale` in fp32 on the weight, one rounding;
  kohya names from `LoRASpecialNetwork` (`lora_unet_` + module path with `_`).
"""
from __future__ import annotations

import numpy as np
import torch

SD_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "trained_betas": None, "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 0, "timestep_spacing": "leading", "interpolation_type": "linear", "sample_max_value": 1.0,
    "prediction_type": "epsilon",
}


def load_components(folder: str, xl: bool, dtype: torch.dtype, device: str = "cpu") -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    parts = {
        "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
        "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae"),
        "text_encoder": CLIPTextModel.from_pretrained(folder, subfolder="text_encoder"),
        "tokenizer": CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
    }
    if xl:
        parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2")
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
    for part in parts.values():
        if isinstance(part, torch.nn.Module):
            part.to(device=device, dtype=dtype)
            part.requires_grad_(False)
            part.eval()
    return parts


def _ids(tokenizer, text, device):
    return tokenizer(text, padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def encode(parts: dict, text: str, text_2: str | None = None):
    device = parts["text_encoder"].device
    with torch.no_grad():
        if "text_encoder_2" not in parts:
            return parts["text_encoder"](_ids(parts["tokenizer"], text, device))[0], None
        out1 = parts["text_encoder"](_ids(parts["tokenizer"], text, device), output_hidden_states=True)
        out2 = parts["text_encoder_2"](_ids(parts["tokenizer_2"], text if text_2 is None else text_2, device),
                                       output_hidden_states=True)
        embeds = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        return embeds, out2[0]


def preview(parts: dict, prompt: str, negative: str, seed: int, steps: int, guidance: float, width: int,
            height: int, guidance_rescale: float = 0.0, negative_2: str | None = None,
            scheduler_class: str = "DDPMScheduler", **scheduler_args) -> np.ndarray:
    """uint8 [H, W, 3]: what ai-toolkit's generate_images saves for one prompt. `scheduler_class` and
    `scheduler_args`: `toolkit/sampler.py:get_sampler` for another `sample.sampler` (`cls.from_config(sd_config +
    args)`; ddpm is its default)."""
    import diffusers
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    xl = "text_encoder_2" in parts
    scheduler = getattr(diffusers, scheduler_class).from_config(dict(SD_CONFIG, **scheduler_args))
    dtype = parts["unet"].dtype
    cond, pooled = encode(parts, prompt)
    uncond, uncond_pooled = encode(parts, negative, negative if negative_2 is None else negative_2)
    if xl:
        pipe = StableDiffusionXLPipeline(vae=parts["vae"], unet=parts["unet"], text_encoder=parts["text_encoder"],
                                         text_encoder_2=parts["text_encoder_2"], tokenizer=parts["tokenizer"],
                                         tokenizer_2=parts["tokenizer_2"], scheduler=scheduler)
        pipe.watermark = None
    else:
        pipe = StableDiffusionPipeline(vae=parts["vae"], unet=parts["unet"], text_encoder=parts["text_encoder"],
                                       tokenizer=parts["tokenizer"], scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt_embeds=cond.to(dtype), negative_prompt_embeds=uncond.to(dtype), height=height,
                  width=width, num_inference_steps=steps, guidance_scale=guidance, latents=None,
                  generator=torch.manual_seed(seed))
    if xl:
        kwargs.update(pooled_prompt_embeds=pooled.to(dtype), negative_pooled_prompt_embeds=uncond_pooled.to(dtype),
                      guidance_rescale=guidance_rescale)
    with torch.no_grad():
        image = pipe(**kwargs).images[0]
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def kohya_module_names(parts: dict, te_prefixes: dict) -> dict:
    """kohya LoRA name -> module, as ai-toolkit's LoRASpecialNetwork names them (module path, '.' → '_')."""
    names = {}
    for path, module in parts["unet"].named_modules():
        names["lora_unet_" + path.replace(".", "_")] = module
    for comp, prefix in te_prefixes.items():
        for path, module in parts[comp].named_modules():
            full = path if path.startswith("text_model.") else "text_model." + path
            names[prefix + "_" + full.replace(".", "_")] = module
    return names


def merge_kohya(parts: dict, stack, te_prefixes: dict) -> int:
    """ai-toolkit's merge_in for every module of kohya files; `stack` is [(state_dict, multiplier)], summed in
    fp32 in that order and rounded once. Returns the number of modules merged."""
    names = kohya_module_names(parts, te_prefixes)
    terms = {}
    for state_dict, multiplier in stack:
        for key in state_dict:
            if not key.endswith(".lora_down.weight"):
                continue
            name = key[: -len(".lora_down.weight")]
            device = names[name].weight.device  # ai-toolkit merges on the device holding the LoRA (the GPU)
            down = state_dict[key].clone().float().to(device)
            up = state_dict[name + ".lora_up.weight"].clone().float().to(device)
            alpha = float(state_dict[name + ".alpha"].float().item())
            scale = alpha / down.shape[0]
            if down.ndim == 2:
                term = multiplier * (up @ down) * scale
            elif down.shape[2:4] == (1, 1):
                term = multiplier * (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)
                                     ).unsqueeze(2).unsqueeze(3) * scale
            else:
                conved = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
                term = multiplier * conved * scale
            terms.setdefault(name, []).append(term)
    with torch.no_grad():
        for name, module_terms in terms.items():
            module = names[name]
            weight = module.weight.float()
            for term in module_terms:
                weight = weight + term
            module.weight.data.copy_(weight.to(module.weight.dtype))
    return len(terms)


def branch_kohya(parts: dict, stack, te_prefixes: dict) -> list:
    """ai-toolkit's unmerged path (mixed multipliers): each LoRA module's forward becomes
    `org_forward(x) + ((up(down(x.float())) * scale) * multiplier).to(dtype)` (`ToolkitModuleMixin.forward`).
    Patches `forward` on the modules like ai-toolkit's `apply_to`; returns the patched modules."""
    names = kohya_module_names(parts, te_prefixes)
    patched = {}
    for state_dict, multiplier in stack:
        for key in state_dict:
            if not key.endswith(".lora_down.weight"):
                continue
            name = key[: -len(".lora_down.weight")]
            module = names[name]
            dev = module.weight.device
            down_w = state_dict[key].float().to(dev)
            up_w = state_dict[name + ".lora_up.weight"].float().to(dev)
            if down_w.ndim == 2:
                down = torch.nn.Linear(down_w.shape[1], down_w.shape[0], bias=False).to(dev)
                up = torch.nn.Linear(up_w.shape[1], up_w.shape[0], bias=False).to(dev)
            else:
                down = torch.nn.Conv2d(down_w.shape[1], down_w.shape[0], down_w.shape[2:], module.stride,
                                       module.padding, bias=False).to(dev)
                up = torch.nn.Conv2d(up_w.shape[1], up_w.shape[0], (1, 1), bias=False).to(dev)
            down.weight.data.copy_(down_w)
            up.weight.data.copy_(up_w)
            scale = torch.tensor(float(state_dict[name + ".alpha"].float().item()) / down_w.shape[0],
                                 dtype=torch.float32, device=dev)
            mult = torch.tensor([multiplier], dtype=torch.float32, device=dev)
            patched.setdefault(module, []).append((down, up, scale, mult))
    for module, loras in patched.items():
        org_forward = module.forward

        def forward(x, *args, _org=org_forward, _loras=loras, **kwargs):
            out = _org(x, *args, **kwargs)
            for down, up, scale, mult in _loras:
                lora_out = up(down(x.to(torch.float32))) * scale
                m = mult.repeat_interleave(lora_out.size(0) // mult.size(0))
                while m.dim() < lora_out.dim():
                    m = m.unsqueeze(-1)
                out = out + (lora_out * m).to(out.dtype)
            return out
        module.forward = forward
    return list(patched)
