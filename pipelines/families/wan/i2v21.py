"""Wan 2.1 image-to-video 14B (720p, 480p): previews as ai-toolkit renders them, through Diffusers'
`WanImageToVideoPipeline` with the CLIP vision encoder.

What ai-toolkit 0.12.26 (27a03a91) does (`toolkit/models/wan21/wan21_i2v.py:Wan21I2V`, a `Wan21`), and so what this
does:
- `load_model`: `Wan21.load_model` (transformer, UMT5 and Wan VAE `.to(dtype)`, the transformer quantized blocks
  first when `quantize`, the UMT5 when `quantize_te`), then `CLIPImageProcessor` and `CLIPVisionModel` from the
  base's `image_processor/` and `image_encoder/`, `torch_dtype=dtype`, never quantized;
- `get_generation_pipeline`: without `low_vram` (the UI preset leaves it off) a stock `WanImageToVideoPipeline` over
  those parts with the preview scheduler of the LoRA's ai-toolkit version (`samplers.py`: UniPC before 0.9.3,
  flow-match Euler shift 3 since);
- `generate_single_image`: no control image raises ("I2V samples must have a control image"; here a
  `ControlImageError` naming `control_image` before anything runs); the size is floored to 16; the control image is
  `Image.open(...).convert("RGB").resize((w, h), LANCZOS)`; then the stock pipeline runs with the prompt embeds, the
  negative embeds and `generator=torch.manual_seed(seed)`. The stock pipeline: CLIP image processor (resize, crop,
  normalise) → `image_encoder(...).hidden_states[-2]` in the transformer dtype; the noise
  `[1, 16, (F-1)//4+1, H/8, W/8]` drawn first (fp32), then the first frame plus F-1 zero frames VAE-encoded with the
  *mode* (`sample_mode="argmax"`: no draw from the generator), normalised `(z - mean) / std`, behind a 4-channel
  mask (frame 0 repeated x4) = `cat([latents, mask, cond])`, 36 channels per forward; cond and uncond as two
  transformer passes with the same image embeds; decode as Wan 2.1 T2V.
So for Wan 2.1 I2V ai-toolkit's math is the pipeline's own (unlike Wan 2.2 I2V, whose own conditioning draws a VAE
sample). The stock pipeline calls `ftfy.fix_text` unguarded: ftfy is required (a clear error when it is missing).

LoRA names: as Wan 2.1 T2V (`diffusion_model.` + original Wan names); ai-toolkit's `transformer_only` network
targets every Linear in `blocks`, which on I2V includes the image cross-attention projections `attn2.add_k_proj` /
`add_v_proj` (saved as `cross_attn.k_img` / `cross_attn.v_img`): 12 modules per block.
"""
from __future__ import annotations

import os

import torch

from ...errors import ControlImageError, ModelSourceError
from ..common import from_source, prepare_components, quantize_components, step_callback_kwargs
from . import SIZE_MULTIPLE, TEXT_PARTS, Wan21, encode_wan, floored_size, text_parts

FTFY_MISSING = ("Wan image-to-video needs the ftfy package (Diffusers' WanImageToVideoPipeline cleans every prompt "
                "with ftfy.fix_text, as ai-toolkit's environment does): install it into ComfyUI's Python with "
                "`pip install ftfy`, then restart ComfyUI.")


def require_ftfy():
    """ftfy, imported lazily; a ModelSourceError saying how to install it when it is missing."""
    try:
        import ftfy
    except ImportError as exc:
        raise ModelSourceError(FTFY_MISSING) from exc
    import diffusers.pipelines.wan.pipeline_wan_i2v as i2v

    if not hasattr(i2v, "ftfy"):  # Diffusers imports it at module import only when it was installed then
        i2v.ftfy = ftfy
    return ftfy


def control_frame(request, width: int, height: int):
    """ai-toolkit's control image: RGB, LANCZOS-resized to the (floored) output size."""
    from PIL import Image

    image = request.controls[0] if request.controls else None
    if image is None:
        raise ControlImageError("Wan image-to-video needs a control image: connect an IMAGE to control_image "
                                "(the first frame).")
    image = image.convert("RGB")
    return image.resize((width, height), Image.LANCZOS)


class Wan21I2V(Wan21):
    """Wan 2.1 I2V 14B (`WanImageToVideoPipeline` with the CLIP vision encoder)."""
    pipeline_class = "WanImageToVideoPipeline"
    in_channels = 36

    def load(self, spec, source, dtype, device, quantization=None):
        from diffusers import WanImageToVideoPipeline

        require_ftfy()
        pipe = from_source(WanImageToVideoPipeline, spec, source, scheduler=self.scheduler(spec),
                           hub_skip=TEXT_PARTS, **text_parts(spec, source))
        label = os.path.basename(source.location)
        if pipe.transformer is None or getattr(pipe, "transformer_2", None) is not None:
            raise ModelSourceError(f"{label} is not {spec.label}: it has "
                                   + ("no transformer/" if pipe.transformer is None else "two transformers (a Wan "
                                      "2.2 A14B expert pair)") + ".")
        channels = pipe.transformer.config.in_channels
        if channels != self.in_channels or pipe.transformer.config.image_dim is None:
            raise ModelSourceError(f"{label}: its transformer takes {channels} input channels"
                                   + ("" if channels != self.in_channels else " and no image embeddings")
                                   + f", not {spec.label}'s 36 with CLIP image embeddings; pick the model it is.")
        if pipe.image_encoder is None or pipe.image_processor is None:
            raise ModelSourceError(f"{label} has no image_encoder/ or image_processor/ (the CLIP vision encoder "
                                   f"{spec.label} needs); use the full Diffusers folder of {spec.base_repo}.")
        prepare_components(pipe, label, spec, dtype, device)
        quantize_components(pipe, spec, quantization, dtype)
        return pipe

    def sampling_pipeline(self, spec, pipe, sampler):
        from diffusers import WanImageToVideoPipeline

        sampling = WanImageToVideoPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                                           scheduler=self.scheduler(spec, sampler),
                                           image_processor=pipe.image_processor, image_encoder=pipe.image_encoder,
                                           transformer=pipe.transformer)
        sampling.set_progress_bar_config(disable=True)
        return sampling

    def generate(self, spec, pipe, request, sampler=None, on_step=None):
        from ...request import Render

        require_ftfy()
        width, height, notes = floored_size(request, SIZE_MULTIPLE, "as ai-toolkit's Wan 2.1 I2V preview does "
                                            "(multiples of 16)")
        image = control_frame(request, width, height)
        sampling = self.sampling_pipeline(spec, pipe, sampler)
        dtype = pipe.vae.dtype
        with torch.no_grad():
            embeds = encode_wan(sampling, request.prompt, dtype)
            negative = encode_wan(sampling, request.negative_prompt or "", dtype)
            video = sampling(image=image, prompt_embeds=embeds, negative_prompt_embeds=negative, height=height,
                             width=width, num_frames=request.num_frames, num_inference_steps=request.steps,
                             guidance_scale=spec.guidance.pipeline_value(request.guidance_scale),
                             generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np",
                             return_dict=False, **step_callback_kwargs(request.steps, on_step))[0]
        return Render(frames=video[0], fps=float(request.fps), notes=tuple(notes))
