"""SD 1.5 and SDXL: load the base and render a preview exactly as ai-toolkit's `StableDiffusion.generate_images`.

What ai-toolkit does, and so what this does:
- components in the sampling dtype, cast from the source weights; `requires_grad_(False)` on all of them (on CPU
  it changes low bits of SDXL's linear `proj_in`);
- a fresh stock pipeline per call with the registry's effective DDPM config (never the repo's scheduler), no
  safety checker, no watermark;
- prompt and negative text-encoded by the pipeline (an empty negative is encoded, not zeros); SDXL's second encoder
  gets the parsed prompt and the sample's own negative; `guidance_rescale` only on SDXL;
- a CPU generator seeded with the seed, so latents and every DDPM step's noise come from one CPU stream;
- `output_type="np"`: the float pixels its PIL output (what ai-toolkit saves) is rounded from.

LoRA names: module paths, CLIP text encoders with and without the `text_model.` level (transformers ≥5.2x
flattened CLIPTextModel, while ai-toolkit's pinned transformers 5.5 still had it), and for SDXL's UNet also the
original SGM/LDM names (ai-toolkit files of 2023-09 … 2024-07).
"""
from __future__ import annotations

import os

import torch

from ...lora.aliases import Alias, weighted_paths
from ...sources import CONFIG_ROOT
from ..base import Family
from ..common import from_source, prepare_components, step_callback_kwargs
from .sgm_names import sgm_unet_names

CLIP_TOKENIZER_DIR = os.path.join(CONFIG_ROOT, "clip_tokenizer")
TEXT_MODEL = "text_model."


def _pipeline_class(spec):
    import diffusers

    return getattr(diffusers, spec.pipeline_class)


class StableDiffusion(Family):
    """SD 1.5: one CLIP text encoder, safety checker off."""
    lora_component_names = ("unet", "text_encoder")
    text_components = ("text_encoder",)
    tokenizer_pads = {"tokenizer": "<|endoftext|>"}
    sgm_unet = False

    def fixed_kwargs(self) -> dict:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def call_kwargs(self, request) -> dict:
        return {}

    def _shipped_tokenizers(self, config_dir: str) -> dict:
        """Tokenizers for single files whose config folder has none: the real CLIP BPE shipped in the pack."""
        from transformers import CLIPTokenizer

        out = {}
        for name, pad in self.tokenizer_pads.items():
            if not os.path.isdir(os.path.join(config_dir, name)):
                out[name] = CLIPTokenizer(os.path.join(CLIP_TOKENIZER_DIR, "vocab.json"),
                                          os.path.join(CLIP_TOKENIZER_DIR, "merges.txt"), pad_token=pad,
                                          model_max_length=77)
        return out

    def load(self, spec, source, dtype, device, quantization=None):
        kwargs = dict(self.fixed_kwargs(), scheduler=self.scheduler(spec))
        if source.kind == "single_file":
            kwargs.update(self._shipped_tokenizers(source.config_dir))
        pipe = from_source(_pipeline_class(spec), spec, source, **kwargs)
        prepare_components(pipe, os.path.basename(source.location), spec, dtype, device)
        return pipe

    def module_names(self, spec, component, module):
        paths = weighted_paths(module)
        names = {}
        for path in paths:
            names[path] = (Alias(component, path),)
            if component in self.text_components:
                other = path[len(TEXT_MODEL):] if path.startswith(TEXT_MODEL) else TEXT_MODEL + path
                names.setdefault(other, (Alias(component, path),))
        if component == "unet" and self.sgm_unet:
            for path, sgm in sgm_unet_names(module.config, paths).items():
                names.setdefault(sgm, (Alias(component, path),))
        return names

    def _sampling_pipeline(self, spec, pipe, sampler):
        """A fresh stock pipeline over the cached components, as ai-toolkit builds one per sample call."""
        names = ["vae", "tokenizer", "unet", *self.text_components, *self.tokenizer_pads]
        parts = {n: getattr(pipe, n) for n in dict.fromkeys(names)}
        sampling = _pipeline_class(spec)(**parts, scheduler=self.scheduler(spec, sampler), **self.fixed_kwargs())
        sampling.set_progress_bar_config(disable=True)
        return sampling

    def generate(self, spec, pipe, request, sampler=None, on_step=None):
        sampling = self._sampling_pipeline(spec, pipe, sampler)
        kwargs = dict(prompt=request.prompt, negative_prompt=request.negative_prompt, height=request.height,
                      width=request.width, num_inference_steps=request.steps,
                      guidance_scale=spec.guidance.pipeline_value(request.guidance_scale),
                      generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np",
                      **self.call_kwargs(request), **step_callback_kwargs(request.steps, on_step))
        with torch.no_grad():
            return sampling(**kwargs).images


class StableDiffusionXL(StableDiffusion):
    """SDXL: two CLIP text encoders (the second gets the sample's own negative), no watermark, guidance_rescale,
    SGM UNet names."""
    lora_component_names = ("unet", "text_encoder", "text_encoder_2")
    text_components = ("text_encoder", "text_encoder_2")
    tokenizer_pads = {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"}
    sgm_unet = True

    def fixed_kwargs(self) -> dict:
        return {"add_watermarker": False}

    def call_kwargs(self, request) -> dict:
        return dict(prompt_2=request.prompt, negative_prompt_2=request.negative_prompt_2,
                    guidance_rescale=request.guidance_rescale)


VARIANTS = {"": StableDiffusion, "xl": StableDiffusionXL}
