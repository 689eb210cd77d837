"""SD 1.5 and SDXL: load the base and render a preview exactly as ai-toolkit's `StableDiffusion.generate_images`.

What ai-toolkit does, and so what this does:
- components in the sampling dtype, cast from the source weights; `requires_grad_(False)` on all of them (on CPU
  it changes low bits of SDXL's linear `proj_in`);
- a fresh stock pipeline per call with the registry's effective DDPM config (never the repo's scheduler), no
  safety checker, no watermark;
- prompt and negative text-encoded by the pipeline (an empty negative is encoded, not zeros); SDXL's second encoder
  gets the parsed prompt and the sample's own negative; `guidance_rescale` only on SDXL;
- a CPU generator seeded with the seed, so latents and every DDPM step's noise come from one CPU stream;
- `output_type="pil"`: the 8-bit pixels ai-toolkit saves.
"""
from __future__ import annotations

import os

import torch

from ..errors import ModelSourceError
from ..samplers import make_scheduler
from ..sources import CONFIG_ROOT, BaseSource, hub_snapshot

LORA_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
CLIP_TOKENIZER_DIR = os.path.join(CONFIG_ROOT, "clip_tokenizer")


def _pipeline_class(spec):
    import diffusers

    return getattr(diffusers, spec.pipeline_class)


def _is_xl(spec) -> bool:
    return spec.pipeline_class == "StableDiffusionXLPipeline"


def _fixed_kwargs(spec) -> dict:
    if _is_xl(spec):
        return {"add_watermarker": False}
    return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def _shipped_tokenizers(spec, config_dir: str) -> dict:
    """Tokenizers for single files whose config folder has none: the real CLIP BPE shipped in the pack."""
    from transformers import CLIPTokenizer

    out = {}
    names = {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"} if _is_xl(spec) else {"tokenizer": "<|endoftext|>"}
    for name, pad in names.items():
        if not os.path.isdir(os.path.join(config_dir, name)):
            out[name] = CLIPTokenizer(os.path.join(CLIP_TOKENIZER_DIR, "vocab.json"),
                                      os.path.join(CLIP_TOKENIZER_DIR, "merges.txt"), pad_token=pad,
                                      model_max_length=77)
    return out


def load_pipeline(spec, source: BaseSource, dtype: torch.dtype, device: str):
    cls = _pipeline_class(spec)
    kwargs = dict(_fixed_kwargs(spec), scheduler=make_scheduler(spec))
    try:
        if source.kind == "single_file":
            kwargs.update(_shipped_tokenizers(spec, source.config_dir))
            pipe = cls.from_single_file(source.location, config=source.config_dir, local_files_only=True, **kwargs)
        else:
            folder = hub_snapshot(source.location) if source.kind == "hub" else source.location
            pipe = cls.from_pretrained(folder, local_files_only=True, **kwargs)
    except ModelSourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - Diffusers raises many types for unreadable or wrong models
        raise ModelSourceError(
            f"Could not load {os.path.basename(source.location)} as {spec.label} ({type(exc).__name__}: {exc}). "
            f"Check that it is a {spec.label} model (Diffusers folder or single-file checkpoint).") from exc
    _prepare_components(pipe, os.path.basename(source.location), spec, dtype, device)
    return pipe


def _prepare_components(pipe, label, spec, dtype, device) -> None:
    """Every module complete (nothing left on meta), in `dtype` on `device`, frozen, in eval mode."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # `.to(dtype)` warns about keep-in-fp32 lists that are empty here
    try:
        for name, module in pipe.components.items():
            if not isinstance(module, torch.nn.Module):
                continue
            meta = [n for n, p in module.named_parameters() if p.device.type == "meta"]
            if meta:
                raise ModelSourceError(f"{label}: {name} has weights missing from the file ({meta[0]} …). It does "
                                       f"not look like a complete {spec.label} model.")
            before = {t.data_ptr() for t in _tensors(module)}
            module.to(device=device, dtype=dtype)
            _own_memory(module, before)
            module.requires_grad_(False)
            module.eval()
    finally:
        diffusers_logging.set_verbosity(level)


def _tensors(module):
    return [t for t in (*module.parameters(), *module.buffers()) if t.numel()]


def _own_memory(module, loaded_ptrs: set) -> None:
    """Copy every tensor that `.to()` left where the loader put it (CPU in the file's dtype): it may be a view of
    the memory-mapped weights file, which would follow the file if it is overwritten (or SIGBUS if truncated)."""
    with torch.no_grad():
        for tensor in _tensors(module):
            if tensor.data_ptr() in loaded_ptrs:
                tensor.data = tensor.data.clone()


def lora_components(pipe) -> dict:
    return {name: getattr(pipe, name, None) for name in LORA_COMPONENTS if getattr(pipe, name, None) is not None}


def _sampling_pipeline(spec, pipe, sampler):
    """A fresh stock pipeline over the cached components, as ai-toolkit builds one per sample call."""
    names = ["vae", "text_encoder", "tokenizer", "unet"]
    if _is_xl(spec):
        names += ["text_encoder_2", "tokenizer_2"]
    parts = {n: getattr(pipe, n) for n in names}
    sampling = _pipeline_class(spec)(**parts, scheduler=make_scheduler(spec, sampler), **_fixed_kwargs(spec))
    sampling.set_progress_bar_config(disable=True)
    return sampling


def generate(spec, pipe, request, sampler=None, on_step=None):
    """Render one preview; returns the pipeline's float pixels [B, H, W, 3] in 0..1 (`output_type="np"`: what its
    PIL output is made from). `on_step(step, total, latents)` runs after each step."""
    sampling = _sampling_pipeline(spec, pipe, sampler)
    kwargs = dict(prompt=request.prompt, negative_prompt=request.negative_prompt, height=request.height,
                  width=request.width, num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
                  generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np")
    if _is_xl(spec):
        kwargs.update(prompt_2=request.prompt, negative_prompt_2=request.negative_prompt_2,
                      guidance_rescale=request.guidance_rescale)
    if on_step is not None:
        def callback(_pipe, i, _t, tensors):
            on_step(i + 1, request.steps, tensors.get("latents"))
            return tensors
        kwargs.update(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"])
    with torch.no_grad():
        return sampling(**kwargs).images
