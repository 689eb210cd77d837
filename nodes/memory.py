"""Cooperation with ComfyUI's model management (only when ComfyUI is there).

Our bases are Diffusers pipelines, not ComfyUI `ModelPatcher`s, so ComfyUI cannot move them itself. Instead the
pack extends the two functions ComfyUI frees memory through:
- `unload_all_models()` ("Unload models", `POST /free`, `--cache-none` runs): our cached bases are released too;
- `free_memory(bytes, device)` (ComfyUI making room before loading its own models): when its own unloading did not
  free enough on that GPU, our bases on that device are released.
Before we sample on a GPU, ComfyUI's own `free_memory` (un-wrapped) is asked for working memory there, so a graph
mixing native models and ours does not run out of memory. Installing is idempotent and never fails the import.
"""
from __future__ import annotations

import functools

from ..pipelines.cache import CACHE
from .comfy_bridge import log

_MARK = "_aitk_wrapped"
_original_free_memory = None


def _release(reason: str, device=None) -> int:
    n = CACHE.release(device)
    if n:
        log.info("[AI Toolkit] released %d cached base model(s): %s", n, reason)
    return n


def install() -> bool:
    """Wrap ComfyUI's memory functions once. Returns False when ComfyUI is not importable."""
    global _original_free_memory
    try:
        import comfy.model_management as mm  # type: ignore
    except Exception:  # noqa: BLE001 - no ComfyUI (plain Python, tests) or a broken one: nothing to cooperate with
        return False
    if getattr(mm.unload_all_models, _MARK, False):
        return True
    unload_all, free_memory = mm.unload_all_models, mm.free_memory
    _original_free_memory = free_memory

    @functools.wraps(unload_all)
    def unload_all_models(*args, **kwargs):
        result = unload_all(*args, **kwargs)
        _release("ComfyUI unloaded all models")
        return result

    @functools.wraps(free_memory)
    def free_memory_and_ours(memory_required, device, *args, **kwargs):
        result = free_memory(memory_required, device, *args, **kwargs)
        if getattr(device, "type", str(device)) != "cpu" and mm.get_free_memory(device) < memory_required:
            _release(f"ComfyUI needs {memory_required / 2**30:.1f} GiB on {device}", getattr(device, "type", None))
        return result

    setattr(unload_all_models, _MARK, True)
    setattr(free_memory_and_ours, _MARK, True)
    mm.unload_all_models = unload_all_models
    mm.free_memory = free_memory_and_ours
    return True


def comfy_device() -> str | None:
    """ComfyUI's compute device type ("cuda"/"cpu") when running inside ComfyUI, else None."""
    try:
        import comfy.model_management as mm  # type: ignore
        kind = mm.get_torch_device().type
    except Exception:  # noqa: BLE001
        return None
    return kind if kind in ("cuda", "cpu") else None


def make_room(device: str) -> None:
    """Before sampling on a GPU: ask ComfyUI to unload its own models until working memory is free there (our base
    is already on the device; the activations need the room)."""
    if _original_free_memory is None or device == "cpu":
        return
    try:
        import comfy.model_management as mm  # type: ignore
        import torch

        needed = mm.minimum_inference_memory()
        if mm.get_free_memory(torch.device(device)) < needed:
            _original_free_memory(needed, torch.device(device))
    except Exception as exc:  # noqa: BLE001 - best effort: never fail a render over bookkeeping
        log.debug("[AI Toolkit] make_room failed: %s", exc)
