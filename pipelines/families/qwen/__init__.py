"""Qwen-Image and Qwen-Image-2512: previews as ai-toolkit renders them, through Diffusers' `QwenImagePipeline`.

What ai-toolkit 0.12.26 (27a03a91) does (`extensions_built_in/diffusion_models/qwen_image/qwen_image.py:
QwenImageModel`, `toolkit/models/base_model.py:BaseModel.generate_images`), and so what this does:
- `load_model`: transformer/, tokenizer/, text_encoder/ (`Qwen2_5_VLForConditionalGeneration`) and vae/ from the
  Diffusers folder, one `from_pretrained` each; the text encoder's vision tower is dropped (`model.visual = None`,
  `_qwen_image_keep_visual` False; the edit models keep it); `quantize` + `quantize_te` (qfloat8 in the UI presets):
  the transformer block by block (`quantize_model`), then the text encoder whole. The folder's scheduler is never
  used: every preview builds `CustomFlowMatchEulerDiscreteScheduler(**scheduler_config)` (`get_train_scheduler`).
- `get_prompt_embeds`: `QwenImagePipeline.encode_prompt(prompt)` per prompt (batch 1, the negative in its own call,
  `""` included): the fixed system template, tokens to 1024 + 34, last hidden state, the 34 template tokens dropped;
  a None mask becomes ones; `generate_images` casts the embeds to the transformer dtype.
- `generate_single_image`: width/height floored to 32 (`get_bucket_divisibility`, after `GenerateImageConfig`'s
  8-floor); `QwenImagePipeline(prompt_embeds, mask, negative embeds + mask, true_cfg_scale=guidance_scale,
  generator=torch.manual_seed(seed))`, which truncates the embeds to 512, runs true CFG whenever guidance > 1
  (`neg + g·(cond − neg)` rescaled to ‖cond‖ per token, as stock Diffusers does), draws the noise in the embeds'
  dtype, sigmas `linspace(1, 1/n, n)`, `mu = calculate_shift(output tokens, 256, 8192, 0.5, 0.9)`.
The negative is not encoded when guidance ≤ 1 (true CFG is off then; encoding it draws nothing from the generator,
so the pixels are the same).

The edit models (`edit.py`) run their own loop. LoRA names: Diffusers paths (ai-toolkit's `diffusion_model.` files).
"""
from __future__ import annotations

import os

import torch

from ...errors import ModelSourceError
from ..base import Family
from ..common import prepare_components, quantize_components, source_folder, step_callback_kwargs
from .options import QwenEditOptions  # noqa: F401  (re-exported: the family's options)

#: `get_bucket_divisibility`: 16 for the VAE (8) x patch (2) ... times 2, hard-coded
BUCKET = 32


def _class(name: str):
    import diffusers

    return getattr(diffusers, name)


def load_parts(folder: str, dtype, with_processor: bool) -> dict:
    """`QwenImageModel.load_model` on a full Diffusers folder: one `from_pretrained` per subfolder, offline."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

    kw = dict(torch_dtype=dtype, local_files_only=True)
    parts = dict(
        transformer=QwenImageTransformer2DModel.from_pretrained(folder, subfolder="transformer", **kw),
        tokenizer=Qwen2Tokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True),
        text_encoder=Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, subfolder="text_encoder", **kw),
        vae=AutoencoderKLQwenImage.from_pretrained(folder, subfolder="vae", **kw),
    )
    if with_processor:  # Qwen2VLProcessor needs torchvision in transformers 5: imported only for the edit models
        import importlib.util

        from transformers import Qwen2VLProcessor

        if importlib.util.find_spec("torchvision") is None:
            raise ModelSourceError(
                "The Qwen-Image-Edit models need torchvision: transformers builds their Qwen2VLProcessor (the "
                "vision-language encoder's image and video processors) only with it. ComfyUI installs it; elsewhere "
                "`pip install torchvision` (the build that matches your torch).")
        parts["processor"] = Qwen2VLProcessor.from_pretrained(folder, subfolder="processor", local_files_only=True)
    return parts


class QwenImage(Family):
    """Qwen-Image / Qwen-Image-2512 (`QwenImagePipeline`)."""
    lora_component_names = ("transformer",)
    pipeline_class = "QwenImagePipeline"
    parts = ("vae", "text_encoder", "tokenizer", "transformer")
    keep_visual = False  # QwenImageModel._qwen_image_keep_visual

    # ---- loading -------------------------------------------------------------------------------------------
    def load(self, spec, source, dtype, device, quantization=None):
        label = os.path.basename(source.location)
        if source.kind == "single_file":
            raise ModelSourceError(
                f"{label}: {spec.label} loads from a Diffusers folder (transformer/, text_encoder/, tokenizer/, vae/"
                f"{', processor/' if self.keep_visual else ''}) as ai-toolkit does with a full checkpoint folder, "
                f"not from a single file. Use \"default\" ({spec.base_repo}) or a Diffusers folder under diffusers/.")
        try:
            parts = load_parts(source_folder(source), dtype, self.keep_visual)
        except ModelSourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - Diffusers/transformers raise many types for unreadable models
            raise ModelSourceError(
                f"Could not load {label} as {spec.label} ({type(exc).__name__}: {exc}). Check that it is a "
                f"{spec.label} Diffusers folder with transformer/, text_encoder/, tokenizer/, vae/"
                f"{' and processor/' if self.keep_visual else ''}.") from exc
        channels = parts["transformer"].config.in_channels
        if channels != 64:
            raise ModelSourceError(f"{label}: its transformer takes {channels} input channels, not Qwen-Image's 64; "
                                   f"it is not a {spec.label} model.")
        if not self.keep_visual:
            parts["text_encoder"].model.visual = None  # load_model: "not needed for image generation"
        pipe = _class(self.pipeline_class)(scheduler=self.scheduler(spec), **parts)
        prepare_components(pipe, label, spec, dtype, device)
        quantize_components(pipe, spec, quantization, dtype)
        return pipe

    # ---- sampling ------------------------------------------------------------------------------------------
    def sampling_pipeline(self, spec, pipe, sampler):
        names = self.parts + (("processor",) if self.keep_visual else ())
        sampling = _class(self.pipeline_class)(**{n: getattr(pipe, n) for n in names},
                                               scheduler=self.scheduler(spec, sampler))
        sampling.set_progress_bar_config(disable=True)
        return sampling

    @staticmethod
    def output_size(request) -> tuple[int, int]:
        """(width, height): `generate_single_image` floors the 8-floored size to 32."""
        return request.width // BUCKET * BUCKET, request.height // BUCKET * BUCKET

    def encode(self, sampling, prompt: str, images=None):
        """`get_prompt_embeds` + `generate_images`' cast: (embeds in the transformer dtype, int64 mask of ones)."""
        kwargs = {} if images is None else {"image": images}
        embeds, mask = sampling.encode_prompt([prompt], device=sampling.transformer.device, num_images_per_prompt=1,
                                              **kwargs)
        if mask is None:  # Diffusers >= 0.37 returns None when no token is padding; ai-toolkit rebuilds the ones
            mask = torch.ones(embeds.shape[:2], device=embeds.device, dtype=torch.int64)
        return embeds.to(dtype=sampling.transformer.dtype), mask.to(dtype=torch.int64)

    def generate(self, spec, pipe, request, sampler=None, on_step=None):
        sampling = self.sampling_pipeline(spec, pipe, sampler)
        width, height = self.output_size(request)
        guidance = spec.guidance.pipeline_value(request.guidance_scale)
        with torch.no_grad():
            embeds, mask = self.encode(sampling, request.prompt)
            kwargs = dict(prompt_embeds=embeds, prompt_embeds_mask=mask, true_cfg_scale=guidance)
            if guidance > spec.guidance.threshold:
                neg, neg_mask = self.encode(sampling, request.negative_prompt or "")
                kwargs.update(negative_prompt_embeds=neg, negative_prompt_embeds_mask=neg_mask)
            return sampling(height=height, width=width, num_inference_steps=request.steps,
                            generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np",
                            **kwargs, **step_callback_kwargs(request.steps, on_step)).images

    def preview_latents(self, spec, latents, request):
        """Packed tokens [B, L, 64] → [16, h, w] (the pipeline's `_unpack_latents` for the first image)."""
        if latents is None or latents.ndim != 3 or request is None:
            return super().preview_latents(spec, latents, request)
        width, height = self.output_size(request)
        h, w = height // 16, width // 16
        if latents.shape[1] < h * w:
            return None
        c = latents.shape[2] // 4
        return latents[0, : h * w].view(h, w, c, 2, 2).permute(2, 0, 3, 1, 4).reshape(c, h * 2, w * 2)


from .edit import QwenImageEdit, QwenImageEditPlus  # noqa: E402  (at the bottom: they subclass QwenImage)

VARIANTS = {"": QwenImage, "edit": QwenImageEdit, "edit_plus": QwenImageEditPlus}
