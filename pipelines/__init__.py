"""ComfyUI-free library behind the nodes: registry, families, LoRA engine, prompts, sources, cache.

Never imports ComfyUI. Usable alone: `python -m pipelines --help` from the pack folder, or from Python.
"""
from .engine import PipelineHandle, apply_lora, build_request, generate, load, render
from .errors import AitkError
from .registry import REGISTRY, get_spec, model_ids

__all__ = ["PipelineHandle", "apply_lora", "build_request", "generate", "load", "render", "AitkError", "REGISTRY",
           "get_spec", "model_ids"]
