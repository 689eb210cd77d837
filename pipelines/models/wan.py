"""Registry entries of the Wan family (`families/wan/`): Wan 2.1 text-to-video, 1.3B and 14B.

Values from ai-toolkit 27a03a91: the UI presets `wan21:1b` / `wan21:14b` (`ui/src/app/jobs/new/options.tsx`:
repos, `quantize` / `quantize_te`, `sample.num_frames` 41, `sample.fps` 16), the sample defaults
(`ui/src/helpers/defaultSamples.ts`: 1024x1024, 30 steps, guidance 4; `jobConfig.ts`: qtype qfloat8) and
`toolkit/models/wan21/wan21.py` (`scheduler_config` shift 3.0, `get_base_model_version` "wan_2.1",
`get_transformer_block_names` ["blocks"], no quantization exclusions).
"""
from __future__ import annotations

from types import MappingProxyType

from ..families.wan import samplers as wan_samplers
from ..quantize import QuantizeRule
from ..spec import (GuidanceSpec, LatentPreview, LoraLayout, MediaSpec, ModelSpec, QuantSpec, SampleDefaults,
                    SchedulerSpec, SizeRule)

ORDER = 70

# ComfyUI's latent_formats.Wan21 preview factors (16 latent channels, on the normalized latents the sampler holds)
_WAN21_RGB = ((-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747),
              (0.0372, 0.2344, 0.1420), (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665),
              (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975), (-0.0412, 0.0267, -0.1364),
              (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
              (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950),
              (0.1984, 0.0913, 0.1861))
WAN21_PREVIEW = LatentPreview(_WAN21_RGB, (-0.1835, -0.0868, -0.3360))
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
                    preview=WAN21_PREVIEW, base_versions=("wan_2.1",))

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
