"""
@author: AI Toolkit Inference contributors
@title: AI Toolkit Inference
@nickname: AI Toolkit Inference
@description: Render ai-toolkit LoRA training previews exactly in ComfyUI: same sampler, noise, negative, CFG and
size rounding as ai-toolkit, through three nodes (LoadAIToolkitPipeline, ApplyAIToolkitLoRA, AIToolkitSample).
"""
from .nodes import AIToolkitModelOptions, AIToolkitSample, ApplyAIToolkitLoRA, LoadAIToolkitPipeline

NODE_CLASS_MAPPINGS = {
    "LoadAIToolkitPipeline": LoadAIToolkitPipeline,
    "ApplyAIToolkitLoRA": ApplyAIToolkitLoRA,
    "AIToolkitSample": AIToolkitSample,
    "AIToolkitModelOptions": AIToolkitModelOptions,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadAIToolkitPipeline": "Load AI Toolkit Pipeline",
    "ApplyAIToolkitLoRA": "Apply AI Toolkit LoRA",
    "AIToolkitSample": "AI Toolkit Sample (training preview)",
    "AIToolkitModelOptions": "AI Toolkit Model Options",
}

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
