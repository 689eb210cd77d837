"""LTX-2 and LTX-2.3 text- and image-to-video with audio: previews as ai-toolkit renders them, through Diffusers'
`LTX2Pipeline` (no control image) or `LTX2ImageToVideoPipeline` (a control image: ai-toolkit's `ctrl_img`).

What ai-toolkit 0.12.26 (27a03a91) does (`extensions_built_in/diffusion_models/ltx2/ltx2.py:LTX2Model`,
`LTX23Model`; `toolkit/models/base_model.py:BaseModel.generate_images`), and so what this does:
- `load_model`: transformer, Gemma 3 (`vision_tower` dropped), video VAE, audio VAE, connectors and vocoder
  (`LTX2Vocoder`; `LTX2VocoderWithBWE` for 2.3) in the sampling dtype, from a Diffusers folder or from one
  original-layout `.safetensors` (the 2.3 preset's `ltx-2.3-22b-dev.safetensors`, with the Gemma 3 of its
  `ltx_te_path`: `single_file.py`); the transformer quantized blocks first when `quantize`, the Gemma 3 with plain
  `quantize` when `quantize_te`;
- `get_generation_pipeline`: a stock `LTX2Pipeline` over those parts with a fresh
  `CustomFlowMatchEulerDiscreteScheduler(**scheduler_config)` (the registry's config: dynamic shift from the
  packed video token count, sigmas `linspace(1, 1/N, N)`);
- `get_prompt_embeds`: Gemma tokenizer with left padding, `padding="longest"`, max 1024, `<bos>` added, the
  prompt stripped; every hidden state stacked on the last dim and flattened, cast to the sampling dtype; then
  `pad_embeds` left-pads the embeddings with zeros (mask 0) to 1024 tokens, and `PromptEmbeds.to(dtype)` casts the
  attention mask to the sampling dtype too (it changes the connectors' masked mean in bf16);
- `generate_single_image`: size floored to 32, frames to `((n-1)//8)*8+1` (the engine snapped them:
  `MediaSpec.snap_offset`), `pipeline(prompt_embeds, prompt_attention_mask, negative…, height, width,
  num_inference_steps, guidance_scale, num_frames, generator=torch.manual_seed(seed), output_type="np")`.
  `frame_rate` is never passed: the pipeline's 24 sets the RoPE positions and the audio length, and the sample's
  fps only sets the mp4's rate. 2.0 passes nothing else, so the pipeline's defaults hold (STG 1 on block 28,
  modality 3, rescale 0.7, audio guidance 7 / STG 1 / modality 3, cross timesteps); 2.3 sets the same values
  explicitly plus `audio_guidance_rescale` 0.7 (`LTX2_3_GUIDANCE`). Noise: the fp32 video latents, then the audio
  latents, from the one CPU generator. With a `ctrl_img`, `LTX2ImageToVideoPipeline` over the same parts and
  scheduler, the image `convert("RGB")` and LANCZOS-resized to the floored size, passed as `image` and nothing else:
  so the pipeline's `image_crf` default (33 for a Gemma 3 encoder) re-encodes it as one H.264 frame through PyAV
  (`av`, checked before anything runs) before its VAE encode. The video is `round(x*255)`; the audio
  `audio[0].float()` [2, T] at `vocoder.config.output_sampling_rate`, which ai-toolkit writes into the mp4 (int16
  AAC). One frame: an image, no audio. With `low_vram` (both presets) the VAE decodes framewise (`decode.py`).

LoRA names: `diffusion_model.transformer_blocks.N.<Diffusers path>` (`convert_lora_diffusers_to_original` is an
identity on the block Linears), peft `lora_A`/`lora_B`, no alpha; merged at the node's strength on the first run.
Layers outside the blocks (a file trained without `transformer_only`) are also found under the original names that
function writes (`proj_in` -> `patchify_proj`, `time_embed.` -> `adaln_single.` …, `ORIGINAL_NAMES`).
"""
from __future__ import annotations

import os

import torch

from ...errors import ControlImageError, ModelSourceError
from ...sources import hub_file, single_file_config_dir
from ..base import Family
from ..common import from_source, prepare_components, quantize_components, step_callback_kwargs
from . import single_file
from .decode import framewise_decoding

MAX_TOKENS = 1024   # get_prompt_embeds max_length, pad_embeds target_length
SIZE_MULTIPLE = 32  # LTX2Model.get_bucket_divisibility
PIPELINE_FPS = 24.0  # LTX2Pipeline.__call__'s frame_rate default (ai-toolkit never passes one)
# LTX2Model.generate_single_image for ltx_version 2.3/2.5, as written there
# convert_ltx2_to_diffusers.py:LTX_2_0_TRANSFORMER_KEYS_RENAME_DICT (original -> Diffusers), inverted by
# convert_lora_diffusers_to_original when ai-toolkit saves a LoRA (2.3 adds the prompt_adaln pair)
ORIGINAL_NAMES = {"patchify_proj": "proj_in", "audio_patchify_proj": "audio_proj_in",
                  "av_ca_video_scale_shift_adaln_single": "av_cross_attn_video_scale_shift",
                  "av_ca_a2v_gate_adaln_single": "av_cross_attn_video_a2v_gate",
                  "av_ca_audio_scale_shift_adaln_single": "av_cross_attn_audio_scale_shift",
                  "av_ca_v2a_gate_adaln_single": "av_cross_attn_audio_v2a_gate",
                  "scale_shift_table_a2v_ca_video": "video_a2v_cross_attn_scale_shift_table",
                  "scale_shift_table_a2v_ca_audio": "audio_a2v_cross_attn_scale_shift_table",
                  "q_norm": "norm_q", "k_norm": "norm_k"}
ORIGINAL_NAMES_2_3 = {**ORIGINAL_NAMES, "audio_prompt_adaln_single": "audio_prompt_adaln",
                      "prompt_adaln_single": "prompt_adaln"}


def original_name(path: str, names=ORIGINAL_NAMES) -> str:
    """`convert_lora_diffusers_to_original` of one Diffusers module path: the time-embedding prefixes, then every
    inverse rename, longest Diffusers name first (as written there)."""
    if path.startswith("time_embed."):
        path = path.replace("time_embed.", "adaln_single.", 1)
    elif path.startswith("audio_time_embed."):
        path = path.replace("audio_time_embed.", "audio_adaln_single.", 1)
    for ours, theirs in sorted(((v, k) for k, v in names.items()), key=lambda kv: len(kv[0]), reverse=True):
        path = path.replace(ours, theirs)
    return path


LTX2_3_GUIDANCE = dict(stg_scale=1.0, modality_scale=3.0, guidance_rescale=0.7, audio_guidance_scale=7.0,
                       audio_stg_scale=1.0, audio_modality_scale=3.0, audio_guidance_rescale=0.7,
                       spatio_temporal_guidance_blocks=[28], use_cross_timestep=True)


# LTX2ImageToVideoPipeline's image_crf default for a Gemma 3 text encoder (utils.DEFAULT_IMAGE_CRF; ai-toolkit passes
# no image_crf, so the condition image takes an H.264 round trip through PyAV before its VAE encode)
I2V_IMAGE_CRF = 33
AV_MISSING = ("LTX-2 image-to-video needs the av package (PyAV): ai-toolkit's LTX2ImageToVideoPipeline re-encodes the "
              "control image with H.264 (CRF 33) before encoding it, and the preview depends on that. ComfyUI "
              "installs it; elsewhere `pip install av`, then restart ComfyUI. Or disconnect control_image for the "
              "text-to-video preview.")


def require_av():
    """PyAV, imported lazily; a ControlImageError saying how to install it when it is missing."""
    try:
        import av  # noqa: F401
    except ImportError as exc:
        raise ControlImageError(AV_MISSING) from exc


def encode_ltx2(pipe, prompt: str, dtype):
    """`LTX2Model.get_prompt_embeds` + `pad_embeds` + `PromptEmbeds.to(dtype)`: (embeds [1, 1024, D*L],
    mask [1, 1024]) in `dtype`, the real tokens right-aligned after zeros."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokens = tokenizer([prompt.strip()], padding="longest", max_length=MAX_TOKENS, truncation=True,
                       add_special_tokens=True, return_tensors="pt")
    device = encoder.device
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    hidden = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    embeds = torch.stack(hidden, dim=-1).flatten(2, 3).to(dtype=dtype)
    pad = MAX_TOKENS - embeds.shape[1]
    if pad > 0:
        embeds = torch.cat([embeds.new_zeros(embeds.shape[0], pad, embeds.shape[2]), embeds], dim=1)
        mask = torch.cat([mask.new_zeros(mask.shape[0], pad), mask], dim=1)
    return embeds, mask.to(dtype)


class LTX2(Family):
    """LTX-2.0 (`LTX2Pipeline`, the pipeline's own guidance defaults)."""
    lora_component_names = ("transformer",)
    vocoder_class = "LTX2Vocoder"
    #: the file base "default" loads from the registry repo (None: the repo is a Diffusers folder, as LTX-2's)
    hub_checkpoint: str | None = None
    #: where ai-toolkit reads the Gemma 3 for a single file without one beside it (2.0: the combined repo's
    #: text_encoder/ + tokenizer/ folders, as its `name_or_path` fallback; 2.3: `ltx_te_path`, a transformers repo)
    te_repo = "Lightricks/LTX-2"
    te_repo_subfolders = True
    #: the guidance arguments ai-toolkit passes besides guidance_scale (2.0: none)
    guidance_values: dict = {}
    original_names = ORIGINAL_NAMES

    # ---- loading -------------------------------------------------------------------------------------------
    def load(self, spec, source, dtype, device, quantization=None):
        if source.kind == "single_file" or (source.kind == "hub" and self.hub_checkpoint):
            pipe = self._from_checkpoint(spec, source)
        else:
            pipe = self._from_folder(spec, source)
        label = os.path.basename(source.location)
        vocoder = type(pipe.vocoder).__name__
        if vocoder != self.vocoder_class:
            raise ModelSourceError(f"{label}: its vocoder is {vocoder}, but {spec.label} uses {self.vocoder_class} "
                                   "(LTX-2.0: LTX2Vocoder, LTX-2.3: LTX2VocoderWithBWE); pick the model it is.")
        if getattr(pipe.text_encoder, "model", None) is not None and hasattr(pipe.text_encoder.model,
                                                                              "vision_tower"):
            pipe.text_encoder.model.vision_tower = None  # ai-toolkit drops it (text only)
        prepare_components(pipe, label, spec, dtype, device)
        quantize_components(pipe, spec, quantization, dtype)
        return pipe

    def _from_folder(self, spec, source):
        from diffusers import LTX2Pipeline

        pipe = from_source(LTX2Pipeline, spec, source, scheduler=self.scheduler(spec))
        missing = [n for n in ("transformer", "text_encoder", "tokenizer", "vae", "audio_vae", "connectors",
                               "vocoder") if getattr(pipe, n, None) is None]
        if missing:
            raise ModelSourceError(f"{os.path.basename(source.location)} has no {', '.join(missing)}: it is not a "
                                   f"complete {spec.label} model.")
        return pipe

    def _from_checkpoint(self, spec, source):
        """ai-toolkit's `.safetensors` `name_or_path` (`single_file.py`): a file under checkpoints/, or for base
        "default" the preset's file in the registry repo (`hub_checkpoint`, from the HF cache)."""
        from diffusers import LTX2Pipeline

        if source.kind == "hub":
            path = hub_file(source.location, self.hub_checkpoint)
            config_dir = single_file_config_dir(spec, path)
        else:
            path, config_dir = source.location, source.config_dir
        parts = single_file.load_parts(path, config_dir, spec.variant, self.original_names, self.vocoder_class,
                                       spec.label)
        text_encoder, tokenizer = single_file.load_text_parts(config_dir, self.te_repo, self.te_repo_subfolders,
                                                              os.path.basename(path))
        return LTX2Pipeline(scheduler=self.scheduler(spec), text_encoder=text_encoder, tokenizer=tokenizer, **parts)

    def module_names(self, spec, component, module):
        names = super().module_names(spec, component, module)
        for path in list(names):
            other = original_name(path, self.original_names)
            if other != path:
                names.setdefault(other, names[path])
        return names

    # ---- sampling ------------------------------------------------------------------------------------------
    def sampling_pipeline(self, spec, pipe, sampler, image_to_video: bool = False):
        """A stock `LTX2Pipeline` (text-to-video) or, for a control image, `LTX2ImageToVideoPipeline` over the
        loaded parts with a fresh scheduler, as `get_generation_pipeline` + `generate_single_image` build them."""
        from diffusers import LTX2ImageToVideoPipeline, LTX2Pipeline

        cls = LTX2ImageToVideoPipeline if image_to_video else LTX2Pipeline
        sampling = cls(scheduler=self.scheduler(spec, sampler), vae=pipe.vae, audio_vae=pipe.audio_vae,
                       text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, connectors=pipe.connectors,
                       transformer=pipe.transformer, vocoder=pipe.vocoder)
        sampling.set_progress_bar_config(disable=True)
        return sampling

    def generate(self, spec, pipe, request, sampler=None, on_step=None):
        from ...request import Audio, Render

        image = request.controls[0] if request.controls else None
        if image is not None:
            require_av()  # before anything runs: the pipeline re-encodes the image with H.264 (image_crf default)
        sampling = self.sampling_pipeline(spec, pipe, sampler, image_to_video=image is not None)
        width, height = (side - side % SIZE_MULTIPLE for side in (request.width, request.height))
        notes = []
        if (width, height) != (request.width, request.height):
            notes.append(f"size {request.width}x{request.height} floored to {width}x{height} (ai-toolkit floors "
                         f"LTX-2 sizes to multiples of {SIZE_MULTIPLE})")
        extra = {}
        if image is not None:  # generate_single_image: Image.open(ctrl_img).convert("RGB").resize(LANCZOS)
            from PIL import Image

            extra["image"] = image.convert("RGB").resize((width, height), Image.LANCZOS)
            notes.append(f"image-to-video: the control image is the first frame (resized to {width}x{height} with "
                         f"LANCZOS, then H.264-re-encoded at CRF {I2V_IMAGE_CRF} by LTX2ImageToVideoPipeline)")
        frames = request.num_frames
        dtype = pipe.vae.dtype  # the sampling dtype (the VAE is never quantized)
        with torch.no_grad(), framewise_decoding(pipe.vae, self.options(spec, request).low_vram):
            embeds, mask = encode_ltx2(sampling, request.prompt, dtype)
            negative, negative_mask = encode_ltx2(sampling, request.negative_prompt or "", dtype)
            video, audio = sampling(
                prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=negative,
                negative_prompt_attention_mask=negative_mask, height=height, width=width,
                num_inference_steps=request.steps, guidance_scale=spec.guidance.pipeline_value(request.guidance_scale),
                num_frames=frames, generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np",
                return_dict=False, **extra, **self.guidance_values, **step_callback_kwargs(request.steps, on_step))
        if frames == 1:  # ai-toolkit: output_type "pil", the first image, no audio (saved as a jpg)
            return Render(frames=video[0][:1], notes=tuple(notes))
        if request.fps != PIPELINE_FPS:
            notes.append(f"fps {request.fps:g} sets the video's frame rate only: ai-toolkit's LTX-2 preview always "
                         f"samples at the pipeline's {PIPELINE_FPS:g} (positions and audio length)")
        waveform = audio[0].float().cpu().numpy()
        return Render(frames=video[0], fps=float(request.fps),
                      audio=Audio(waveform, int(sampling.vocoder.config.output_sampling_rate)), notes=tuple(notes))

    def preview_latents(self, spec, latents, request):
        """The packed video tokens [B, F*h*w, C] → the middle latent frame [C, h, w] (patch size 1)."""
        if latents is None or latents.ndim != 3 or request is None:
            return super().preview_latents(spec, latents, request)
        frames = (request.num_frames - 1) // 8 + 1
        h, w = request.height // SIZE_MULTIPLE, request.width // SIZE_MULTIPLE
        if latents.shape[1] != frames * h * w:
            return None
        grid = latents[0].reshape(frames, h, w, latents.shape[2])
        return grid[frames // 2].permute(2, 0, 1)


class LTX23(LTX2):
    """LTX-2.3 (`LTX23Model`): the bandwidth-extension vocoder and ai-toolkit's explicit guidance values."""
    vocoder_class = "LTX2VocoderWithBWE"
    hub_checkpoint = "ltx-2.3-22b-dev.safetensors"  # the preset's name_or_path Lightricks/LTX-2.3/<this>
    te_repo = "Lightricks/gemma-3-12b-it-qat-q4_0-unquantized"  # LTX23Model.ltx_te_path
    te_repo_subfolders = False
    guidance_values = LTX2_3_GUIDANCE
    original_names = ORIGINAL_NAMES_2_3


VARIANTS = {"2.0": LTX2, "2.3": LTX23}
