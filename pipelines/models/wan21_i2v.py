"""Registry entries of Wan 2.1 image-to-video (`families/wan/i2v21.py`): the 14B 720p and 480p models.

Values from ai-toolkit 27a03a91: the UI presets `wan21_i2v:14b` / `wan21_i2v:14b480p` (`ui/src/app/jobs/new/
options.tsx`: repos, `quantize` and `quantize_te` on, no `low_vram`, `sample.num_frames` 41, `sample.fps` 16,
`sample.ctrl_img` shown), the sample defaults (`ui/src/helpers/defaultSamples.ts`: 1024x1024, 30 steps, guidance 4;
`jobConfig.ts`: qtype qfloat8) and `toolkit/models/wan21/wan21_i2v.py:Wan21I2V` (a `Wan21`: the same scheduler,
shift 3, base version "wan_2.1", transformer blocks ["blocks"], no quantization exclusions; the CLIP vision encoder
is loaded after the quantization and is never quantized).
"""
from __future__ import annotations

from types import MappingProxyType

from ..spec import ControlSlot, ModelSpec, QuantSpec
from .wan import WAN21_COMMON, _TRANSFORMER_RULE

ORDER = 71

I2V_IMAGE = ("the first frame (ai-toolkit ctrl_img): LANCZOS-resized to the output size, seen by the CLIP vision "
             "encoder and VAE-encoded (mode) as the conditioning of the first latent frame")
_COMMON = dict(WAN21_COMMON, pipeline_class="WanImageToVideoPipeline", variant="i2v21",
               controls=(ControlSlot("control_image", True, I2V_IMAGE),),
               quant=QuantSpec(preset="qfloat8", components=("transformer", "text_encoder"),
                               rules=MappingProxyType({"transformer": _TRANSFORMER_RULE})))
_NOTES = ("stock WanImageToVideoPipeline as ai-toolkit previews it: CLIP vision embeds (penultimate layer) of the "
          "control image, the first frame VAE-encoded (mode) with a 4-channel mask (36 input channels), noise drawn "
          "first; flow-match Euler shift 3 (UniPC for LoRAs from ai-toolkit < 0.9.3), true CFG in two passes, 41 "
          "frames 4k+1 at 16 fps, sizes floored to 16; preset quantizes the transformer and the UMT5 (qfloat8)")

SPECS = (
    ModelSpec(id="wan21_i2v_14b", label="Wan 2.1 I2V 14B 720p", base_repo="Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
              workflow="Wan 2.1 I2V 14B LoRA", notes=_NOTES, **_COMMON),
    ModelSpec(id="wan21_i2v_14b480p", label="Wan 2.1 I2V 14B 480p",
              base_repo="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", workflow="Wan 2.1 I2V 14B 480p LoRA",
              notes="as wan21_i2v_14b, on the 480p weights", **_COMMON),
)
