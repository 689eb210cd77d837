"""FLUX.1-dev, Flex.1 and FLUX.1-Kontext-dev (and the base of Flex.2 and Chroma): previews as ai-toolkit renders them.

What ai-toolkit 0.12.26 does (`toolkit/stable_diffusion_model.py:StableDiffusion.generate_images`, flux branch;
`extensions_built_in/diffusion_models/flux_kontext/flux_kontext.py`), and so what this does:
- a fresh `FluxPipeline` over the cached components per call, with ai-toolkit's flow-match scheduler built from its
  `flux_config` (dynamic shift: `mu` from the packed image token count), never the repo's scheduler;
- prompts encoded by `toolkit/train_tools.py:encode_prompts_flux`: CLIP padded to 77 (pooled output), T5 padded to
  512 with no attention mask; `model.attn_masking` zeroes the pad embeddings (an option here);
- `guidance_scale` only feeds the distilled guidance embedding: one transformer pass per step, the negative is not
  used (ai-toolkit encodes it, but the flux call passes none);
- sizes floored to 8 (minimum 64) by `GenerateImageConfig`, then to 16 by the pipeline;
- noise from a CPU generator seeded with the seed (`torch.manual_seed(seed)`), drawn in the embeddings' dtype;
- Flex.1 is FLUX.1 for previews (`ModelConfig` maps arch `flex1` to `flux`); the guidance-embedding bypass is
  training-only;
- Kontext: the control image resized with PIL BILINEAR to the 8-floored size (only when it differs), the size then
  floored to 16, and `FluxKontextPipeline(image=…, max_area=w*h, _auto_resize=False)`.

LoRA names: Diffusers paths (`transformer.…`, ai-toolkit's peft files) and BFL names (`diffusion_model.…`, kohya
`lora_unet_double_blocks_…`) with the fused `qkv`/`linear1` split by rows.
"""
from __future__ import annotations

import os
import torch

from ...errors import ModelSourceError
from ..base import Family
from ..common import from_source, prepare_components, quantize_components, step_callback_kwargs
from .bfl_names import bfl_names
from .options import FluxOptions  # noqa: F401  (re-exported: the family's options)

T5_MAX_LENGTH = 512


def _class(name: str):
    import diffusers

    return getattr(diffusers, name)


def encode_flux(pipe, prompt: str, attn_masking: bool = False):
    """`toolkit/train_tools.py:encode_prompts_flux` for one prompt: (T5 embeds [1, 512, d], CLIP pooled [1, d])."""
    clip_ids = pipe.tokenizer([prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                              truncation=True, return_overflowing_tokens=False, return_length=False,
                              return_tensors="pt").input_ids
    te = pipe.text_encoder
    pooled = te(clip_ids.to(te.device), output_hidden_states=False).pooler_output.to(dtype=te.dtype, device=te.device)
    t5 = pipe.tokenizer_2([prompt], padding="max_length", max_length=T5_MAX_LENGTH, truncation=True,
                          return_length=False, return_overflowing_tokens=False, return_tensors="pt")
    te2 = pipe.text_encoder_2
    embeds = te2(t5.input_ids.to(te.device), output_hidden_states=False)[0].to(dtype=te2.dtype, device=te.device)
    if attn_masking:
        mask = t5["attention_mask"].unsqueeze(-1).expand(embeds.shape)
        embeds = embeds * mask.to(dtype=embeds.dtype, device=embeds.device)
    return embeds, pooled


class Flux(Family):
    """FLUX.1-dev and Flex.1 (`FluxPipeline`)."""
    lora_component_names = ("transformer", "text_encoder")
    pipeline_class = "FluxPipeline"
    parts = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer")

    # ---- loading -------------------------------------------------------------------------------------------
    #: packed input channels of the transformer (16 latent channels x 2 x 2); Flex.2's is 196
    in_channels = 64

    def load(self, spec, source, dtype, device, quantization=None):
        pipe = from_source(_class(self.pipeline_class), spec, source, scheduler=self.scheduler(spec))
        label = os.path.basename(source.location)
        channels = pipe.transformer.config.in_channels
        if channels != self.in_channels:
            raise ModelSourceError(
                f"{label}: its transformer takes {channels} input channels, not {spec.label}'s {self.in_channels}"
                + (" (196 is Flex.2: pick model flex2 for it)." if channels == 196 else "; pick the model it is."))
        prepare_components(pipe, label, spec, dtype, device)
        quantize_components(pipe, spec, quantization, dtype)
        return pipe

    def module_names(self, spec, component, module):
        names = super().module_names(spec, component, module)
        if component == "transformer":
            for name, aliases in bfl_names(component, module).items():
                names.setdefault(name, aliases)
        return names

    # ---- sampling ------------------------------------------------------------------------------------------
    def sampling_pipeline(self, spec, pipe, sampler):
        sampling = _class(self.pipeline_class)(**{n: getattr(pipe, n) for n in self.parts},
                                               scheduler=self.scheduler(spec, sampler))
        sampling.set_progress_bar_config(disable=True)
        return sampling

    def embeds(self, spec, pipe, request):
        options = self.options(spec, request)
        embeds, pooled = encode_flux(pipe, request.prompt, bool(getattr(options, "attn_masking", False)))
        dtype = pipe.transformer.dtype  # ai-toolkit casts the embeds to the model's dtype
        return embeds.to(dtype), pooled.to(dtype)

    def call_kwargs(self, spec, request) -> dict:
        """Extra pipeline arguments, from the request as ai-toolkit's GenerateImageConfig holds it."""
        return {}

    def pipeline_size(self, request) -> tuple[int, int]:
        """The width and height handed to the pipeline (which floors them to 16 itself)."""
        return request.width, request.height

    def generate(self, spec, pipe, request, sampler=None, on_step=None):
        sampling = self.sampling_pipeline(spec, pipe, sampler)
        width, height = self.pipeline_size(request)
        with torch.no_grad():
            embeds, pooled = self.embeds(spec, pipe, request)
            kwargs = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=height, width=width,
                          num_inference_steps=request.steps,
                          guidance_scale=spec.guidance.pipeline_value(request.guidance_scale),
                          generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np",
                          **self.call_kwargs(spec, request), **step_callback_kwargs(request.steps, on_step))
            return sampling(**kwargs).images

    def preview_latents(self, spec, latents, request):
        """Packed tokens [B, L, 4c] → [c, h, w] (FluxPipeline's `_unpack_latents` for the first image)."""
        if latents is None or latents.ndim != 3 or request is None:
            return super().preview_latents(spec, latents, request)
        h, w = request.height // 16, request.width // 16
        b, length, packed = latents.shape
        if length < h * w:
            return None
        tokens = latents[:1, : h * w]  # Kontext appends the control tokens after the output's
        c = packed // 4
        return tokens.view(1, h, w, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(c, h * 2, w * 2)


class Kontext(Flux):
    """FLUX.1-Kontext-dev: the control image enters as extra tokens (`FluxKontextPipeline`)."""
    pipeline_class = "FluxKontextPipeline"

    def call_kwargs(self, spec, request) -> dict:
        from PIL import Image

        control = request.controls[0].convert("RGB")
        if control.size != (request.width, request.height):
            control = control.resize((request.width, request.height), Image.BILINEAR)
        width, height = self.pipeline_size(request)
        return dict(image=control, max_area=width * height, _auto_resize=False)

    def pipeline_size(self, request) -> tuple[int, int]:
        return request.width // 16 * 16, request.height // 16 * 16


from .flex2 import Flex2  # noqa: E402  (at the bottom: Flex2 subclasses Flux)

VARIANTS = {"": Flux, "kontext": Kontext, "flex2": Flex2}
