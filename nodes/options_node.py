"""AIToolkitModelOptions: family-only settings of the training config (e.g. FLUX.1's `model.attn_masking`).

Its inputs are generated from the registry: every field of every family's options dataclass, with the field's own
help text as the tooltip. It returns a new handle with the settings that differ from their defaults; a setting the
connected model does not have is refused by the library (never silently ignored).
"""
from __future__ import annotations

import dataclasses

from ..pipelines.registry import REGISTRY
from .comfy_bridge import model_roots
from .pipeline_nodes import CATEGORY, PIPELINE_TYPE, _check_handle

_WIDGETS = {bool: "BOOLEAN", int: "INT", float: "FLOAT", str: "STRING"}


def option_fields() -> dict:
    """{name: (default, help, [model ids])} over every registry entry's options dataclass."""
    out: dict = {}
    for spec in REGISTRY.values():
        if spec.options is None:
            continue
        for f in dataclasses.fields(spec.options):
            default, help_text, ids = out.get(f.name, (f.default, f.metadata.get("help", ""), []))
            out[f.name] = (default, help_text, ids + [spec.id])
    return out


class AIToolkitModelOptions:
    DESCRIPTION = ("Settings from your training config that only some models read (see each input's tooltip). "
                   "Place it between the loader (or a LoRA node) and AIToolkitSample.")
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = (PIPELINE_TYPE,)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ("The pipeline with these settings; the cached base is unchanged.",)

    @classmethod
    def INPUT_TYPES(cls):
        inputs = {"pipeline": (PIPELINE_TYPE, {"tooltip": "From LoadAIToolkitPipeline or ApplyAIToolkitLoRA."})}
        for name, (default, help_text, ids) in option_fields().items():
            inputs[name] = (_WIDGETS[type(default)], {"default": default,
                                                       "tooltip": f"{help_text} (models: {', '.join(ids)})"})
        return {"required": inputs}

    def apply(self, pipeline, **values):
        _check_handle(pipeline)
        fields = option_fields()
        changed = {k: v for k, v in values.items() if k not in fields or v != fields[k][0]}
        return (pipeline.with_options(roots=model_roots(), **changed),)
