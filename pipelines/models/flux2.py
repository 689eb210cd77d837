"""Registry entries of FLUX.2 (`families/flux2/`): FLUX.2-dev, FLUX.2-klein-base-4B and -9B.

Values from ai-toolkit 27a03a91: the UI presets `flux2`, `flux2_klein_4b`, `flux2_klein_9b` (`ui/src/app/jobs/new/
options.tsx`: name_or_path, quantize + quantize_te with qtype qfloat8, sampler flowmatch, multi control images),
the sample defaults (`ui/src/helpers/defaultSamples.ts`: 1024², 30 steps, guidance 4, neg ""), and the model
classes (`extensions_built_in/diffusion_models/flux2/`: bucket divisibility 16, guidance distillation, LoRA layout,
`get_base_model_version`).
"""
from __future__ import annotations

from types import MappingProxyType

from .. import latent_formats
from ..flowmatch import FLUX_CONFIG
from ..quantize import QuantizeRule
from ..spec import (ControlSlot, GuidanceSpec, LoraLayout, ModelSpec, QuantSpec, SampleDefaults, SchedulerSpec,
                    SizeRule)

ORDER = 60

# `Flux2Model.get_train_scheduler` = CustomFlowMatchEulerDiscreteScheduler(FLUX.1 values): built, never stepped
# (the pipeline runs its own schedule), so "flowmatch" is the only sampler and it changes nothing.
_SCHEDULER = SchedulerSpec("flowmatch", FLUX_CONFIG, arch="flow")
_DEFAULTS = SampleDefaults(steps=30, guidance_scale=4.0, width=1024, height=1024)
_SIZE = SizeRule(divisor=8, minimum=64, pipeline_divisor=16)
# quantize_model: double_blocks / single_blocks first, then the rest; no exclusions; the text encoder too
_QUANT = QuantSpec(preset="qfloat8", components=("transformer", "text_encoder"),
                   rules=MappingProxyType({"transformer": QuantizeRule(blocks=("double_blocks", "single_blocks"))}))
_LORA = LoraLayout(kohya_prefixes=MappingProxyType({"lora_unet": "transformer"}),
                   peft_prefixes=MappingProxyType({"diffusion_model": "transformer", "transformer": "transformer"}))
_REFS = (
    ControlSlot("control_image", False, "reference image 1 (ai-toolkit ctrl_img_1): center-cropped to multiples of "
                                        "16, at most 1024² pixels, sides ≥ 64; not resized to the output"),
    ControlSlot("control_image_2", False, "reference image 2 (ai-toolkit ctrl_img_2)"),
    ControlSlot("control_image_3", False, "reference image 3 (ai-toolkit ctrl_img_3)"),
)
_COMMON = dict(family="flux2", preview=latent_formats.FLUX2, defaults=_DEFAULTS, scheduler=_SCHEDULER, lora=_LORA, size=_SIZE, quant=_QUANT,
               controls=_REFS, single_file_config="flux2", checkpoint_marker="single_stream_modulation.")

SPECS = (
    ModelSpec(
        id="flux2_klein_4b", label="FLUX.2-klein-base-4B", base_repo="black-forest-labs/FLUX.2-klein-base-4B",
        pipeline_class="Flux2KleinPipeline", variant="klein", base_versions=("flux2_klein_4b",),
        guidance=GuidanceSpec("true_cfg", threshold=1.0), workflow="FLUX.2-klein-base-4B LoRA",
        notes="ai-toolkit's own FLUX.2 pipeline: BFL-layout model, schedule linspace(1,0,n+1) shifted by "
              "mu(256→0.5, 4096→1.15), true CFG with the encoded negative, Qwen3 layers 9/18/27 at 512 tokens, "
              "up to 3 reference images; qfloat8 preset",
        **_COMMON),
    ModelSpec(
        id="flux2_klein_9b", label="FLUX.2-klein-base-9B", base_repo="black-forest-labs/FLUX.2-klein-base-9B",
        pipeline_class="Flux2KleinPipeline", variant="klein", base_versions=("flux2_klein_9b",),
        guidance=GuidanceSpec("true_cfg", threshold=1.0), workflow="FLUX.2-klein-base-9B LoRA",
        notes="as klein 4B with Qwen3-8B and the 9B transformer; qfloat8 preset",
        **_COMMON),
    ModelSpec(
        id="flux2", label="FLUX.2-dev", base_repo="black-forest-labs/FLUX.2-dev", pipeline_class="Flux2Pipeline",
        variant="dev", base_versions=("flux2",), guidance=GuidanceSpec("embedded"), workflow="FLUX.2-dev LoRA",
        notes="ai-toolkit's own FLUX.2 pipeline: guidance embedding only (no negative), Mistral3 layers 10/20/30 "
              "with the FLUX.2 system message, same schedule and reference images; qfloat8 preset",
        **_COMMON),
)
