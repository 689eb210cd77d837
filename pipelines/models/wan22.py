"""Registry entries of Wan 2.2 A14B (`families/wan/wan22.py`): text-to-video and image-to-video, the expert pair.

Values from ai-toolkit 27a03a91: the UI presets `wan22_14b:t2v` / `wan22_14b_i2v` (`ui/src/app/jobs/new/
options.tsx`: repos `ai-toolkit/Wan2.2-T2V-A14B-Diffusers-bf16` / `ai-toolkit/Wan2.2-I2V-A14B-Diffusers-bf16`,
`quantize` and `quantize_te` on, `sample.num_frames` 41, `sample.fps` 16, `model_kwargs` train_high_noise and
train_low_noise on), the sample defaults (`ui/src/helpers/defaultSamples.ts`: 1024x1024, 30 steps, guidance 4;
`jobConfig.ts`: qtype qfloat8) and `wan22_14b_model.py` (`get_train_scheduler` = `wan22_5b_model.py:
scheduler_config`, shift 5.0; the UniPC config of older versions with flow_shift 3.0; `get_base_model_version`
"wan_2.2_14b"; `get_quantization_exclude_modules` ["condition_embedder*", "proj_out*"], blocks ["blocks"]).
"""
from __future__ import annotations

from types import MappingProxyType

from .. import latent_formats
from ..families.wan import samplers as wan_samplers
from ..families.wan.decode import WanVaeOptions
from ..quantize import QuantizeRule
from ..spec import ControlSlot, GuidanceSpec, MediaSpec, ModelSpec, QuantSpec, SchedulerSpec, SizeRule
from .wan import WAN_DEFAULTS, WAN_LORA

ORDER = 72

# flow-match Euler shift 5 since 0.9.3; before, UniPC with scheduler_configUniPC's flow_shift 3.0 (not 5)
WAN22_SCHEDULER = SchedulerSpec(wan_samplers.FLOWMATCH, MappingProxyType(
    {"num_train_timesteps": 1000, "shift": 5.0, "use_dynamic_shifting": False, "unipc_flow_shift": 3.0}),
    arch=wan_samplers.ARCH)
# GenerateImageConfig floors to 8 (min 64); Wan22Pipeline floors again to 2 * the VAE factor = 16
WAN22_SIZE = SizeRule(divisor=8, minimum=64, pipeline_divisor=16)
WAN22_MEDIA = MediaSpec("video", frame_step=4, default_frames=41, fps=16)
# quantize_model on each expert: blocks first, then the rest, with the family's exclusions; quantize_te: the UMT5
_EXPERT_RULE = QuantizeRule(blocks=("blocks",), exclude=("condition_embedder*", "proj_out*"))
WAN22_QUANT = QuantSpec(preset="qfloat8", components=("transformer", "transformer_2", "text_encoder"),
                        rules=MappingProxyType({"transformer": _EXPERT_RULE, "transformer_2": _EXPERT_RULE}))
WAN22_COMMON = dict(family="wan", defaults=WAN_DEFAULTS, scheduler=WAN22_SCHEDULER, lora=WAN_LORA, size=WAN22_SIZE,
                    guidance=GuidanceSpec("cfg"), media=WAN22_MEDIA, quant=WAN22_QUANT,
                    preview=latent_formats.WAN21, base_versions=("wan_2.2_14b",),
                    options=WanVaeOptions())  # vae_tiling: the presets' low_vram decodes tiled (decode.py)

SPECS = (
    ModelSpec(
        id="wan22_14b_t2v", label="Wan 2.2 T2V 14B", base_repo="ai-toolkit/Wan2.2-T2V-A14B-Diffusers-bf16",
        variant="wan22_t2v", pipeline_class="WanPipeline", workflow="Wan 2.2 14B T2V LoRA",
        notes="ai-toolkit's Wan22Pipeline: high-noise expert for t >= 875, low-noise below, one guidance scale, "
              "cond/uncond as two passes; flow-match Euler shift 5 (UniPC flow_shift 3 for LoRAs from ai-toolkit "
              "< 0.9.3); the LoRA pair _high_noise/_low_noise; preset quantizes both experts and the UMT5 (qfloat8)",
        **WAN22_COMMON),
    ModelSpec(
        id="wan22_14b_i2v", label="Wan 2.2 I2V 14B", base_repo="ai-toolkit/Wan2.2-I2V-A14B-Diffusers-bf16",
        variant="wan22_i2v", pipeline_class="WanImageToVideoPipeline", compatible_pipelines=("WanPipeline",),
        workflow="Wan 2.2 14B I2V LoRA",
        controls=(ControlSlot("control_image", True, "the first frame (ai-toolkit ctrl_img): resized to the "
                                                     "16-floored size with LANCZOS and VAE-encoded as ai-toolkit's "
                                                     "first-frame conditioning"),),
        notes="as wan22_14b_t2v, with 36-channel experts and the control image as the first frame (boundary "
              "0.875, not the folder's 0.9)",
        **WAN22_COMMON),
)
