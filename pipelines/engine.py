"""The library's front door: load a base, chain LoRAs on immutable handles, render previews.

    handle = load("sdxl", base="default", dtype="auto", device="auto", roots=ModelRoots.from_env())
    handle = handle.with_lora("my_lora.safetensors", 1.0)        # a new handle; `handle` is unchanged
    images = render(handle, prompt="photo of [trigger]", trigger_word="ohwx", seed=42)  # uint8 [B, H, W, 3]

A handle names a cached base plus a LoRA chain. Rendering brings the shared base to exactly "pristine + this
chain" first, so handles never see each other's LoRAs, and a strength change or LoRA swap never reloads the base.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, replace

import numpy as np
import torch

from .cache import CACHE, LoadedBase
from .errors import InputError
from .lora import BoundLora, bind_lora
from .prompts import SampleRequest, prepare
from .registry import floor_size, get_spec
from .sources import ModelRoots, resolve_base, resolve_lora

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MAX_SIDE = 8192
MAX_STEPS = 1000
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but this torch has no CUDA device; choose 'auto' or 'cpu'.")
    if device not in ("cuda", "cpu"):
        raise InputError(f"Unknown device {device!r}; choose auto, cuda or cpu.")
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` is what ai-toolkit samples with on that device: bf16 on CUDA, fp32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise InputError(f"Unknown dtype {dtype!r}; choose auto, bf16, fp16 or fp32.")
    return DTYPES[dtype]


@dataclass(frozen=True)
class LoraLink:
    bound: BoundLora
    strength: float


@dataclass(frozen=True, eq=False)
class PipelineHandle:
    base: LoadedBase
    loras: tuple = ()   # LoraLink, in chain order

    @property
    def spec(self):
        return self.base.spec

    def with_lora(self, path: str, strength: float = 1.0) -> "PipelineHandle":
        """A new handle with one more LoRA. The file is read and matched now, so errors surface here."""
        base, chain = _live(self)
        links = tuple(LoraLink(bound, s) for bound, s in chain)
        return replace(self, base=base, loras=links + (LoraLink(bind(base, path), float(strength)),))

    def reports(self) -> list:
        return [link.bound.report for link in self.loras]


def bind(base: LoadedBase, path: str) -> BoundLora:
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
    with base.lock:
        bound = base.bound.get(key)
        if bound is None:
            bound = bind_lora(path, base.spec, base.patcher.components)
            base.bound[key] = bound
        return bound


def load(model: str, base: str = "default", dtype: str = "auto", device: str = "auto",
         roots: ModelRoots | None = None) -> PipelineHandle:
    spec = get_spec(model)
    device = pick_device(device)
    source = resolve_base(spec, base, roots or ModelRoots.from_env())
    return PipelineHandle(CACHE.get(spec, source, pick_dtype(dtype, device), device))


def apply_lora(handle: PipelineHandle, name: str, strength: float = 1.0,
               roots: ModelRoots | None = None) -> PipelineHandle:
    return handle.with_lora(resolve_lora(name, roots or ModelRoots.from_env()), strength)


def build_request(spec, prompt: str, negative_prompt: str = "", trigger_word: str | None = None, width: int = 0,
                  height: int = 0, seed: int = 42, steps: int = 0, guidance_scale: float = -1.0,
                  guidance_rescale: float = 0.0) -> SampleRequest:
    """The node's values → the request ai-toolkit would render. 0 (size, steps) or a negative guidance means the
    model's default; flags in the prompt then override; finally the size is floored as ai-toolkit does."""
    d = spec.defaults
    width, height = width or d.width, height or d.height
    for label, side in (("width", width), ("height", height)):
        if side < spec.size_min or side > MAX_SIDE:
            raise InputError(f"{label} {side} is outside {spec.size_min}..{MAX_SIDE} for {spec.id} "
                             f"(0 means the model default, {d.width}x{d.height}).")
    request = SampleRequest(prompt=prompt or "", negative_prompt=negative_prompt or "", width=int(width),
                            height=int(height), seed=int(seed), steps=int(steps or d.steps),
                            guidance_scale=float(d.guidance_scale if guidance_scale < 0 else guidance_scale),
                            guidance_rescale=float(guidance_rescale))
    request = prepare(request, trigger_word if trigger_word else None)
    width, height = floor_size(spec, request.width, request.height)
    if max(width, height) > MAX_SIDE:
        raise InputError(f"Size {width}x{height} (from the prompt's --w/--h) is larger than {MAX_SIDE}.")
    cfg = spec.scheduler.config
    max_steps = min(MAX_STEPS, int(cfg.get("num_train_timesteps", 1000)) - int(cfg.get("steps_offset", 0)))
    if not 1 <= request.steps <= max_steps:
        raise InputError(f"steps must be 1..{max_steps} for {spec.id}, got {request.steps} "
                         "(0 means the model default).")
    seed = request.seed
    if seed == -1:  # ai-toolkit: a random seed
        seed = random.randint(0, 2 ** 32 - 1)
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be 0..{MAX_SEED} (or -1 for random), got {seed}.")
    return replace(request, width=width, height=height, seed=seed)


def _live(handle: PipelineHandle) -> tuple:
    """(base, [(bound LoRA, strength)]) for a handle, reloading a base that memory management released."""
    base = handle.base
    if not base.released:
        return base, [(link.bound, link.strength) for link in handle.loras]
    base = CACHE.get(base.spec, base.source, base.dtype, base.device)
    return base, [(bind(base, link.bound.path), link.strength) for link in handle.loras]


def render(handle: PipelineHandle, request: SampleRequest, sampler: str | None = None, on_step=None,
           lora_mode: str = "merge") -> np.ndarray:
    """Render one request with the handle's LoRA chain applied (`lora_mode` "merge", ai-toolkit's default, or
    "branch": its unmerged fp32 path for sample events with mixed multipliers); returns uint8 [B, H, W, 3]."""
    base, chain = _live(handle)
    multiplier = request.network_multiplier
    stack = [(bound, strength if multiplier is None else multiplier) for bound, strength in chain]
    with base.lock:
        base.patcher.set_stack(stack, lora_mode)
        images = base.family.generate(base.spec, base.pipe, request, sampler=sampler, on_step=on_step)
    return np.stack([np.asarray(img.convert("RGB"), dtype=np.uint8) for img in images])


def generate(handle: PipelineHandle, prompt: str, **values) -> np.ndarray:
    """`build_request` + `render` in one call (the CLI and simple scripts)."""
    options = {k: values.pop(k) for k in ("sampler", "on_step", "lora_mode") if k in values}
    return render(handle, build_request(handle.spec, prompt, **values), **options)
