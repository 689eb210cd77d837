"""The three contract nodes: LoadAIToolkitPipeline → ApplyAIToolkitLoRA → AIToolkitSample.

Thin adapters: ComfyUI inputs → `pipelines` calls → ComfyUI types. No per-model branches; every default comes from
the registry. Errors from the library (`AitkError`) reach the user as the node's error message.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..pipelines import engine
from ..pipelines.errors import InputError
from ..pipelines.families.base import EXPERTS
from ..pipelines.lora.files import pair_siblings
from ..pipelines.registry import REGISTRY, model_ids
from ..pipelines.samplers import MATCH_TRAINING, all_sampler_names, sampler_names
from ..pipelines.spec import ControlSlot
from ..pipelines.sources import CHECKPOINT_EXTS, LORA_EXTS
from .comfy_bridge import check_interrupted, log, make_video, model_roots, show_text, step_callback
from .memory import comfy_device, make_room

PIPELINE_TYPE = "AITK_PIPELINE"
LORA_MODES = {"merged": "merge", "fp32 branch": "branch"}
CATEGORY = "AI Toolkit"
CONTROL_INPUTS = ("control_image", "control_image_2", "control_image_3")  # CONTRACT.md
_QUANT_PRESETS = ", ".join(f"{s.id} {s.quant.preset}" for s in REGISTRY.values() if s.quant.preset) or "none"
VIDEO_INPUTS = ("num_frames", "fps")  # CONTRACT.md
SILENCE_RATE, SILENCE_CHANNELS = 44100, 1  # the AUDIO output of models that make no audio
_VIDEO_DEFAULTS = "; ".join(f"{s.id} {s.media.default_frames} frames at {s.media.fps} fps"
                            for s in REGISTRY.values() if s.media.is_video) or "no video model yet"


def _check_handle(pipeline) -> None:
    if not isinstance(pipeline, engine.PipelineHandle):
        raise InputError(f"pipeline must come from LoadAIToolkitPipeline or ApplyAIToolkitLoRA, got "
                         f"{type(pipeline).__name__}.")


def _choice(label: str, value, choices: dict):
    """A combo value the node offers, checked here too: graphs sent through the API skip the UI's checks."""
    if value not in choices:
        raise InputError(f"Unknown {label} {value!r}; choose one of: {', '.join(choices)}.")
    return choices[value]


def base_choices() -> list[str]:
    roots = model_roots()
    return ["default"] + roots.list_diffusers() + roots.list_files("checkpoints", CHECKPOINT_EXTS)


def lora_choices() -> list[str]:
    return model_roots().list_files("loras", LORA_EXTS)


class LoadAIToolkitPipeline:
    DESCRIPTION = ("Loads a base model as ai-toolkit samples it (Diffusers pipeline, ai-toolkit's preview scheduler "
                   "and dtype). Loaded bases are cached and shared; LoRAs never change the cached base.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (PIPELINE_TYPE,)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ("A handle to the cached base model; connect it to ApplyAIToolkitLoRA or AIToolkitSample.",)

    @classmethod
    def INPUT_TYPES(cls):
        ids = model_ids()
        return {"required": {
            "model": (ids, {"default": "sdxl" if "sdxl" in ids else ids[0],
                            "tooltip": "The model family your LoRA was trained on (ai-toolkit's arch). Decides the "
                                       "pipeline, scheduler, sizes and defaults."}),
            "base": (base_choices(), {"default": "default",
                                      "tooltip": "\"default\": the Hugging Face repo ai-toolkit's preset trains on "
                                                 "(from the local HF cache, downloaded with progress if missing). Or "
                                                 "a Diffusers folder from models/diffusers, or a single-file "
                                                 "checkpoint from models/checkpoints. For exact previews use the "
                                                 "same base (and source precision) you trained on."}),
            "dtype": (["auto", "bf16", "fp16", "fp32"], {"default": "auto",
                                                          "tooltip": "auto = what ai-toolkit samples with on the "
                                                                     "device: bf16 on CUDA, fp32 on CPU. Use your "
                                                                     "training config's train.dtype for exactness."}),
            "device": (["auto", "cuda", "cpu"], {"default": "auto",
                                                  "tooltip": "auto = ComfyUI's device inside ComfyUI (CUDA unless "
                                                             "started with --cpu), else CUDA when available."}),
        }, "optional": {
            "quantization": (engine.quantization_choices(), {
                "default": engine.MATCH_TRAINING,
                "tooltip": "match training: the quantization of your training run when its config.yaml sits beside "
                           "the LoRA file (as ai-toolkit saves it), else the one ai-toolkit's UI preset trains (and "
                           f"so previews) with ({_QUANT_PRESETS}; every other model unquantized), since LoRA files "
                           "do not record it. "
                           "qfloat8: optimum-quanto float8 weights as ai-toolkit makes them (needs the "
                           "optimum-quanto package); the LoRA then runs unmerged in fp32, as in ai-toolkit. "
                           "uint2..uint7 and uintN|ostris/accuracy_recovery_adapters/...: ai-toolkit's N-bit "
                           "weights and the Qwen-Image presets' \"N bit with ARA\" (the adapter file from the "
                           "Hugging Face cache), Qwen-Image models only. none: "
                           "full-precision weights (a different picture from a quantized preview)."}),
        }}

    def load(self, model, base="default", dtype="auto", device="auto", quantization=engine.MATCH_TRAINING):
        if device == "auto":
            device = comfy_device() or "auto"  # inside ComfyUI: its device choice (e.g. --cpu)
        return (engine.load(model, base=base, dtype=dtype, device=device, roots=model_roots(),
                            quantization=quantization),)


class ApplyAIToolkitLoRA:
    DESCRIPTION = ("Adds an ai-toolkit LoRA to the pipeline handle and returns a new handle (the input handle and "
                   "the cached base are unchanged). Every key is matched; the report lists what applied.")
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = (PIPELINE_TYPE,)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ("The pipeline with this LoRA chained; chain more ApplyAIToolkitLoRA nodes to stack LoRAs.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": (PIPELINE_TYPE, {"tooltip": "From LoadAIToolkitPipeline or another ApplyAIToolkitLoRA."}),
            "lora_name": (lora_choices(), {"tooltip": "An ai-toolkit LoRA file (.safetensors) from models/loras. "
                                                      "Save with save.dtype fp32 for pixel-exact previews."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                                   "tooltip": "ai-toolkit's network_multiplier (1.0 = as trained). A --m flag in "
                                              "the prompt overrides it, as in ai-toolkit."}),
        }, "optional": {
            "expert": (list(EXPERTS), {"default": "auto",
                                       "tooltip": "Models with a high/low-noise expert pair (Wan 2.2 14B). auto: "
                                                  "a …_high_noise / …_low_noise file goes to its expert and brings "
                                                  "the other file of the pair from the same folder, as ai-toolkit "
                                                  "loads it (a combined file is split between the experts). "
                                                  "high / low: only this file, only that expert (chain one node "
                                                  "per file for separate strengths). both: this file on both "
                                                  "experts. Other models take only auto."}),
        }}

    @classmethod
    def IS_CHANGED(cls, lora_name, **_):
        path = model_roots().resolve("loras", lora_name)
        if not path:
            return lora_name
        stamps = []
        for file in (path, *pair_siblings(path)):  # an expert pair's other file is read too (expert auto)
            try:
                st = os.stat(file)
                stamps.append(f"{os.path.basename(file)}:{st.st_mtime_ns}:{st.st_size}")
            except OSError:
                stamps.append(f"{os.path.basename(file)}:absent")
        return "|".join([lora_name] + stamps)

    def apply(self, pipeline, lora_name, strength=1.0, expert="auto"):
        _check_handle(pipeline)
        handle = engine.apply_lora(pipeline, lora_name, strength, roots=model_roots(), expert=expert)
        text = "\n".join(link.summary() for link in handle.added_since(pipeline))
        log.info("[AI Toolkit] %s", text)
        return {"ui": {"text": [text]}, "result": (handle,)}


class AIToolkitSample:
    DESCRIPTION = ("Renders ai-toolkit's training preview for a prompt: same sampler, noise, negative handling, "
                   "CFG and size rounding as ai-toolkit's sampler. Connect SaveImage to keep the exact pixels; for video "
                   "models Save Video writes a playable file.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE", "VIDEO", "AUDIO")
    RETURN_NAMES = ("image", "video", "audio")
    OUTPUT_TOOLTIPS = ("The preview's 8-bit pixels (values k/255), so SaveImage writes exactly ai-toolkit's image; for "
                       "video models the frames as a batch.",
                       "The preview as ComfyUI VIDEO with its fps (and audio where the model makes it), for Save "
                       "Video (H.264, lossy; the exact pixels are the image output). Image models: their images as "
                       "frames at 1 fps.",
                       "The preview's audio as ComfyUI AUDIO, sample for sample (LTX-2 / 2.3: stereo at the vocoder's "
                       "rate, the float samples before ai-toolkit's int16 AAC encoding), for Save Audio (FLAC / WAV) "
                       "or Preview Audio. Models without audio give silence as long as the video (frames / fps; "
                       f"{SILENCE_CHANNELS} channel at {SILENCE_RATE} Hz), and their VIDEO has no audio track.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (PIPELINE_TYPE, {"tooltip": "From LoadAIToolkitPipeline or ApplyAIToolkitLoRA."}),
                "prompt": ("STRING", {"multiline": True, "default": "photo of [trigger]",
                                      "tooltip": "A sample prompt as written in your training config. [trigger] and "
                                                 "[name] become the trigger word; ai-toolkit flags (--n negative, "
                                                 "--w/--h size, --seed/--d, --cfg/--l, --steps/--s, --m strength, "
                                                 "--gr rescale) override this node's values."}),
                "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                               "tooltip": "ai-toolkit's `neg`. An empty negative is text-encoded, "
                                                          "as ai-toolkit does (not zeros)."}),
                "trigger_word": ("STRING", {"default": "",
                                            "tooltip": "Your config's trigger_word. Empty = no trigger word: "
                                                       "[trigger] then stays in the text literally, exactly as "
                                                       "ai-toolkit renders it without one."}),
                "width": ("INT", {"default": 0, "min": 0, "max": engine.MAX_SIDE, "step": 8,
                                  "tooltip": "0 = the model's default (shown under the node). Floored to the "
                                             "model's divisor as ai-toolkit does (the effective size is shown "
                                             "under the node)."}),
                "height": ("INT", {"default": 0, "min": 0, "max": engine.MAX_SIDE, "step": 8,
                                   "tooltip": "0 = model default. Floored like width."}),
                "seed": ("INT", {"default": 42, "min": 0, "max": engine.MAX_SEED,
                                 "tooltip": "ai-toolkit's sample seed (seed + i for prompt i with walk_seed). "
                                            "Noise comes from a CPU generator, so it does not depend on the GPU."}),
                "steps": ("INT", {"default": 0, "min": 0, "max": engine.MAX_STEPS,
                                  "tooltip": "sample_steps; 0 = model default."}),
                "guidance_scale": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 100.0, "step": 0.1,
                                             "tooltip": "guidance_scale as written in your training config "
                                                        "(-1 = model default). Mapped to each model's own meaning."}),
            },
            "optional": {
                "guidance_rescale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                               "tooltip": "sample.guidance_rescale (SDXL only, as in ai-toolkit)."}),
                **{name: ("IMAGE", {"tooltip": _control_tooltip(i)}) for i, name in enumerate(CONTROL_INPUTS)},
                "lora_mode": (list(LORA_MODES), {"default": "merged",
                                                 "tooltip": "How ai-toolkit applied the LoRA in that sample event. "
                                                            "merged: its default (fp32 merge, one rounding). fp32 "
                                                            "branch: what it does when the run's sample prompts use "
                                                            "different --m multipliers (or a quantized base): the "
                                                            "LoRA runs unmerged in fp32 beside each layer."}),
                # appended after lora_mode: saved UI workflows keep their widget order
                "num_frames": ("INT", {"default": 0, "min": 0, "max": engine.MAX_FRAMES, "step": 1,
                                       "tooltip": "Video models: sample num_frames; 0 = the model default ("
                                                  f"{_VIDEO_DEFAULTS}). Snapped as ai-toolkit's pipeline does "
                                                  "(Wan: 4k+1, e.g. 42 -> 41; LTX-2: 8k+1 rounding down, e.g. "
                                                  "16 -> 9). A --frames flag overrides it. Image "
                                                  "models ignore it."}),
                "fps": ("INT", {"default": 0, "min": 0, "max": engine.MAX_FPS, "step": 1,
                                "tooltip": "Video models: sample fps (the video's frame rate; 0 = the model "
                                           "default). A --fps flag overrides it. LTX-2 previews always sample at "
                                           "24 (ai-toolkit never passes fps to the pipeline): there it sets the "
                                           "file's frame rate only. Image models ignore it."}),
                "sampler": (all_sampler_names(), {
                    "default": MATCH_TRAINING,
                    "tooltip": "match training: the sampler ai-toolkit previews this model with (for Wan, the one "
                               "of the LoRA's ai-toolkit version). Or an ai-toolkit sampler name (ddpm, euler, "
                               "euler_a, dpmsolver++, flowmatch, unipc ...) to render another way; a name the "
                               "model has no such sampler for is refused with the model's list. The sampler used "
                               "is shown under the node."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def sample(self, pipeline, prompt, negative_prompt="", trigger_word="", width=0, height=0, seed=42, steps=0,
               guidance_scale=-1.0, guidance_rescale=0.0, lora_mode="merged", num_frames=0, fps=0,
               sampler=MATCH_TRAINING, unique_id=None, **images):
        _check_handle(pipeline)
        mode = _choice("lora_mode", lora_mode, LORA_MODES)
        spec = pipeline.spec
        controls = _controls(spec, images)
        num_frames, fps = _video_values(spec, num_frames, fps)
        request = engine.build_request(spec, prompt, negative_prompt, trigger_word, width, height, seed, steps,
                                       guidance_scale, guidance_rescale, controls=controls, num_frames=num_frames,
                                       fps=fps)
        check_interrupted()
        make_room(pipeline.base.device)
        result = engine.render(pipeline, request, sampler=_sampler(spec, sampler),
                               on_step=step_callback(spec, request.steps, unique_id, request), lora_mode=mode)
        for note in result.notes:
            log.info("[AI Toolkit] %s: %s", spec.id, note)
        show_text(unique_id, list(result.notes))
        image = images_to_comfy(result.frames)
        audio = audio_to_comfy(result.audio)
        video = make_video(image, result.fps or 1, audio)
        return (image, video, audio if audio is not None else silence(len(result.frames), result.fps or 1))


def _sampler(spec, sampler):
    """The node's sampler for the library (None = match training), refused early when the model lacks it."""
    if sampler in (None, "", MATCH_TRAINING):
        return None
    names = sampler_names(spec)
    if sampler not in names:
        raise InputError(f"Sampler {sampler!r} is not available for {spec.id}; choose one of: {', '.join(names)}.")
    return sampler


def _video_values(spec, num_frames, fps) -> tuple:
    """The node's num_frames/fps for the request; an image model ignores them with a warning in the log, as it
    ignores a control image it has no slot for."""
    if spec.media.is_video:
        return num_frames, fps
    for name, value in (("num_frames", num_frames), ("fps", fps)):
        if value not in (0, None):
            log.warning("[AI Toolkit] %s renders images: %s %s is ignored.", spec.id, name, value)
    return 0, 0


def audio_to_comfy(audio):
    """A Render's `Audio` (float [channels, samples]) → ComfyUI AUDIO `{"waveform": [1, C, S], "sample_rate"}`."""
    if audio is None:
        return None
    waveform = torch.from_numpy(np.ascontiguousarray(audio.waveform, dtype=np.float32))
    return {"waveform": waveform.unsqueeze(0), "sample_rate": int(audio.sample_rate)}


def silence(frames: int, fps: float) -> dict:
    """The AUDIO of a model without audio: zeros as long as the video (`frames / fps` seconds)."""
    samples = int(round(frames / float(fps) * SILENCE_RATE))
    return {"waveform": torch.zeros(1, SILENCE_CHANNELS, samples), "sample_rate": SILENCE_RATE}


def _control_tooltip(index: int) -> str:
    users = [f"{s.id} ({s.controls[index].purpose})" for s in REGISTRY.values() if len(s.controls) > index]
    return ("Control/reference image (ai-toolkit ctrl_img" + (f"_{index + 1}" if index else "") + "): "
            + ("; ".join(users) if users else "no model of this pack uses it yet") + ". Other models ignore it.")


def _controls(spec, images: dict) -> tuple:
    """The connected IMAGE inputs → PIL images in the spec's slot order. A connected image the model has no slot
    for is ignored with a warning in the log, as ai-toolkit ignores a `ctrl_img` such a model does not read."""
    unknown = sorted(set(images) - set(CONTROL_INPUTS))
    if unknown:
        raise InputError(f"AIToolkitSample has no input {unknown[0]!r}.")
    slots: tuple[ControlSlot, ...] = spec.controls
    names = {slot.name for slot in slots}
    for name in sorted(n for n, image in images.items() if image is not None and n not in names):
        log.warning("[AI Toolkit] %s takes no %s; the connected image is ignored (as ai-toolkit ignores it).",
                    spec.id, name)
    return tuple(comfy_to_pil(images.get(slot.name)) for slot in slots)


def comfy_to_pil(image):
    """A ComfyUI IMAGE [B, H, W, C] float 0..1 → the first image as PIL RGB (8-bit, as LoadImage read it)."""
    if image is None:
        return None
    from PIL import Image

    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (3, 4):
        raise InputError(f"A control image must be a ComfyUI IMAGE [batch, height, width, 3], got "
                         f"{getattr(image, 'shape', type(image).__name__)}.")
    pixels = (image[0, ..., :3].float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def images_to_comfy(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] → ComfyUI IMAGE float32 k/255 (SaveImage's `clip(255 * x)` gives back exactly k)."""
    return torch.from_numpy(pixels.astype(np.float32) / np.float32(255.0))
