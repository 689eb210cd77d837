"""Flex.2-preview: previews as ai-toolkit renders them (`extensions_built_in/flex2/`), in our own sampling loop.

What ai-toolkit 0.12.26 (27a03a91) does, and so what this does:
- `flex2.py:Flex2.load_model` loads transformer/, text_encoder_2/ + tokenizer_2/, text_encoder/ + tokenizer/ and
  vae/ one by one (FluxTransformer2DModel, T5EncoderModel, CLIPTextModel, AutoencoderKL), casts, quantizes the
  transformer (quantize) and the T5 (quantize_te); never the repo's model_index.json pipeline nor its remote
  `pipeline.py`. We do the same and hold the parts in a plain `FluxPipeline` container.
- Previews run `pipeline.py:Flex2Pipeline.__call__` (a `FluxControlPipeline` subclass) with a fresh
  `CustomFlowMatchEulerDiscreteScheduler(**scheduler_config)` (`Flex2.get_generation_pipeline`; FLUX.1-dev values),
  sigmas `linspace(1, 1/n, n)`, `mu = calculate_shift(packed tokens)`. Diffusers has no such pipeline, so
  `generate` below is that `__call__`'s math with Diffusers' public helpers.
- Prompts: `Flex2.get_prompt_embeds` = `encode_prompts_flux(max_length=512)`: no attn_masking option.
- 16 latent channels (hard-coded `128 // 8`); each step the transformer sees, on packed tokens,
  `cat([latents(64), inpaint(68), control(64)])`: inpaint = zero latent + a mask of ONES (no inpaint image),
  control = zeros, or the control image's latent. `timestep = t.to(latents dtype) / 1000`; the guidance embedding
  holds guidance_scale (one pass, the negative unused); `scheduler.step` on the 64-channel latents.
- Control image (`generate_single_image`: `.convert("RGB")`): `FluxControlPipeline.prepare_image` →
  `VaeImageProcessor(vae_scale_factor=16).preprocess` (LANCZOS to the 16-floored size, 2x-1), `repeat_interleave`
  (contiguous), `vae.encode(x).latent_dist.sample(generator)` with the SAME CPU generator, BEFORE the noise is drawn;
  `(z - shift) * scale`; packed into the control slot (ai-toolkit's `ctrl_idx: 1`; at its default 0 an RGB control
  lands in the 68-wide inpaint slot and the 196-input x_embedder raises).
- Sizes: `GenerateImageConfig` floors to 8 (the request's size); the pipeline floors to 16.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ...errors import ModelSourceError
from ...flowmatch import mu_for
from ..common import prepare_components, quantize_components, source_folder
from . import Flux

#: Flex2Pipeline.__call__: `num_channels_latents = 128 // 8` (hard-coded)
LATENT_CHANNELS = 16
#: x_embedder input width: noisy latents 64 | inpaint latent 64 + mask 4 | control latent 64 (packed 2x2)
IN_CHANNELS = 196


def _load_parts(folder: str, dtype):
    """`Flex2.load_model`: one `from_pretrained` per subfolder, offline."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    kw = dict(torch_dtype=dtype, local_files_only=True)
    return dict(
        transformer=FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer", **kw),
        tokenizer_2=T5TokenizerFast.from_pretrained(folder, subfolder="tokenizer_2", local_files_only=True),
        text_encoder_2=T5EncoderModel.from_pretrained(folder, subfolder="text_encoder_2", **kw),
        text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **kw),
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True),
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw),
    )


class Flex2(Flux):
    """Flex.2-preview (ai-toolkit's `Flex2Pipeline`, re-implemented)."""
    pipeline_class = "FluxPipeline"  # the container; the folder's model_index.json is not used to load

    # ---- loading -------------------------------------------------------------------------------------------
    def load(self, spec, source, dtype, device, quantization=None):
        from diffusers import FluxPipeline

        label = os.path.basename(source.location)
        if source.kind == "single_file":
            raise ModelSourceError(
                f"{label}: {spec.label} loads from a Diffusers folder (transformer/, text_encoder/, text_encoder_2/, "
                f"tokenizer/, tokenizer_2/, vae/) as ai-toolkit's Flex2.load_model does, not from a single file. "
                f"Use \"default\" ({spec.base_repo}) or a Diffusers folder under diffusers/.")
        folder = source_folder(source)
        try:
            parts = _load_parts(folder, dtype)
        except Exception as exc:  # noqa: BLE001 - Diffusers/transformers raise many types for unreadable models
            raise ModelSourceError(
                f"Could not load {label} as {spec.label} ({type(exc).__name__}: {exc}). Check that it is a "
                f"{spec.label} Diffusers folder with transformer/, text_encoder/, text_encoder_2/, tokenizer/, "
                f"tokenizer_2/ and vae/.") from exc
        in_channels = parts["transformer"].config.in_channels
        if in_channels != IN_CHANNELS:
            raise ModelSourceError(
                f"{label}: its transformer takes {in_channels} input channels, not Flex.2's {IN_CHANNELS} (noisy "
                f"latents + inpaint latent and mask + control latent); it is not a {spec.label} model. A "
                f"{in_channels}-channel FLUX transformer is FLUX.1 / Flex.1: pick model flux or flex1 for it.")
        pipe = FluxPipeline(scheduler=self.scheduler(spec), **parts)
        prepare_components(pipe, label, spec, dtype, device)
        quantize_components(pipe, spec, quantization, dtype)
        return pipe

    # ---- sampling ------------------------------------------------------------------------------------------
    def embeds(self, spec, pipe, request):
        from . import encode_flux

        embeds, pooled = encode_flux(pipe, request.prompt)  # Flex2.get_prompt_embeds: never attn-masked
        dtype = pipe.transformer.dtype
        return embeds.to(dtype), pooled.to(dtype)

    @staticmethod
    def control_latents(sampling, control, width, height, generator):
        """`FluxControlPipeline.prepare_image` + the VAE sample of `Flex2Pipeline.__call__`: packed [1, L, 64]."""
        from diffusers.image_processor import VaeImageProcessor

        vae = sampling.vae
        processor = VaeImageProcessor(vae_scale_factor=sampling.vae_scale_factor * 2,
                                      vae_latent_channels=vae.config.latent_channels)
        image = processor.preprocess(control.convert("RGB"), height=height, width=width)
        image = image.contiguous().to(device=vae.device, dtype=vae.dtype)  # prepare_image's repeat_interleave copy
        z = vae.encode(image).latent_dist.sample(generator=generator)
        z = (z - vae.config.shift_factor) * vae.config.scaling_factor
        return sampling._pack_latents(z, z.shape[0], z.shape[1], z.shape[2], z.shape[3])

    @staticmethod
    def blank_slots(latents):
        """The per-step conditioning without an inpaint image: [inpaint: zero latent + mask of ones, control: 0]."""
        return [torch.cat([torch.zeros_like(latents), torch.ones_like(latents[:, :, :4])], dim=2),
                torch.zeros_like(latents)]

    def start(self, sampling, request, width, height, dtype, device, generator):
        """(packed noise, image ids, packed control latent or None), drawn from `generator` in ai-toolkit's order:
        the control image's VAE sample first, then the noise (`prepare_latents`, in the embeds' dtype)."""
        control = request.controls[0] if request.controls else None
        control_latent = None
        if control is not None:
            control_latent = self.control_latents(sampling, control, width, height, generator)
        latents, image_ids = sampling.prepare_latents(1, LATENT_CHANNELS, height, width, dtype, device, generator)
        return latents, image_ids, control_latent

    def generate(self, spec, pipe, request, sampler=None, on_step=None):
        from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

        sampling = self.sampling_pipeline(spec, pipe, sampler)
        scheduler, transformer, vae = sampling.scheduler, sampling.transformer, sampling.vae
        width, height = self.pipeline_size(request)  # 8-floored; the helpers floor to 16
        device = transformer.device
        generator = torch.Generator("cpu").manual_seed(request.seed)
        steps = request.steps
        with torch.no_grad():
            embeds, pooled = self.embeds(spec, pipe, request)
            embeds, pooled, text_ids = sampling.encode_prompt(
                prompt=None, prompt_2=None, prompt_embeds=embeds.to(device), pooled_prompt_embeds=pooled.to(device),
                device=device, num_images_per_prompt=1, max_sequence_length=512)
            latents, image_ids, control = self.start(sampling, request, width, height, embeds.dtype, device,
                                                     generator)
            sigmas = np.linspace(1.0, 1 / steps, steps)
            timesteps, _ = retrieve_timesteps(scheduler, steps, device, sigmas=sigmas,
                                              mu=mu_for(spec.scheduler.config, latents.shape[1]))
            guidance = None
            if transformer.config.guidance_embeds:
                value = spec.guidance.pipeline_value(request.guidance_scale)
                guidance = torch.full([1], value, device=device, dtype=torch.float32).expand(latents.shape[0])
            for i, t in enumerate(timesteps):
                slots = self.blank_slots(latents)
                if control is not None:
                    slots[1] = control
                noise_pred = transformer(
                    hidden_states=torch.cat([latents] + slots, dim=2),
                    timestep=t.expand(latents.shape[0]).to(latents.dtype) / 1000, guidance=guidance,
                    pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=image_ids,
                    joint_attention_kwargs=None, return_dict=False)[0]
                latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                if on_step is not None:
                    on_step(i + 1, steps, latents)
            latents = sampling._unpack_latents(latents, height, width, sampling.vae_scale_factor)
            latents = latents / vae.config.scaling_factor + vae.config.shift_factor
            image = vae.decode(latents, return_dict=False)[0]
            return sampling.image_processor.postprocess(image, output_type="np")
