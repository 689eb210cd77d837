"""Wan 2.2 A14B text-to-video and image-to-video: the high/low-noise expert pair, as ai-toolkit previews it.

What ai-toolkit 0.12.26 (27a03a91) does (`extensions_built_in/diffusion_models/wan22/wan22_14b_model.py:
Wan2214bModel`, `wan22_14b_i2v_model.py:Wan2214bI2VModel`, `wan22_pipeline.py:Wan22Pipeline`,
`toolkit/models/wan21/wan_utils.py:add_first_frame_conditioning`), and so what this does:
- two `WanTransformer3DModel`s, `transformer` (ai-toolkit's `transformer_1`, the high-noise expert) and
  `transformer_2` (low noise), each `.to(dtype)`, and with `quantize` each quantized on its own (`quantize_model`:
  blocks first, `condition_embedder*` / `proj_out*` kept in full precision); UMT5 and VAE as for Wan 2.1;
- the preview loop is `Wan22Pipeline.__call__`, written out here (the stock `WanPipeline` has no 36-channel
  first-frame input, and Diffusers' `WanImageToVideoPipeline` switches experts at the folder's 0.9): the frame count
  snapped to 4k+1, the size floored to `2 * vae scale` = 16 (silently, where Wan 2.1's pipeline raises), fp32 noise
  `[1, 16, …]` from the CPU generator `torch.manual_seed(seed)`, per step `t >= 0.875 * 1000` (the hard-coded
  `boundary_ratio_t2v`, for I2V too; the folder's `boundary_ratio` is not read) runs `transformer`, else
  `transformer_2`, with one guidance scale for both (`guidance_scale_2 = guidance_scale`), cond and uncond as two
  separate passes (`uncond + g * (cond - uncond)` when g > 1), the scheduler stepped on the latents, then
  `latents = pre * (1 - mask) + latents * mask` with a mask of ones; decode as Wan 2.1;
- the sampler by the LoRA's ai-toolkit version (`samplers.py`): flow-match Euler shift 5 since 0.9.3, UniPC
  (`wan22_14b_model.py:scheduler_configUniPC`, flow_shift 3.0) before;
- I2V (`Wan2214bI2VModel.generate_single_image`): the control image resized to the 16-floored size with LANCZOS,
  `to_tensor * 2 - 1` in the sampling dtype; the noise drawn first and cast to the sampling dtype; then
  `add_first_frame_conditioning`: the first frame (bilinear to the latent size × 8) and F-1 zero frames VAE-encoded
  with `latent_dist.sample()` — the global generator, so on the CPU the same stream right after the noise, on CUDA
  the CUDA generator `generate_images` seeded with the same seed — normalised `(z - mean) / std`, a 4-channel mask
  (frame 0 repeated 4× in time), `cat([noise, mask, condition])` = 36 channels; the pipeline keeps the 20
  conditioning channels and re-concatenates them to the (fp32) latents every forward. No CLIP image encoder.

The expert pair (`lora_plan`): ai-toolkit saves `<name>_high_noise.safetensors` (transformer_1) and
`<name>_low_noise.safetensors` (transformer_2), both with plain `diffusion_model.blocks.…` keys; its `load_lora`,
given either file, loads both; with `train_low_noise` off only `_high_noise` exists and the low-noise expert
previews on the base. `network.split_multistage_loras: false` writes one file with `diffusion_model.transformer_1.` /
`diffusion_model.transformer_2.` keys. The roles: "high" / "low" = the plain Wan names (`families/wan`) on one
transformer, "combined" = the pair-prefixed names split between them.
"""
from __future__ import annotations

import os
from types import MappingProxyType

import numpy as np
import torch

from ...errors import LoraError, ModelSourceError
from ...lora.aliases import prefixed_index
from ...lora.files import pair_stage, read_header
from ...spec import LoraLayout
from ..base import LoraPart, LoraPlan
from ..common import from_source, prepare_components, quantize_components
from . import TEXT_PARTS, Wan21, cfg_prediction, encode_wan, floored_size, text_parts
from .decode import decode_latents, load_wan21_vae

BOUNDARY_RATIO = 0.875  # wan22_14b_model.py:boundary_ratio_t2v, used for T2V and I2V alike
HIGH, LOW = "transformer", "transformer_2"
EXPERT_LABELS = MappingProxyType({HIGH: "high-noise expert (transformer, t >= 875)",
                                  LOW: "low-noise expert (transformer_2, t < 875)"})
ROLES = MappingProxyType({"high": HIGH, "low": LOW})


def _layout(component: str) -> LoraLayout:
    """One expert's file: ai-toolkit's `diffusion_model.` names, Diffusers' `transformer.` paths, kohya names."""
    return LoraLayout(kohya_prefixes=MappingProxyType({"lora_unet": component}),
                      peft_prefixes=MappingProxyType({"diffusion_model": component, "transformer": component}))


# a combined file (split_multistage_loras false): ai-toolkit's DualWanTransformer3DModel names, or Diffusers'
# component names of the pipeline (`transformer.` / `transformer_2.`)
COMBINED = LoraLayout(
    kohya_prefixes=MappingProxyType({"lora_unet_transformer_1": HIGH, "lora_unet_transformer_2": LOW}),
    peft_prefixes=MappingProxyType({"diffusion_model.transformer_1": HIGH, "diffusion_model.transformer_2": LOW,
                                    "transformer": HIGH, "transformer_2": LOW}))
_COMBINED_MARKS = ("diffusion_model.transformer_1.", "diffusion_model.transformer_2.", "transformer_2.",
                   "lora_unet_transformer_1_", "lora_unet_transformer_2_")


def is_combined(keys) -> bool:
    """A file holding both experts (`diffusion_model.transformer_1.` / `transformer_2.` keys)."""
    return any(k.startswith(_COMBINED_MARKS) for k in keys)


class Wan22T2V(Wan21):
    """Wan 2.2 T2V-A14B: `transformer` (high noise) + `transformer_2` (low noise), ai-toolkit's Wan22Pipeline."""
    lora_component_names = (HIGH, LOW)
    in_channels = 16

    # ---- loading -------------------------------------------------------------------------------------------
    def load(self, spec, source, dtype, device, quantization=None):
        import diffusers

        # Wan21.load_model: the UMT5 from where ai-toolkit reads it, and (`_wan_vae_path`) the Wan 2.1 VAE repo
        pipe = from_source(getattr(diffusers, spec.pipeline_class), spec, source, scheduler=self.scheduler(spec),
                           hub_skip=TEXT_PARTS + ("vae/*",), vae=load_wan21_vae(spec), **text_parts(spec, source))
        label = os.path.basename(source.location)
        for name in (HIGH, LOW):
            model = getattr(pipe, name, None)
            if model is None:
                raise ModelSourceError(f"{label} has no {name}/: {spec.label} is a pair of experts (transformer/ "
                                       "and transformer_2/); a single-transformer Wan is another model id.")
            channels = model.config.in_channels
            if channels != self.in_channels:
                raise ModelSourceError(f"{label}: its {name} takes {channels} input channels, not {spec.label}'s "
                                       f"{self.in_channels}; pick the model it is.")
        prepare_components(pipe, label, spec, dtype, device)
        quantize_components(pipe, spec, quantization, dtype)
        return pipe

    # ---- LoRA: the expert pair -----------------------------------------------------------------------------
    def lora_index(self, spec, components, role=None):
        if role in ROLES:
            comp = ROLES[role]
            return prefixed_index({comp: self.module_names(spec, comp, components[comp])}, _layout(comp))
        if role == "combined":
            names = {c: self.module_names(spec, c, m) for c, m in components.items()}
            return prefixed_index(names, COMBINED)
        raise LoraError(f"{spec.label}: no LoRA role {role!r} (the expert pair has high, low and combined).")

    def lora_plan(self, spec, path, expert="auto"):
        name = os.path.basename(path)
        stage, sibling = pair_stage(path)
        combined = stage is None and is_combined(read_header(path)[0])
        if combined:
            if expert != "auto":
                raise LoraError(f"{name} holds both experts (diffusion_model.transformer_1. / transformer_2. keys, "
                                f"split_multistage_loras off): expert {expert!r} cannot pick one of them. Set expert "
                                "to auto, which splits it between the experts as ai-toolkit does.")
            return LoraPlan((LoraPart(path, "combined", "both experts, split by its transformer_1/transformer_2 "
                                                         "keys (transformer = high noise, transformer_2 = low)"),))
        if expert == "both":
            return LoraPlan(tuple(LoraPart(path, role, EXPERT_LABELS[ROLES[role]]) for role in ROLES),
                            ("expert both: the same file on both experts",))
        if expert in ROLES:
            note = (f"expert {expert}: only this file, only the {expert}-noise expert (the pair's other file is not "
                    "loaded here; chain it with its own node)")
            return LoraPlan((LoraPart(path, expert, EXPERT_LABELS[ROLES[expert]]),), (note,))
        if stage is None:
            raise LoraError(f"{name} is neither one file of an expert pair (…_high_noise / …_low_noise.safetensors) "
                            "nor a combined file (transformer_1 / transformer_2 keys), so auto cannot tell which "
                            f"expert of {spec.label} it was trained for. Set expert to high (a run with "
                            "train_low_noise off), low, or both.")
        other = "low" if stage == "high" else "high"
        own = LoraPart(path, stage, EXPERT_LABELS[ROLES[stage]])
        if os.path.isfile(sibling):
            pair = LoraPart(sibling, other, EXPERT_LABELS[ROLES[other]])
            parts = (own, pair) if stage == "high" else (pair, own)
            return LoraPlan(parts, (f"expert auto: {name} brought {os.path.basename(sibling)} (its pair's other "
                                    f"file) to the {other}-noise expert, as ai-toolkit's load_lora does",))
        missing = (f"{os.path.basename(sibling)} (the pair's {other}-noise file) is not beside {name}: the "
                   f"{other}-noise expert ({ROLES[other]}) renders on the base model, as ai-toolkit's previews do "
                   f"when that file was never written (train_{other}_noise off)")
        return LoraPlan((own,), (missing,))

    # ---- sampling ------------------------------------------------------------------------------------------
    def sampling_pipeline(self, spec, pipe, sampler):
        from diffusers import WanPipeline

        sampling = WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                               transformer=pipe.transformer, transformer_2=pipe.transformer_2,
                               scheduler=self.scheduler(spec, sampler), boundary_ratio=BOUNDARY_RATIO)
        sampling.set_progress_bar_config(disable=True)
        return sampling

    def conditioning(self, sampling, request, latents, width, height, generator):
        """(latents, conditioning channels or None) for the loop; T2V: the noise as drawn, no conditioning."""
        return latents, None

    def generate(self, spec, pipe, request, sampler=None, on_step=None):
        from ...request import Render

        sampling = self.sampling_pipeline(spec, pipe, sampler)
        div = sampling.vae.config.scale_factor_spatial * 2  # Wan22Pipeline: twice the VAE factor (16)
        width, height, notes = floored_size(request, div, f"as ai-toolkit's Wan22Pipeline floors to multiples of "
                                                          f"{div}")
        dtype = pipe.vae.dtype
        device = pipe.vae.device
        guidance = spec.guidance.pipeline_value(request.guidance_scale)
        frames = request.num_frames
        with torch.no_grad():
            cond = encode_wan(sampling, request.prompt, dtype)
            uncond = encode_wan(sampling, request.negative_prompt or "", dtype)
            generator = torch.Generator("cpu").manual_seed(request.seed)
            noise = sampling.prepare_latents(1, 16, height, width, frames, torch.float32, device, generator)
            latents, conditioning = self.conditioning(sampling, request, noise, width, height, generator)
            latents = self.denoise(sampling, latents, conditioning, cond, uncond, guidance, request.steps,
                                   on_step)
            video = decode_latents(sampling.vae, latents, tiled=self.options(spec, request).vae_tiling)
            video = sampling.video_processor.postprocess_video(video, output_type="np")[0]
        return Render(frames=video, fps=float(request.fps), notes=tuple(notes))

    def denoise(self, sampling, latents, conditioning, cond, uncond, guidance, steps, on_step):
        """`Wan22Pipeline.__call__`'s loop (batch 1, `expand_timesteps` off)."""
        high, low, scheduler = sampling.transformer, sampling.transformer_2, sampling.scheduler
        model_dtype = high.dtype
        device = latents.device
        cond, uncond = cond.to(device, model_dtype), uncond.to(device, model_dtype)
        scheduler.set_timesteps(steps, device=device)
        boundary = BOUNDARY_RATIO * scheduler.config.num_train_timesteps
        mask = torch.ones(latents.shape, dtype=torch.float32, device=device)
        for i, t in enumerate(scheduler.timesteps):
            model = high if t >= boundary else low
            x = latents.to(device, model_dtype)
            timestep = t.expand(latents.shape[0])
            pre = x.clone()
            if conditioning is not None:
                x = torch.cat([x, conditioning], dim=1)
            pred = cfg_prediction(model, x, timestep, cond, uncond, guidance)
            latents = scheduler.step(pred, t, latents, return_dict=False)[0]
            latents = pre * (1 - mask) + latents * mask
            if on_step is not None:
                on_step(i + 1, steps, latents)
        return latents


class Wan22I2V(Wan22T2V):
    """Wan 2.2 I2V-A14B: 36-channel experts, the control image as ai-toolkit's first-frame conditioning."""
    in_channels = 36

    def conditioning(self, sampling, request, latents, width, height, generator):
        """`Wan2214bI2VModel.generate_single_image` + `add_first_frame_conditioning`: (fp32 latents = the noise
        rounded to the sampling dtype, the 20 conditioning channels in the sampling dtype)."""
        from PIL import Image

        vae = sampling.vae
        dtype, device = vae.dtype, latents.device
        image = request.controls[0].convert("RGB").resize((width, height), Image.LANCZOS)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)  # TF.to_tensor
        first = pixels.unsqueeze(0).to(device, dtype=dtype) * 2.0 - 1.0
        noise = latents.to(dtype)  # generate_single_image: prepare_latents(...).to(self.torch_dtype)
        frames = (noise.shape[2] - 1) * 4 + 1
        scale = vae.config.scale_factor_spatial
        first = torch.nn.functional.interpolate(first, size=(noise.shape[3] * scale, noise.shape[4] * scale),
                                                mode="bilinear", align_corners=False).unsqueeze(2)
        video = torch.cat([first, *[torch.zeros_like(first)] * (frames - 1)], dim=2)
        # latent_dist.sample() with no generator: the global one, which generate_images seeded with the seed (on
        # the CPU the noise came from it just before; on CUDA it is the CUDA generator, untouched since)
        sample_gen = generator if device.type == "cpu" else torch.Generator(device).manual_seed(request.seed)
        z = vae.encode(video.to(device, dtype)).latent_dist.sample(generator=sample_gen).to(device, dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(device, dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(device, dtype)
        z = (z - mean) * inv_std
        temporal = 2 ** sum(vae.temperal_downsample)
        h, w = z.shape[3], z.shape[4]
        mask = torch.ones(1, 1, frames, h, w)
        mask[:, :, 1:] = 0
        mask = torch.cat([torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=temporal), mask[:, :, 1:]], dim=2)
        mask = mask.view(1, -1, temporal, h, w).transpose(1, 2).to(device, dtype)
        conditioning = torch.cat([mask, z], dim=1)
        return noise.to(device, torch.float32), conditioning


