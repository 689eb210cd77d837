"""Wan 2.1 text-to-video (1.3B and 14B): previews as ai-toolkit renders them, through Diffusers' `WanPipeline`.

What ai-toolkit 0.12.26 (27a03a91) does (`toolkit/models/wan21/wan21.py:Wan21`, `toolkit/models/base_model.py:
BaseModel.generate_images`), and so what this does:
- `load_model`: transformer, UMT5 encoder and Wan VAE each `.to(dtype)` after loading (so `_keep_in_fp32_modules`
  run in the sampling dtype too); `quantize_model` on the transformer (blocks first) when `quantize`, plain
  `quantize` + `freeze` of the UMT5 when `quantize_te` (the 1.3B preset quantizes only the text encoder);
- `get_generation_pipeline`: a stock `WanPipeline` (not `low_vram`'s `AggressiveWanUnloadPipeline`) over the loaded
  parts with the preview scheduler of the LoRA's ai-toolkit version (`samplers.py`: UniPC before 0.9.3, flow-match
  Euler shift 3 since);
- `get_prompt_embeds`: `pipeline.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=512)`
  for the prompt and for the negative (`""` included): UMT5 with its mask, trimmed to the real tokens and zero-padded
  to 512, in the sampling dtype;
- `generate_single_image`: `WanPipeline(prompt_embeds, negative_prompt_embeds, height, width, num_frames,
  num_inference_steps, guidance_scale, generator=torch.manual_seed(seed))`. The stock pipeline snaps the frame count
  to 4k+1 (the engine already did: `MediaSpec.snap_frames`), raises for sizes not divisible by 16 (here they are
  floored to 16 and the notes say so), draws fp32 noise `[1, 16, (F-1)//4+1, H/8, W/8]` on the CPU, keeps the
  latents in fp32 (cast per forward), runs cond and uncond as two separate transformer passes with
  `uncond + g * (cond - uncond)` when `g > 1`, and decodes with the VAE's latents mean/std; PIL frames = round(x*255).
- Prompt cleaning is Diffusers' `prompt_clean` (ftfy when installed: ai-toolkit's environment has it, through
  open_clip_torch): without ftfy a prompt with curly quotes or mojibake may encode differently, and the notes say so.

LoRA names: ai-toolkit saves Wan LoRAs with `convert_lora_weights_before_save` = `wan_lora_convert.py:
convert_to_original`: `diffusion_model.` + the original Wan names (`blocks.N.self_attn.q`, `cross_attn.o`, `ffn.0`,
`ffn.2` …; peft `lora_A`/`lora_B`, no alpha). Those, Diffusers paths (`transformer.blocks.N.attn1.to_q`) and kohya
`lora_unet_` names of either map onto the transformer (also the original non-block names musubi-style files use).
"""
from __future__ import annotations

import os

import torch

from ...errors import ModelSourceError
from ..base import Family
from ..common import from_source, prepare_components, quantize_components, step_callback_kwargs
from .samplers import preview_sampler
from .umt5 import UMT5_REPO, load_text_parts

MAX_SEQUENCE_LENGTH = 512  # Wan21.get_prompt_embeds
SIZE_MULTIPLE = 16         # WanPipeline.check_inputs

# Diffusers WanTransformer3DModel path piece -> the original Wan name (wan_lora_convert.py, Diffusers'
# `_convert_non_diffusers_wan_lora_to_diffusers` for the non-block layers)
_BLOCK_PARTS = {"attn1": "self_attn", "attn2": "cross_attn", "to_q": "q", "to_k": "k", "to_v": "v",
                "to_out.0": "o", "add_k_proj": "k_img", "add_v_proj": "v_img", "ffn.net.0.proj": "ffn.0",
                "ffn.net.2": "ffn.2"}
_GLOBAL_NAMES = {"condition_embedder.text_embedder.linear_1": "text_embedding.0",
                 "condition_embedder.text_embedder.linear_2": "text_embedding.2",
                 "condition_embedder.time_embedder.linear_1": "time_embedding.0",
                 "condition_embedder.time_embedder.linear_2": "time_embedding.2",
                 "condition_embedder.time_proj": "time_projection.1", "proj_out": "head.head",
                 "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
                 "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3"}


def original_name(path: str) -> str | None:
    """The original Wan name of a Diffusers WanTransformer3DModel module path (None when it has no other name)."""
    if path in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[path]
    if not path.startswith("blocks."):
        return None
    renamed = f".{path}."
    for ours, theirs in _BLOCK_PARTS.items():
        renamed = renamed.replace(f".{ours}.", f".{theirs}.")
    renamed = renamed.strip(".")
    return renamed if renamed != path else None


def encode_wan(pipe, prompt: str, dtype):
    """`Wan21.get_prompt_embeds`: [1, 512, d] in `dtype`, the real tokens then zeros."""
    embeds, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False,
                                   max_sequence_length=MAX_SEQUENCE_LENGTH, device=pipe.text_encoder.device,
                                   dtype=dtype)
    return embeds


TEXT_PARTS = ("text_encoder/*", "tokenizer/*")  # of a Hub base: ai-toolkit reads them from UMT5_REPO


def text_parts(spec, source) -> dict:
    """The UMT5 encoder and tokenizer for `from_pretrained`, from where ai-toolkit reads them (`umt5.py`); none for a
    single-file base (its sidecar folder's own are used)."""
    if source.kind == "single_file":
        return {}
    try:
        return load_text_parts(source)
    except ModelSourceError as exc:
        raise ModelSourceError(f"{spec.label} reads its UMT5 text encoder and tokenizer from {UMT5_REPO}, as "
                               f"ai-toolkit does for a Hub base: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for unreadable models
        raise ModelSourceError(f"Could not load {spec.label}'s UMT5 text encoder and tokenizer from where "
                               f"ai-toolkit reads them ({type(exc).__name__}: {exc}).") from exc


def cfg_prediction(model, x, timestep, cond, uncond, guidance: float):
    """ai-toolkit's Wan22Pipeline step prediction: the cond pass, and above guidance 1 a separate uncond pass,
    combined as `uncond + g * (cond - uncond)`."""
    pred = model(hidden_states=x, timestep=timestep, encoder_hidden_states=cond, return_dict=False)[0]
    if guidance > 1.0:
        pred_u = model(hidden_states=x, timestep=timestep, encoder_hidden_states=uncond, return_dict=False)[0]
        pred = pred_u + guidance * (pred - pred_u)
    return pred


def floored_size(request, multiple: int, why: str) -> tuple[int, int, list]:
    """(width, height, notes) of a render: the request's size floored to `multiple` (`why` says whose rule, for the
    note when it changed anything), plus the ftfy note when it applies."""
    width, height = (side - side % multiple for side in (request.width, request.height))
    notes = []
    if (width, height) != (request.width, request.height):
        notes.append(f"size {request.width}x{request.height} floored to {width}x{height}: {why}")
    note = _ftfy_note(request.prompt, request.negative_prompt)
    if note:
        notes.append(note)
    return width, height, notes


def _ftfy_note(*texts) -> str | None:
    try:
        import ftfy  # noqa: F401
        return None
    except ImportError:
        pass
    if all(t.isascii() and "&" not in t for t in texts):
        return None  # ftfy.fix_text leaves plain ASCII without entities as it is
    return ("ftfy is not installed: ai-toolkit cleans Wan prompts with ftfy.fix_text, so this non-ASCII prompt may "
            "encode differently (pip install ftfy)")


class Wan21(Family):
    """Wan 2.1 T2V (`WanPipeline`, one transformer)."""
    lora_component_names = ("transformer",)
    pipeline_class = "WanPipeline"
    in_channels = 16  # T2V latents; I2V transformers take 36

    # ---- loading -------------------------------------------------------------------------------------------
    def load(self, spec, source, dtype, device, quantization=None):
        from diffusers import WanPipeline

        pipe = from_source(WanPipeline, spec, source, scheduler=self.scheduler(spec), hub_skip=TEXT_PARTS,
                           **text_parts(spec, source))
        label = os.path.basename(source.location)
        if pipe.transformer is None:
            raise ModelSourceError(f"{label} has no transformer/ (a Wan 2.2 expert pair?); it is not {spec.label}.")
        channels = pipe.transformer.config.in_channels
        if channels != self.in_channels:
            raise ModelSourceError(f"{label}: its transformer takes {channels} input channels, not {spec.label}'s "
                                   f"{self.in_channels}" + (" (36 is an image-to-video model)." if channels == 36
                                                            else "; pick the model it is."))
        if getattr(pipe, "transformer_2", None) is not None:
            raise ModelSourceError(f"{label} holds two transformers (a Wan 2.2 A14B expert pair); it is not "
                                   f"{spec.label}.")
        prepare_components(pipe, label, spec, dtype, device)
        quantize_components(pipe, spec, quantization, dtype)
        return pipe

    def module_names(self, spec, component, module):
        names = super().module_names(spec, component, module)
        for path in list(names):
            other = original_name(path)
            if other:
                names.setdefault(other, names[path])
        return names

    # ---- sampling ------------------------------------------------------------------------------------------
    def sampler_for(self, spec, loras, sampler=None):
        return preview_sampler(spec, loras, sampler)

    def sampling_pipeline(self, spec, pipe, sampler):
        from diffusers import WanPipeline

        sampling = WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                               transformer=pipe.transformer, scheduler=self.scheduler(spec, sampler))
        sampling.set_progress_bar_config(disable=True)
        return sampling

    def generate(self, spec, pipe, request, sampler=None, on_step=None):
        from ...request import Render

        sampling = self.sampling_pipeline(spec, pipe, sampler)
        width, height, notes = floored_size(request, SIZE_MULTIPLE, "ai-toolkit's WanPipeline refuses sizes that "
                                            "are not multiples of 16 (its preview fails there)")
        dtype = pipe.vae.dtype  # the sampling dtype (ai-toolkit's torch_dtype; the VAE is never quantized)
        with torch.no_grad():
            embeds = encode_wan(sampling, request.prompt, dtype)
            negative = encode_wan(sampling, request.negative_prompt or "", dtype)
            video = sampling(prompt_embeds=embeds, negative_prompt_embeds=negative, height=height, width=width,
                             num_frames=request.num_frames, num_inference_steps=request.steps,
                             guidance_scale=spec.guidance.pipeline_value(request.guidance_scale),
                             generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np",
                             return_dict=False, **step_callback_kwargs(request.steps, on_step))[0]
        return Render(frames=video[0], fps=float(request.fps), notes=tuple(notes))


from .i2v21 import Wan21I2V  # noqa: E402  (at the bottom: they subclass Wan21)
from .ti2v5b import Wan225b  # noqa: E402
from .wan22 import Wan22I2V, Wan22T2V  # noqa: E402

VARIANTS = {"": Wan21, "i2v21": Wan21I2V, "ti2v5b": Wan225b, "wan22_t2v": Wan22T2V, "wan22_i2v": Wan22I2V}
