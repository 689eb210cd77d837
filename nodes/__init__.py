"""ComfyUI adapters for the `pipelines` library (no per-model code here)."""
from .pipeline_nodes import AIToolkitSample, ApplyAIToolkitLoRA, LoadAIToolkitPipeline

__all__ = ["AIToolkitSample", "ApplyAIToolkitLoRA", "LoadAIToolkitPipeline"]
