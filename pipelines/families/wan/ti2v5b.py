"""Wan 2.2 TI2V 5B: previews as ai-toolkit renders them with its own `Wan22Pipeline` (per-token timesteps), text-to-
video or, with a control image, image-to-video.

What ai-toolkit 0.12.26 (27a03a91) does (`extensions_built_in/diffusion_models/wan22/wan22_5b_model.py:
Wan225bModel`, a `Wan21`; `wan22_pipeline.py:Wan22Pipeline`; `toolkit/models/wan21/wan_utils.py:
add_first_frame_conditioning_v22`), and so what this does (ai-toolkit's pipeline is not Diffusers', so its loop is
written out here over the Diffusers components):
- loading as `Wan21` (every part `.to(dtype)`; `quantize_model` with the exclusions `condition_embedder*`,
  `proj_out*`; the UMT5 quantized when `quantize_te`); `time_text_monkeypatch` replaces `condition_embedder.forward`,
  identical to Diffusers 0.42.1's for one video;
- `generate_single_image`: frames snapped to `(n-1)//4*4+1`. With a control image: the size floored to 32
  (`get_bucket_divisibility`), the image `convert("RGB").resize((w, h), LANCZOS)`, the noise
  `prepare_latents(1, 48, h, w, F, float32, generator)` = `randn([1, 48, (F-1)//4+1, h/16, w/16])` fp32 from the
  seeded CPU generator, **cast to the sampling dtype**; the frame `to_tensor` → sampling dtype → `*2-1`, bilinear
  `F.interpolate` to `(h, w)`, VAE-encoded with a **sample** (`latent_dist.sample()`: the global generator, so on
  the CPU the next draws of the seed's generator after the noise; on a GPU the device's own generator, fresh after
  `torch.manual_seed(seed)`), normalised `(z - mean) * (1/std)` in the sampling dtype, written into latent frame 0;
  the mask (sampling dtype) is 0 on frame 0, 1 elsewhere. Those latents go to the pipeline (which takes them back
  to fp32). Without a control image the pipeline draws the fp32 noise itself and the mask is all ones (fp32).
- `Wan22Pipeline.__call__` (`expand_timesteps=True`, `transformer_2` = the same model, no boundary): size floored
  to `2 * scale_factor_spatial` = 32; prompt and negative embeds (`Wan21.get_prompt_embeds`) in the transformer
  dtype; per step `timestep = (mask[0][0][:, ::2, ::2] * t).flatten()` per token (in the mask's dtype: bf16 with a
  control image when sampling bf16), the latents cast to the transformer dtype, cond and (guidance > 1) uncond as
  two passes, `uncond + g * (cond - uncond)`, the scheduler step on the fp32 latents, then
  `latents = pre * (1 - mask) + latents * mask` (`pre` = that step's input in the transformer dtype);
- decode: with `low_vram` (the UI preset turns it on) `use_vae_tiling`: `vae.enable_tiling()` around the pipeline
  call (after the first frame was encoded, so only the decode tiles: above 256 px a side), latents cast to the VAE
  dtype, `latents / (1/std) + mean`, decode, PIL frames. Option `vae_tiling` (default on, as the preset) turns it off.
"""
from __future__ import annotations

import os

import torch

from ...errors import ModelSourceError
from ..common import from_source, prepare_components, quantize_components
from . import TEXT_PARTS, Wan21, cfg_prediction, encode_wan, floored_size, text_parts
from .decode import WanVaeOptions, decode_latents

IN_CHANNELS = 48


Wan225bOptions = WanVaeOptions  # the registry entry's options (`decode.py`)


class Wan225b(Wan21):
    """Wan 2.2 TI2V 5B (ai-toolkit's `Wan22Pipeline` with `expand_timesteps`, one transformer, the Wan 2.2 VAE)."""
    pipeline_class = "WanPipeline"
    in_channels = IN_CHANNELS

    def load(self, spec, source, dtype, device, quantization=None):
        from diffusers import WanPipeline

        pipe = from_source(WanPipeline, spec, source, scheduler=self.scheduler(spec), hub_skip=TEXT_PARTS,
                           **text_parts(spec, source))
        label = os.path.basename(source.location)
        if pipe.transformer is None or getattr(pipe, "transformer_2", None) is not None:
            raise ModelSourceError(f"{label} is not {spec.label}: it has "
                                   + ("no transformer/" if pipe.transformer is None else "two transformers (a Wan "
                                      "2.2 A14B expert pair)") + ".")
        channels, z_dim = pipe.transformer.config.in_channels, pipe.vae.config.z_dim
        if channels != IN_CHANNELS or z_dim != IN_CHANNELS:
            raise ModelSourceError(f"{label}: its transformer takes {channels} channels and its VAE makes {z_dim}, "
                                   f"not {spec.label}'s 48 (the Wan 2.2 VAE); pick the model it is.")
        prepare_components(pipe, label, spec, dtype, device)
        quantize_components(pipe, spec, quantization, dtype)
        return pipe

    def sampling_pipeline(self, spec, pipe, sampler):
        from diffusers import WanPipeline

        sampling = WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                               transformer=pipe.transformer, scheduler=self.scheduler(spec, sampler))
        sampling.set_progress_bar_config(disable=True)
        return sampling

    # ---- sampling ------------------------------------------------------------------------------------------
    def first_frame_latents(self, pipe, image, noise, generator, seed, dtype):
        """`add_first_frame_conditioning_v22` on `noise` (already in the sampling dtype): (latents, mask)."""
        import numpy as np
        import torch.nn.functional as F

        vae = pipe.vae
        pixels = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).contiguous()
        frame = (pixels.to(torch.float32).div(255).unsqueeze(0).to(vae.device, dtype=dtype) * 2.0 - 1.0)
        _, _, frames, h, w = noise.shape
        scale = vae.config.scale_factor_spatial
        frame = F.interpolate(frame, size=(h * scale, w * scale), mode="bilinear", align_corners=False)
        if vae.device.type != "cpu":  # ai-toolkit's sample() draws from the device's global generator
            generator = torch.Generator(vae.device).manual_seed(seed)
        encoded = vae.encode(frame.unsqueeze(2)).latent_dist.sample(generator=generator).to(dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(noise.device, dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(noise.device, dtype)
        encoded = (encoded.to(noise.device) - mean) * inv_std
        latents = noise.clone()
        latents[:, :, : encoded.shape[2]] = encoded
        mask = torch.ones(1, 1, frames, h, w, device=noise.device, dtype=dtype)
        mask[:, :, : encoded.shape[2]] = 0.0
        return latents, mask

    def generate(self, spec, pipe, request, sampler=None, on_step=None):
        from ...request import Render

        multiple = pipe.vae.config.scale_factor_spatial * 2
        width, height, notes = floored_size(request, multiple, f"as ai-toolkit's Wan22Pipeline does (multiples of "
                                                               f"{multiple})")
        image = request.controls[0] if request.controls else None
        notes.append("image-to-video: the control image is the first frame" if image is not None
                     else "text-to-video (no control image)")
        options = self.options(spec, request)
        sampling = self.sampling_pipeline(spec, pipe, sampler)
        transformer, vae, scheduler = pipe.transformer, pipe.vae, sampling.scheduler
        dtype = vae.dtype  # the sampling dtype (ai-toolkit's torch_dtype; the VAE is never quantized)
        device = transformer.device
        frames = spec.media.snap_frames(request.num_frames)
        guidance = spec.guidance.pipeline_value(request.guidance_scale)
        generator = torch.Generator("cpu").manual_seed(request.seed)
        with torch.no_grad():
            embeds = encode_wan(sampling, request.prompt, dtype).to(device, transformer.dtype)
            negative = encode_wan(sampling, request.negative_prompt or "", dtype).to(device, transformer.dtype)
            shape = (1, IN_CHANNELS, (frames - 1) // 4 + 1, height // vae.config.scale_factor_spatial,
                     width // vae.config.scale_factor_spatial)
            from diffusers.utils.torch_utils import randn_tensor

            noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
            if image is not None:
                from PIL import Image

                image = image.convert("RGB").resize((width, height), Image.LANCZOS)
                noise, mask = self.first_frame_latents(pipe, image, noise.to(dtype), generator, request.seed, dtype)
            else:
                mask = torch.ones(noise.shape, dtype=torch.float32, device=device)
            latents = noise.to(device, torch.float32)
            scheduler.set_timesteps(request.steps, device=device)
            for i, t in enumerate(scheduler.timesteps):
                x = latents.to(device, transformer.dtype)
                timestep = (mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0)
                pred = cfg_prediction(transformer, x, timestep, embeds, negative, guidance)
                latents = scheduler.step(pred, t, latents, return_dict=False)[0]
                latents = x * (1 - mask) + latents * mask
                if on_step is not None:
                    on_step(i + 1, request.steps, latents)
            video = decode_latents(vae, latents, tiled=options.vae_tiling)
            video = sampling.video_processor.postprocess_video(video, output_type="np")
        return Render(frames=video[0], fps=float(request.fps), notes=tuple(notes))

