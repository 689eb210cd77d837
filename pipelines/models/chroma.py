"""Registry entry of Chroma (`families/chroma.py`): FLUX.1's sampling data with true CFG and a T5-only text side."""
from __future__ import annotations

from types import MappingProxyType

from ..spec import GuidanceSpec, LoraLayout, ModelSpec, QuantSpec
from .flux import FLUX_COMMON

ORDER = 20

# Chroma1-Base: ai-toolkit's ChromaModel (extensions_built_in/diffusion_models/chroma), previewed through Diffusers'
# ChromaPipeline in families/chroma.py. The T5 is `text_encoder` here (ai-toolkit: text_encoder_2, quantize_te).
# A single file is ai-toolkit's BFL-layout transformer; `single_file_config` names no shipped folder: the family takes
# the config and the T5/VAE from a Diffusers folder beside the file or from the HF cache (as ai-toolkit does).
SPECS = (
    ModelSpec(
        id="chroma", label="Chroma1-Base", base_repo="lodestones/Chroma1-Base", pipeline_class="ChromaPipeline",
        base_versions=("chroma",), workflow="Chroma LoRA", single_file_config="chroma",
        checkpoint_marker="distilled_guidance_layer.",
        notes="flowmatch with dynamic shift, true CFG with the negative iff guidance > 1.00001, T5 512 tokens run "
              "unmasked + bool mask of the tokens and one pad, approximator RMSNorm eps 1e-6; qfloat8 preset",
        **dict(FLUX_COMMON, family="chroma", guidance=GuidanceSpec("true_cfg", threshold=1.00001),
               quant=QuantSpec(preset="qfloat8", components=("transformer", "text_encoder")),
               lora=LoraLayout(kohya_prefixes=MappingProxyType({"lora_unet": "transformer"}),
                               peft_prefixes=MappingProxyType({"diffusion_model": "transformer",
                                                               "transformer": "transformer"})),
               options=None)),
)
