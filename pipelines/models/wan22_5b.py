"""Registry entry of Wan 2.2 TI2V 5B (`families/wan/ti2v5b.py`): text-to-video, or image-to-video with a control image.

Values from ai-toolkit 27a03a91: the UI preset `wan22_5b` (`ui/src/app/jobs/new/options.tsx`: repo
Wan-AI/Wan2.2-TI2V-5B-Diffusers, `quantize`, `quantize_te` and `low_vram` on, `sample.num_frames` 121, `sample.fps`
24, `sample.width`/`height` 768, `sample.ctrl_img` shown), the sample defaults (`ui/src/helpers/defaultSamples.ts`:
30 steps, guidance 4; `jobConfig.ts`: qtype qfloat8) and `extensions_built_in/diffusion_models/wan22/
wan22_5b_model.py:Wan225bModel` (`scheduler_config` shift 5.0, `get_base_model_version` "wan_2.2_5b",
`get_bucket_divisibility` 32, `get_quantization_exclude_modules` ["condition_embedder*", "proj_out*"], and `generate_single_image`'s frame
snapping `((n - 1) // 4) * 4 + 1`, which rounds down: 8 -> 5).
"""
from __future__ import annotations

from types import MappingProxyType

from .. import latent_formats
from ..families.wan import samplers as wan_samplers
from ..families.wan.ti2v5b import Wan225bOptions
from ..quantize import QuantizeRule
from ..spec import (ControlSlot, GuidanceSpec, MediaSpec, ModelSpec, QuantSpec, SampleDefaults, SchedulerSpec,
                    SizeRule)
from .wan import WAN_LORA

ORDER = 73

# wan22_5b_model.py:scheduler_config (get_train_scheduler, previews since 0.9.3; UniPC flow_shift 5 before)
WAN22_5B_SCHEDULER = SchedulerSpec(wan_samplers.FLOWMATCH, MappingProxyType(
    {"num_train_timesteps": 1000, "shift": 5.0, "use_dynamic_shifting": False}), arch=wan_samplers.ARCH)
# GenerateImageConfig floors to 8 (min 64); Wan22Pipeline floors to 2 * scale_factor_spatial = 32, and so does
# generate_single_image with a control image (get_bucket_divisibility)
WAN22_5B_SIZE = SizeRule(divisor=8, minimum=64, pipeline_divisor=32)
FIRST_FRAME = ("optional first frame (ai-toolkit ctrl_img): LANCZOS-resized to the output size, VAE-encoded (a "
               "sample) into the first latent frame, which keeps timestep 0; without it the model renders text-to-video")
# quantize_model(transformer): blocks first, then the rest, without the conditioning embedders and proj_out
_RULE = QuantizeRule(blocks=("blocks",), exclude=("condition_embedder*", "proj_out*"))

SPECS = (
    ModelSpec(
        id="wan22_5b", label="Wan 2.2 TI2V 5B", family="wan", variant="ti2v5b", base_repo="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        pipeline_class="WanPipeline", defaults=SampleDefaults(steps=30, guidance_scale=4.0, width=768, height=768),
        scheduler=WAN22_5B_SCHEDULER, lora=WAN_LORA, size=WAN22_5B_SIZE, guidance=GuidanceSpec("cfg"),
        media=MediaSpec("video", frame_step=4, default_frames=121, fps=24, snap_offset=1),
        controls=(ControlSlot("control_image", False, FIRST_FRAME),),
        quant=QuantSpec(preset="qfloat8", components=("transformer", "text_encoder"),
                        rules=MappingProxyType({"transformer": _RULE})),
        preview=latent_formats.WAN22, base_versions=("wan_2.2_5b",), workflow="Wan 2.2 5B LoRA", options=Wan225bOptions(),
        notes="ai-toolkit's Wan22Pipeline with per-token timesteps (expand_timesteps): flow-match Euler shift 5 "
              "(UniPC for LoRAs from ai-toolkit < 0.9.3), true CFG in two passes; with a control image the first "
              "latent frame is the VAE-sampled image, at t = 0 and re-imposed after every step; 121 frames 4k+1 at "
              "24 fps, sizes floored to 32, Wan 2.2 VAE (48 channels, x16) decoded tiled as the low_vram preset "
              "does; preset quantizes the transformer (without the embedders and proj_out) and the UMT5 (qfloat8)"),
)
