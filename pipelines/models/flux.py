"""Registry entries of the FLUX.1 family (`families/flux/`): FLUX.1-dev, Flex.1-alpha, FLUX.1-Kontext-dev and Flex.2.

Values from ai-toolkit 27a03a91: the UI presets (`ui/src/app/jobs/new/options.tsx`, `jobConfig.ts`,
`ui/src/helpers/defaultSamples.ts`), `toolkit/sampler.py` (`flux_config`) and the family's model classes.
"""
from __future__ import annotations

from types import MappingProxyType

from ..families.flux.options import FluxOptions
from .. import latent_formats
from ..flowmatch import FLUX_CONFIG
from ..spec import (ControlSlot, GuidanceSpec, LoraLayout, ModelSpec, QuantSpec, SampleDefaults,
                    SchedulerSpec, SizeRule)

ORDER = 10

# ai-toolkit's FLUX-family UI presets (options.tsx): flowmatch sampler; quantize + quantize_te with qfloat8
# (jobConfig.ts); sample defaults 1024², 30 steps, guidance 4 (defaultSamples.ts).
_FLOW_DEFAULTS = SampleDefaults(steps=30, guidance_scale=4.0, width=1024, height=1024)
_FLUX_SCHEDULER = SchedulerSpec("flowmatch", FLUX_CONFIG, arch="flow")
_FLUX_SIZE = SizeRule(divisor=8, minimum=64, pipeline_divisor=16)
FLUX_QUANT = QuantSpec(preset="qfloat8", components=("transformer", "text_encoder_2"))
_FLUX_LORA = LoraLayout(
    kohya_prefixes=MappingProxyType({"lora_unet": "transformer", "lora_te1": "text_encoder"}),
    peft_prefixes=MappingProxyType({"transformer": "transformer", "diffusion_model": "transformer",
                                    "text_encoder": "text_encoder"}),
)
FLUX_COMMON = dict(family="flux", compatible_pipelines=("FluxPipeline", "FluxKontextPipeline"), defaults=_FLOW_DEFAULTS,
                   scheduler=_FLUX_SCHEDULER, lora=_FLUX_LORA,
                    size=_FLUX_SIZE, guidance=GuidanceSpec("embedded"), quant=FLUX_QUANT, preview=latent_formats.FLUX,
                    options=FluxOptions())

SPECS = (
    ModelSpec(
        id="flux", label="FLUX.1-dev", base_repo="black-forest-labs/FLUX.1-dev", pipeline_class="FluxPipeline",
        base_versions=("flux.1",), workflow="FLUX.1 LoRA",
        notes="flowmatch with dynamic shift, guidance embedding only, T5 512 tokens unmasked, qfloat8 preset",
        **FLUX_COMMON),
    ModelSpec(
        id="flex1", label="Flex.1-alpha", base_repo="ostris/Flex.1-alpha", pipeline_class="FluxPipeline",
        base_versions=("flux.1", "flex.1"), workflow="Flex.1 LoRA",
        notes="ai-toolkit maps arch flex1 to flux: FLUX.1 previews; the guidance bypass is training-only",
        **FLUX_COMMON),
    ModelSpec(
        id="flux_kontext", label="FLUX.1-Kontext-dev", base_repo="black-forest-labs/FLUX.1-Kontext-dev",
        pipeline_class="FluxKontextPipeline", variant="kontext",
        controls=(ControlSlot("control_image", True, "the image to edit (ai-toolkit ctrl_img), resized to the "
                                                     "output size with BILINEAR as ai-toolkit does"),),
        base_versions=("flux.1_kontext", "flux.1"), workflow="FLUX.1 Kontext LoRA",
        notes="FLUX.1 sampling with the control image as extra tokens; qfloat8 preset; no attn_masking option "
              "(FluxKontextModel.get_prompt_embeds has none)",
        **dict(FLUX_COMMON, options=None)),
)

# Flex.2-preview: ai-toolkit's own Flex2Pipeline (extensions_built_in/flex2), re-implemented in families/flux/flex2.py.
# pipeline_class FluxPipeline: the tiny folders say so, and the repo is loaded elsewhere with
# `AutoPipelineForText2Image.from_pretrained(..., custom_pipeline=...)`, which needs a Diffusers class name there (not
# checked against the Hub file; a list-form `_class_name` passes the folder check as well). ai-toolkit loads the
# components one by one and never reads it. No attn_masking option (Flex2.get_prompt_embeds has none).
SPECS += (
    ModelSpec(
        id="flex2", label="Flex.2-preview", base_repo="ostris/Flex.2-preview", pipeline_class="FluxPipeline",
        variant="flex2",
        controls=(ControlSlot("control_image", False, "a depth/line/pose control image (ai-toolkit ctrl_img with "
                                                      "ctrl_idx 1); without one Flex.2 renders as ai-toolkit's "
                                                      "previews do: inpaint mask of ones, zero latents"),),
        base_versions=("flex2",), workflow="Flex.2 LoRA",
        notes="Flex2Pipeline math: 196-channel input (latents | zero inpaint latent + mask of ones | control), "
              "control image LANCZOS + VAE sample drawn before the noise; FLUX.1 sampling otherwise; qfloat8 preset",
        **dict(FLUX_COMMON, options=None)),
)
