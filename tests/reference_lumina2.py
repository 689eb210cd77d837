"""Independent reference: ai-toolkit's Lumina-Image 2.0 preview written out by hand.

Nothing here imports the pack; only torch, diffusers, transformers (and optimum-quanto for the quantized Gemma2).
It follows ai-toolkit 0.12.26 (27a03a91) `toolkit/stable_diffusion_model.py:StableDiffusion` as its lumina2 branches
read: `load_model` (parts in the train dtype, Gemma2 quantized when `quantize_te`), `generate_images` (a stock
`Lumina2Pipeline`, the scheduler of `toolkit/sampler.py:get_sampler('flowmatch', arch='lumina2')`, prompt and
negative each through `encode_prompt`, embeds cast to the transformer dtype, masks int64, `torch.manual_seed(seed)`),
and `toolkit/network_mixins.py:merge_in` for the LoRA. The scheduler is rebuilt the way ai-toolkit builds it — a
subclass whose `__init__` takes `*args, **kwargs`, then `from_config(lumina2_config)` — so its shift is whatever
that construction gives, not a number written here.
"""
from __future__ import annotations

import os

import numpy as np
import torch

# toolkit/sampler.py:lumina2_config
LUMINA2_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.33.0.dev0",
    "base_image_seq_len": 256, "base_shift": 0.5, "invert_sigmas": False, "max_image_seq_len": 4096,
    "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 6.0, "shift_terminal": None, "use_beta_sigmas": False,
    "use_dynamic_shifting": False, "use_exponential_sigmas": False, "use_karras_sigmas": False,
}
MAX_SEQUENCE_LENGTH = 256  # StableDiffusion.encode_prompt, lumina2 branch


def load_parts(folder: str, dtype: torch.dtype = torch.float32, quantize_te: bool = False) -> dict:
    """`load_model` lumina2 branch: `Lumina2Transformer2DModel`, `AutoencoderKL`, `AutoModel` (Gemma2) and
    `AutoTokenizer` from the folder with `torch_dtype`, `.to(dtype)`; with `quantize_te`, `toolkit/util/quantize.py:
    quantize(text_encoder, weights=qfloat8)` (no include/exclude: optimum-quanto's module walk) + `freeze`. Then
    `requires_grad_(False)`, eval."""
    from diffusers import AutoencoderKL, Lumina2Transformer2DModel
    from transformers import AutoModel, AutoTokenizer

    sub = lambda name: os.path.join(folder, name)  # noqa: E731
    kw = dict(torch_dtype=dtype, local_files_only=True)
    parts = {"transformer": Lumina2Transformer2DModel.from_pretrained(sub("transformer"), **kw),
             "vae": AutoencoderKL.from_pretrained(sub("vae"), **kw),
             "text_encoder": AutoModel.from_pretrained(sub("text_encoder"), **kw),
             "tokenizer": AutoTokenizer.from_pretrained(sub("tokenizer"), local_files_only=True)}
    for name in ("transformer", "vae", "text_encoder"):
        parts[name].to(dtype=dtype)
    if quantize_te:
        from optimum.quanto import freeze, qfloat8, quantize

        quantize(parts["text_encoder"], weights=qfloat8)
        freeze(parts["text_encoder"])
    for name in ("transformer", "vae", "text_encoder"):
        parts[name].requires_grad_(False)
        parts[name].eval()
    return parts


def aitk_scheduler():
    """`get_sampler('flowmatch', {'prediction_type': ...}, arch='lumina2')`: ai-toolkit's
    `CustomFlowMatchEulerDiscreteScheduler` (`__init__(self, *args, **kwargs)`, `init_noise_sigma = 1.0`; no
    inference method overridden) built with `from_config(lumina2_config + kwargs)`."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    class CustomFlowMatchEulerDiscreteScheduler(FlowMatchEulerDiscreteScheduler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.init_noise_sigma = 1.0

    return CustomFlowMatchEulerDiscreteScheduler.from_config(dict(LUMINA2_CONFIG, prediction_type="epsilon"))


def honoured_scheduler(config=None):
    """A scheduler that honours `lumina2_config` (shift 6): what a naive port would sample with."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(dict(config or LUMINA2_CONFIG))


def merge_peft(parts: dict, state_dict: dict, multiplier: float = 1.0) -> int:
    """`ToolkitModuleMixin.merge_in` for every `transformer.<path>.lora_A/B` pair (peft format: scale 1):
    `W + m * (B.float() @ A.float())` in fp32, written back in the weight's dtype. Returns the modules merged."""
    transformer = parts["transformer"]
    paths = sorted(k[len("transformer."):-len(".lora_A.weight")] for k in state_dict if k.endswith(".lora_A.weight"))
    for path in paths:
        module = transformer.get_submodule(path)
        a = state_dict[f"transformer.{path}.lora_A.weight"].float()
        b = state_dict[f"transformer.{path}.lora_B.weight"].float()
        with torch.no_grad():
            module.weight.copy_((module.weight.float() + multiplier * (b @ a) * 1.0).to(module.weight.dtype))
    return len(paths)


def pipeline(parts: dict, scheduler=None):
    from diffusers import Lumina2Pipeline

    pipe = Lumina2Pipeline(transformer=parts["transformer"], scheduler=scheduler or aitk_scheduler(),
                           vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encode(pipe, text: str, with_system_prompt: bool = True):
    """`StableDiffusion.encode_prompt` (lumina2): `pipeline.encode_prompt(text, do_classifier_free_guidance=False,
    num_images_per_prompt=1, max_sequence_length=256)` → (embeds, mask); `generate_images` then casts the embeds to
    the transformer dtype and passes the mask as int64. `with_system_prompt=False` is stock Diffusers'
    `negative_prompt=` path (`_get_gemma_prompt_embeds` on the bare text), for the wrong-choice tests."""
    dtype = pipe.transformer.dtype
    if with_system_prompt:
        embeds, mask, _, _ = pipe.encode_prompt(text, do_classifier_free_guidance=False, num_images_per_prompt=1,
                                                device=pipe.text_encoder.device,
                                                max_sequence_length=MAX_SEQUENCE_LENGTH)
    else:
        embeds, mask = pipe._get_gemma_prompt_embeds([text], device=pipe.text_encoder.device,
                                                     max_sequence_length=MAX_SEQUENCE_LENGTH)
    return embeds.to(dtype), mask.to(torch.int64)


def floor8(x: int) -> int:
    return max(64, x - x % 8)  # toolkit/config_modules.py:GenerateImageConfig.__init__


def preview(parts: dict, prompt: str, negative: str, seed: int, steps: int, guidance: float, width: int,
            height: int, scheduler=None, negative_system_prompt: bool = True, **call) -> np.ndarray:
    """The preview as uint8 [H, W, 3] (`numpy_to_pil`: round(x * 255)). `call` overrides pipeline arguments
    (e.g. `cfg_normalization=False`) for the wrong-choice tests."""
    pipe = pipeline(parts, scheduler)
    with torch.no_grad():
        embeds, mask = encode(pipe, prompt)
        neg, neg_mask = encode(pipe, negative, negative_system_prompt)
        images = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=neg,
                      negative_prompt_attention_mask=neg_mask, height=floor8(height), width=floor8(width),
                      num_inference_steps=steps, guidance_scale=guidance,
                      generator=torch.Generator().manual_seed(seed), output_type="np", **call).images
    return (images[0] * 255).round().astype("uint8")
