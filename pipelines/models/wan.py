"""Registry entries of the Wan family (`families/wan/`): Wan 2.1 text-to-video, 1.3B and 14B.

Values from ai-toolkit 27a03a91: the UI presets `wan21:1b` / `wan21:14b` (`ui/src/app/jobs/new/options.tsx`:
repos, `quantize` / `quantize_te`, `sample.num_frames` 41, `sample.fps` 16), the sample defaults
(`ui/src/helpers/defaultSamples.ts`: 1024x1024, 30 steps, guidance 4; `jobConfig.ts`: qtype qfloat8) and
`toolkit/models/wan21/wan21.py` (`scheduler_config` shift 3.0, `get_base_model_version` "wan_2.1",
`get_transformer_block_names` ["blocks"], no quantization exclusions).
"""
from __future__ import annotations

from types import MappingProxyType

from .. import latent_formats
from ..families.wan import samplers as wan_samplers
from ..quantize import QuantizeRule
from ..spec import (GuidanceSpec, LoraLayout, MediaSpec, ModelSpec, QuantSpec, SampleDefaults,
                    SchedulerSpec, SizeRule)

ORDER = 70

# wan21.py:scheduler_config, what Wan21.get_train_scheduler builds for previews since 0.9.3 (UniPC before: the
# table's "unipc" with the same shift; families/wan/samplers.py)
WAN21_SCHEDULER = SchedulerSpec(wan_samplers.FLOWMATCH, MappingProxyType(
    {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}), arch=wan_samplers.ARCH)
WAN_DEFAULTS = SampleDefaults(steps=30, guidance_scale=4.0, width=1024, height=1024)
# GenerateImageConfig floors to 8 (min 64); WanPipeline needs multiples of 16 (it raises; the family floors)
WAN_SIZE = SizeRule(divisor=8, minimum=64, pipeline_divisor=16)
WAN21_MEDIA = MediaSpec("video", frame_step=4, default_frames=41, fps=16)
# ai-toolkit's saved layout (`diffusion_model.` + original names); Diffusers paths and kohya names too
WAN_LORA = LoraLayout(kohya_prefixes=MappingProxyType({"lora_unet": "transformer"}),
                      peft_prefixes=MappingProxyType({"diffusion_model": "transformer", "transformer": "transformer"}))
# quantize_model(self, transformer): each of `blocks` cast and quantized, then the rest (no exclusions: Wan21 has no
# get_quantization_exclude_modules; optimum-quanto leaves the Conv3d patch embedding as it is); quantize_te: plain
# quantize(text_encoder) with `model.qtype`
_TRANSFORMER_RULE = QuantizeRule(blocks=("blocks",))
WAN21_COMMON = dict(family="wan", pipeline_class="WanPipeline", defaults=WAN_DEFAULTS, scheduler=WAN21_SCHEDULER,
                    lora=WAN_LORA, size=WAN_SIZE, guidance=GuidanceSpec("cfg"), media=WAN21_MEDIA,
                    preview=latent_formats.WAN21, base_versions=("wan_2.1",))

SPECS = (
    ModelSpec(
        id="wan21_1b", label="Wan 2.1 T2V 1.3B", base_repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        quant=QuantSpec(preset="qfloat8", components=("text_encoder",)), workflow="Wan 2.1 1.3B LoRA",
        notes="WanPipeline; flow-match Euler shift 3 (UniPC for LoRAs from ai-toolkit < 0.9.3), true CFG with the "
              "encoded negative in two passes, 41 frames 4k+1 at 16 fps; preset quantizes only the UMT5 (qfloat8)",
        **WAN21_COMMON),
    ModelSpec(
        id="wan21_14b", label="Wan 2.1 T2V 14B", base_repo="Wan-AI/Wan2.1-T2V-14B-Diffusers",
        quant=QuantSpec(preset="qfloat8", components=("transformer", "text_encoder"),
                        rules=MappingProxyType({"transformer": _TRANSFORMER_RULE})),
        workflow="Wan 2.1 14B LoRA",
        notes="as wan21_1b; preset quantizes the transformer (blocks first) and the UMT5 (qfloat8), so the LoRA runs "
              "as an fp32 branch",
        **WAN21_COMMON),
)
