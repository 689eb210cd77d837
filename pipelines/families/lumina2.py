"""Lumina-Image 2.0: previews as ai-toolkit renders them.

ai-toolkit 0.12.26 (27a03a91) has no extension class for arch `lumina2`; the legacy
`toolkit/stable_diffusion_model.py:StableDiffusion` handles it. What it does, and so what this does:
- `load_model` (lumina2 branch): transformer, VAE and Gemma2 (`AutoModel`) + tokenizer from the Diffusers folder,
  in the train dtype; the UI preset sets `quantize: false, quantize_te: true`, so only Gemma2 is quantized (qfloat8,
  `quantize(text_encoder, weights=get_qtype(model.qtype))`, no exclusions). The folder's scheduler is never used.
- `generate_images`: a fresh stock `Lumina2Pipeline` over the loaded parts with `get_sampler('flowmatch',
  arch='lumina2')` = `CustomFlowMatchEulerDiscreteScheduler.from_config(lumina2_config)`, which really samples with
  shift 1.0 (the class's `__init__(*args, **kwargs)` hides every config key; see `models/lumina2.py`), so the
  entry's config is that effective one and the scheduler here is the pack's flow-match scheduler built from it.
- prompts: `StableDiffusion.encode_prompt` calls `pipeline.encode_prompt(prompt, do_classifier_free_guidance=False,
  max_sequence_length=256)` for the prompt and, separately, for the negative, so BOTH get the pipeline's system
  prompt (`system_prompt + " <Prompt Start> " + text`, the empty negative too); Gemma2 `hidden_states[-2]`, padded
  to 256 with the attention mask. Stock Diffusers' `negative_prompt=` path encodes the negative without the system
  prompt. The embeds are cast to the transformer dtype, the masks passed as int64 (`prompt_embeds=`,
  `negative_prompt_embeds=` …).
- the pipeline's own defaults are kept, as ai-toolkit keeps them: `cfg_normalization=True`, `cfg_trunc_ratio=1.0`;
  true CFG iff `guidance_scale > 1` (`do_classifier_free_guidance`); the guidance value is passed as written.
- sizes: `GenerateImageConfig` floors to 8 (min 64); `Lumina2Pipeline.check_inputs` then raises unless both sides
  divide by 16, so ai-toolkit renders no preview at e.g. 72 px. `check_request` refuses such sizes up front, naming
  the size and the nearest valid ones.
- noise: `torch.manual_seed(seed)` (a CPU generator) drawn by `prepare_latents` in the prompt embeds' dtype.
- LoRA: peft `transformer.<diffusers path>.lora_A/B` without alpha (scale 1) on the Linear layers of `layers`,
  `noise_refiner` and `context_refiner`; merged (fp32 add, one rounding) since the transformer is not quantized.
  Diffusers module paths are the file's names, so the default alias table applies.
"""
from __future__ import annotations

import os

import torch

from ..errors import InputError
from .base import Family
from .common import from_source, prepare_components, quantize_components, step_callback_kwargs

MAX_SEQUENCE_LENGTH = 256  # StableDiffusion.encode_prompt lumina2 branch ("should it be 512?")
PIPELINE_DIVISOR = 16      # Lumina2Pipeline.check_inputs: vae_scale_factor (8) * 2


def _pipeline_class():
    from diffusers import Lumina2Pipeline

    return Lumina2Pipeline


def encode_lumina2(pipe, prompt: str, dtype):
    """`StableDiffusion.encode_prompt` (lumina2) for one text: the pipeline's `encode_prompt` without CFG, 256
    tokens, the system prompt prepended. Returns (embeds [1, 256, d] in `dtype`, int64 mask [1, 256])."""
    embeds, mask, _, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, num_images_per_prompt=1,
                                            device=pipe.text_encoder.device,
                                            max_sequence_length=MAX_SEQUENCE_LENGTH)
    return embeds.to(dtype), mask.to(torch.int64)


def _nearest(side: int) -> str:
    low = side - side % PIPELINE_DIVISOR
    return f"{low} or {low + PIPELINE_DIVISOR}"


class Lumina2(Family):
    """Lumina-Image 2.0 (`Lumina2Pipeline`: Gemma2 text encoder, true CFG with normalisation)."""
    lora_component_names = ("transformer",)
    parts = ("transformer", "vae", "text_encoder", "tokenizer")

    # ---- loading -------------------------------------------------------------------------------------------
    def load(self, spec, source, dtype, device, quantization=None):
        pipe = from_source(_pipeline_class(), spec, source, scheduler=self.scheduler(spec))
        prepare_components(pipe, os.path.basename(source.location), spec, dtype, device)
        quantize_components(pipe, spec, quantization, dtype)
        return pipe

    # ---- sampling ------------------------------------------------------------------------------------------
    def check_request(self, spec, request) -> None:
        super().check_request(spec, request)
        bad = [(label, side) for label, side in (("width", request.width), ("height", request.height))
               if side % PIPELINE_DIVISOR]
        if bad:
            sides = "; ".join(f"{label} {_nearest(side)}" for label, side in bad)
            raise InputError(
                f"{spec.label} renders only sizes that are multiples of {PIPELINE_DIVISOR}, and {request.width}x"
                f"{request.height} (after ai-toolkit's floor to a multiple of {spec.size.divisor}) is not: "
                f"Lumina2Pipeline refuses it, so ai-toolkit renders no preview at this size. Use {sides} "
                "(check the node's width/height and any --w/--h in the prompt).")

    def sampling_pipeline(self, spec, pipe, sampler):
        sampling = _pipeline_class()(**{n: getattr(pipe, n) for n in self.parts},
                                     scheduler=self.scheduler(spec, sampler))
        sampling.set_progress_bar_config(disable=True)
        return sampling

    def generate(self, spec, pipe, request, sampler=None, on_step=None):
        sampling = self.sampling_pipeline(spec, pipe, sampler)
        dtype = pipe.transformer.dtype  # generate_images casts the embeds to the model's dtype
        guidance = spec.guidance.pipeline_value(request.guidance_scale)
        with torch.no_grad():
            embeds, mask = encode_lumina2(sampling, request.prompt, dtype)
            kwargs = dict(prompt_embeds=embeds, prompt_attention_mask=mask)
            if guidance > spec.guidance.threshold:  # otherwise the pipeline never reads the negative
                neg_embeds, neg_mask = encode_lumina2(sampling, request.negative_prompt or "", dtype)
                kwargs.update(negative_prompt_embeds=neg_embeds, negative_prompt_attention_mask=neg_mask)
            kwargs.update(height=request.height, width=request.width, num_inference_steps=request.steps,
                          guidance_scale=guidance, cfg_normalization=True, cfg_trunc_ratio=1.0,
                          generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np",
                          **step_callback_kwargs(request.steps, on_step))
            return sampling(**kwargs).images


VARIANTS = {"": Lumina2}
