"""Registry entries of the Qwen-Image family (`families/qwen/`): Qwen-Image, Qwen-Image-2512, Qwen-Image-Edit,
Qwen-Image-Edit-2509 (`qwen_image_edit_plus`) and Qwen-Image-Edit-2511.

Values from ai-toolkit 27a03a91: the UI presets (`ui/src/app/jobs/new/options.tsx`: `qwen_image`, `qwen_image:2512`,
`qwen_image_edit`, `qwen_image_edit_plus`, `qwen_image_edit_plus:2511`; `ModelConfig` strips the `:tag`, so 2512 is
QwenImageModel and 2511 is QwenImageEditPlusModel), `ui/src/helpers/defaultSamples.ts` (1024², 30 steps, guidance 4)
and `extensions_built_in/diffusion_models/qwen_image/` (the scheduler config, `get_bucket_divisibility` 32,
`get_base_model_version` "qwen_image" for all five, `get_transformer_block_names` ["transformer_blocks"]).
"""
from __future__ import annotations

from types import MappingProxyType

from .. import latent_formats
from ..families.qwen.options import QwenEditOptions
from ..quantize import QuantizeRule
from ..spec import (ControlSlot, GuidanceSpec, LoraLayout, ModelSpec, QuantSpec, SampleDefaults,
                    SchedulerSpec, SizeRule)

ORDER = 50

# qwen_image.py:scheduler_config (the Qwen-Image repo's scheduler): dynamic shift over 256..8192 tokens, 0.5..0.9,
# exponential time shift, shift_terminal 0.02. Every Qwen model previews with it (`get_train_scheduler`).
QWEN_CONFIG = MappingProxyType({
    "base_image_seq_len": 256, "base_shift": 0.5, "invert_sigmas": False, "max_image_seq_len": 8192,
    "max_shift": 0.9, "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.02,
    "stochastic_sampling": False, "time_shift_type": "exponential", "use_beta_sigmas": False,
    "use_dynamic_shifting": True, "use_exponential_sigmas": False, "use_karras_sigmas": False,
})
# Every preset: `quantize: true`, `quantize_te: true`, `qtype: qfloat8` (options.tsx; jobConfig.ts qtype_te
# qfloat8). The transformer goes through `quantize_model` (block by block over `transformer_blocks`, no exclusions:
# QwenImageModel has no `get_quantization_exclude_modules`), the text encoder through a plain `quantize` with
# `qtype_te` (its vision tower included for the edit models; removed before that for Qwen-Image). The presets'
# "3 bit with ARA" / "4 bit with ARA" (`accuracyRecoveryAdapters`: uintN + the ostris/accuracy_recovery_adapters file
# of that model) and the UI's plain uint2..uint7 are reproduced too (quantize/ara.py, quantize/uintx.py).
UINTX = tuple(f"uint{bits}" for bits in range(2, 8))
ARA_REPO = "ostris/accuracy_recovery_adapters"


def _quant(*adapters):
    return QuantSpec(preset="qfloat8", components=("transformer", "text_encoder"), te_components=("text_encoder",),
                     rules=MappingProxyType({"transformer": QuantizeRule(blocks=("transformer_blocks",))}),
                     qtypes=tuple(f"{a.split('_torchao_')[1].split('.')[0]}|{ARA_REPO}/{a}" for a in adapters) + UINTX)


_LORA = LoraLayout(peft_prefixes=MappingProxyType({"diffusion_model": "transformer", "transformer": "transformer"}))
COMMON = dict(
    family="qwen", defaults=SampleDefaults(steps=30, guidance_scale=4.0, width=1024, height=1024),
    scheduler=SchedulerSpec("flowmatch", QWEN_CONFIG, arch="flow"), lora=_LORA,
    size=SizeRule(divisor=8, minimum=64, pipeline_divisor=32), guidance=GuidanceSpec("true_cfg", threshold=1.0),
    preview=latent_formats.WAN21, base_versions=("qwen_image",),
    compatible_pipelines=("QwenImagePipeline", "QwenImageEditPipeline", "QwenImageEditPlusPipeline"))

_EDIT_IMAGE = ("the image to edit (ai-toolkit ctrl_img): the Qwen2.5-VL encoder sees it bilinear-resized to a "
               "1024² area, the VAE sees it resized to the output size, then LANCZOS to a 1024² area")
_PLUS_IMAGE = ("reference image {n} (ai-toolkit ctrl_img_{n}): the Qwen2.5-VL encoder sees it bilinear-resized to a "
               "384² area, the VAE LANCZOS-resized to a 1024² area (its own aspect ratio, not the output's)")
_PLUS_CONTROLS = (ControlSlot("control_image", True, _PLUS_IMAGE.format(n=1)),
                  ControlSlot("control_image_2", False, _PLUS_IMAGE.format(n=2)),
                  ControlSlot("control_image_3", False, _PLUS_IMAGE.format(n=3)))
_T2I_NOTES = ("flowmatch with Qwen's dynamic shift (exponential, 256..8192 tokens, shift_terminal 0.02), true CFG = "
              "guidance with the encoded negative (\"\" included) and the CFG norm rescale; sizes floored to 32; "
              "text encoder without its vision tower; qfloat8 preset (transformer + text encoder)")
_PLUS_NOTES = ("1-3 reference images, twice: in the Qwen2.5-VL prompt (bilinear 384² area, ai-toolkit's double "
               "1/255 rescale) and as VAE tokens (LANCZOS 1024² area, mode); true CFG without the norm rescale "
               "unless do_cfg_norm; output at the node's size; qfloat8 preset")

SPECS = (
    ModelSpec(id="qwen_image", label="Qwen-Image", base_repo="Qwen/Qwen-Image", pipeline_class="QwenImagePipeline",
              workflow="Qwen-Image LoRA", notes=_T2I_NOTES, quant=_quant("qwen_image_torchao_uint3.safetensors"),
              **COMMON),
    ModelSpec(id="qwen_image_2512", label="Qwen-Image-2512", base_repo="Qwen/Qwen-Image-2512",
              pipeline_class="QwenImagePipeline", workflow="Qwen-Image-2512 LoRA",
              notes="ai-toolkit's qwen_image:2512 preset: QwenImageModel on the 2512 weights; " + _T2I_NOTES,
              quant=_quant("qwen_image_2512_torchao_uint3.safetensors", "qwen_image_2512_torchao_uint4.safetensors"),
              **COMMON),
    ModelSpec(id="qwen_image_edit", label="Qwen-Image-Edit", base_repo="Qwen/Qwen-Image-Edit",
              pipeline_class="QwenImageEditPipeline", variant="edit",
              controls=(ControlSlot("control_image", True, _EDIT_IMAGE),), workflow="Qwen-Image-Edit LoRA",
              notes="one control image, in the Qwen2.5-VL prompt (bilinear 1024² area, double 1/255 rescale) and as "
                    "VAE tokens (BILINEAR to the output size, then LANCZOS 1024² area); true CFG with the norm "
                    "rescale (stock QwenImageEditPipeline); qfloat8 preset",
              quant=_quant("qwen_image_edit_torchao_uint3.safetensors"), **COMMON),
    ModelSpec(id="qwen_image_edit_plus", label="Qwen-Image-Edit-2509", base_repo="Qwen/Qwen-Image-Edit-2509",
              pipeline_class="QwenImageEditPlusPipeline", variant="edit_plus", controls=_PLUS_CONTROLS,
              workflow="Qwen-Image-Edit-2509 LoRA", notes=_PLUS_NOTES, options=QwenEditOptions(),
              quant=_quant("qwen_image_edit_2509_torchao_uint3.safetensors"), **COMMON),
    ModelSpec(id="qwen_image_edit_plus_2511", label="Qwen-Image-Edit-2511", base_repo="Qwen/Qwen-Image-Edit-2511",
              pipeline_class="QwenImageEditPlusPipeline", variant="edit_plus", controls=_PLUS_CONTROLS,
              workflow="Qwen-Image-Edit-2511 LoRA",
              notes="ai-toolkit's qwen_image_edit_plus:2511 preset: QwenImageEditPlusModel on the 2511 weights (its "
                    "transformer config's zero_cond_t is read by Diffusers); " + _PLUS_NOTES,
              options=QwenEditOptions(), quant=_quant("qwen_image_edit_2511_torchao_uint3.safetensors"), **COMMON),
)
