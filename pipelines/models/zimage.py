"""Registry entries of Z-Image (`families/zimage.py`): Z-Image-Turbo, Z-Image and Z-Image-De-Turbo.

Values from ai-toolkit 27a03a91: the UI presets `zimage:turbo`, `zimage`, `zimage:deturbo`
(`ui/src/app/jobs/new/options.tsx`; the sample defaults they do not set are `defaultSampleConfig` of
`ui/src/helpers/defaultSamples.ts`: 1024², guidance 4, 30 steps), `jobConfig.ts` (quantize + quantize_te, qfloat8),
and `extensions_built_in/diffusion_models/z_image/z_image.py:ZImageModel` (scheduler, divisor, CFG, quantization).
"""
from __future__ import annotations

from types import MappingProxyType

from .. import latent_formats
from ..families.zimage import ZImageOptions
from ..quantize import QuantizeRule
from ..spec import GuidanceSpec, LoraLayout, ModelSpec, QuantSpec, SampleDefaults, SchedulerSpec, SizeRule

ORDER = 30

# z_image.py `scheduler_config`: static shift 3 (ZImagePipeline passes sigmas linspace(1, 1/N, N); mu is ignored)
ZIMAGE_CONFIG = MappingProxyType({"num_train_timesteps": 1000, "use_dynamic_shifting": False, "shift": 3.0})
# ZImageTransformer2DModel.get_quantization_exclude_modules (toolkit/models/v2/z_image.py), applied by the mixin's
# `quantize_` after the `layers` blocks (quantized one at a time with no exclusions: the patterns match none there)
_TRANSFORMER_RULE = QuantizeRule(exclude=("t_embedder*", "cap_embedder*", "all_x_embedder*", "all_final_layer*",
                                          "siglip_embedder*"), blocks=("layers",))
# `quantize` → the transformer at load (qtype qfloat8); `quantize_te` → `quantize(text_encoder, qtype_te)`, whole.
# The Turbo preset's training adapter makes ai-toolkit quantize after merging it, with torchao "float8" instead
# (`load_model`: qfloat8 → float8; `quantize_model` with the same block list and exclusions, every Linear handed to
# torchao's `quantize_`), the text encoder still with `qtype_te` qfloat8: families/zimage.py `base_for` loads that
# base (quantize/torchao.py; needs the torchao package).
_QUANT = QuantSpec(preset="qfloat8", components=("transformer", "text_encoder"), te_components=("text_encoder",),
                   rules=MappingProxyType({"transformer": _TRANSFORMER_RULE}))
_COMMON = dict(
    family="zimage", pipeline_class="ZImagePipeline",
    scheduler=SchedulerSpec("flowmatch", ZIMAGE_CONFIG, arch="flow"),
    lora=LoraLayout(peft_prefixes=MappingProxyType({"diffusion_model": "transformer", "transformer": "transformer"})),
    # GenerateImageConfig: max(64, x - x % 8); generate_single_image: x // 16 * 16
    size=SizeRule(divisor=8, minimum=64, pipeline_divisor=16),
    # generate_single_image: guidance_scale = max(0, cfg - 1); ZImagePipeline runs CFG iff that is > 0
    guidance=GuidanceSpec("cfg", threshold=1.0, offset=-1.0, floor=0.0),
    quant=_QUANT, base_versions=("zimage",), preview=latent_formats.FLUX, options=ZImageOptions(),
)
_NOTES = ("flowmatch with static shift 3, CFG = max(0, cfg - 1) with the encoded negative, Qwen3 chat template 512 "
          "tokens (hidden_states[-2], pads dropped), fp32 latents, sizes floored to 16; qfloat8 preset")

SPECS = (
    ModelSpec(
        id="zimage_turbo", label="Z-Image-Turbo", base_repo="Tongyi-MAI/Z-Image-Turbo", workflow="Z-Image-Turbo LoRA",
        defaults=SampleDefaults(steps=9, guidance_scale=1.0, width=1024, height=1024),
        notes=_NOTES + "; cfg 1 = no CFG (the negative is unused); the preset's training adapter is an option",
        **_COMMON),
    ModelSpec(
        id="zimage", label="Z-Image", base_repo="Tongyi-MAI/Z-Image", workflow="Z-Image LoRA",
        defaults=SampleDefaults(steps=30, guidance_scale=4.0, width=1024, height=1024), notes=_NOTES, **_COMMON),
    ModelSpec(
        id="zimage_deturbo", label="Z-Image-De-Turbo", base_repo="ostris/Z-Image-De-Turbo", variant="deturbo",
        workflow="Z-Image-De-Turbo LoRA", defaults=SampleDefaults(steps=25, guidance_scale=3.0, width=1024, height=1024),
        notes=_NOTES + "; transformer of ostris/Z-Image-De-Turbo, the other parts of Tongyi-MAI/Z-Image-Turbo",
        **_COMMON),
)
