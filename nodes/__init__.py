"""ComfyUI adapters for the `pipelines` library (no per-model code here)."""
from . import memory
from .options_node import AIToolkitModelOptions
from .pipeline_nodes import AIToolkitSample, ApplyAIToolkitLoRA, LoadAIToolkitPipeline
from . import routes  # noqa: F401  (guarded: registers only inside a running ComfyUI)

memory.install()  # no-op without ComfyUI

__all__ = ["AIToolkitModelOptions", "AIToolkitSample", "ApplyAIToolkitLoRA", "LoadAIToolkitPipeline"]
