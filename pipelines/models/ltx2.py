"""Registry entries of the LTX-2 family (`families/ltx2/`): LTX-2 and LTX-2.3 text-to-video with audio.

Values from ai-toolkit 27a03a91: the UI presets `ltx2` / `ltx2.3` (`ui/src/app/jobs/new/options.tsx`: repos,
`quantize` and `quantize_te` on, `sample.num_frames` 121, `sample.fps` 24, 768x768), the sample defaults
(`ui/src/helpers/defaultSamples.ts` `defaultSampleConfig`: 30 steps, guidance 4; `jobConfig.ts`: qtype qfloat8) and
`extensions_built_in/diffusion_models/ltx2/ltx2.py` (`scheduler_config`: dynamic shift 0.95..2.05 over
1024..4096 tokens, exponential time shift, shift_terminal 0.1; `get_bucket_divisibility` 32;
`get_base_model_version` "ltx2" for both; 2.3's preset `name_or_path` is the single file
`Lightricks/LTX-2.3/ltx-2.3-22b-dev.safetensors`, its Gemma 3 `ltx_te_path`; `get_transformer_block_names` ["transformer_blocks"]; no quantization
exclusions; frames snapped to `((n-1)//8)*8+1`; a `ctrl_img` switches the preview to `LTX2ImageToVideoPipeline`).
"""
from __future__ import annotations

from types import MappingProxyType

from .. import latent_formats
from ..families.ltx2.decode import LTX2Options
from ..quantize import QuantizeRule
from ..spec import (ControlSlot, GuidanceSpec, LoraLayout, MediaSpec, ModelSpec, QuantSpec, SampleDefaults,
                    SchedulerSpec, SizeRule)

ORDER = 80

# ltx2.py:scheduler_config, what LTX2Model.get_train_scheduler builds (and get_generation_pipeline samples with);
# the folder's own scheduler is ignored
LTX2_SCHEDULER_CONFIG = MappingProxyType({
    "base_image_seq_len": 1024, "base_shift": 0.95, "invert_sigmas": False, "max_image_seq_len": 4096,
    "max_shift": 2.05, "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.1, "stochastic_sampling": False,
    "time_shift_type": "exponential", "use_beta_sigmas": False, "use_dynamic_shifting": True,
    "use_exponential_sigmas": False, "use_karras_sigmas": False})
LTX2_SCHEDULER = SchedulerSpec("flowmatch", LTX2_SCHEDULER_CONFIG, arch="flow")
LTX2_DEFAULTS = SampleDefaults(steps=30, guidance_scale=4.0, width=768, height=768)
# GenerateImageConfig floors to 8 (min 64); generate_single_image floors again to get_bucket_divisibility() = 32
LTX2_SIZE = SizeRule(divisor=8, minimum=64, pipeline_divisor=32)
LTX2_MEDIA = MediaSpec("video+audio", frame_step=8, default_frames=121, fps=24, snap_offset=1)
# ai-toolkit's saved layout (`diffusion_model.transformer_blocks.N…`); Diffusers' `transformer.` prefix too
LTX2_LORA = LoraLayout(peft_prefixes=MappingProxyType({"diffusion_model": "transformer",
                                                       "transformer": "transformer"}))
# quantize_model(self, transformer): each of `transformer_blocks` first, then the rest, no exclusions;
# quantize_te: plain quantize(text_encoder) + freeze
LTX2_QUANT = QuantSpec(preset="qfloat8", components=("transformer", "text_encoder"),
                       rules=MappingProxyType({"transformer": QuantizeRule(blocks=("transformer_blocks",))}))
# ai-toolkit previews with LTX2ImageToVideoPipeline when the sample has a ctrl_img (generate_single_image): optional,
# text-to-video without it (families/ltx2: generate)
LTX2_I2V = ControlSlot("control_image", False, "ai-toolkit's ctrl_img: image-to-video from this first frame "
                                               "(LTX2ImageToVideoPipeline); without it, text-to-video")
LTX2_COMMON = dict(family="ltx2", pipeline_class="LTX2Pipeline", defaults=LTX2_DEFAULTS, scheduler=LTX2_SCHEDULER,
                   controls=(LTX2_I2V,), lora=LTX2_LORA, size=LTX2_SIZE, guidance=GuidanceSpec("cfg"),
                   media=LTX2_MEDIA, quant=LTX2_QUANT, preview=latent_formats.LTXV, base_versions=("ltx2",),
                   options=LTX2Options())  # low_vram: the presets' framewise decode (families/ltx2)

SPECS = (
    ModelSpec(
        id="ltx2", label="LTX-2", base_repo="Lightricks/LTX-2", variant="2.0", workflow="LTX-2 LoRA",
        single_file_config="ltx2", checkpoint_marker="model.diffusion_model.av_ca_a2v_gate_adaln_single.",
        notes="LTX2Pipeline with the pipeline's own guidance defaults (CFG + STG on block 28 + modality isolation, "
              "rescale 0.7, audio guidance 7: three transformer calls per step); 121 frames 8k+1, audio at the "
              "vocoder rate; fps only sets the file's rate (the pipeline runs at 24); preset quantizes the "
              "transformer and the Gemma 3 (qfloat8); a control image: LTX2ImageToVideoPipeline (first frame, "
              "H.264 CRF 33 round trip through av)",
        **LTX2_COMMON),
    ModelSpec(
        id="ltx2.3", label="LTX-2.3", base_repo="Lightricks/LTX-2.3", variant="2.3", workflow="LTX-2.3 LoRA",
        single_file_config="ltx2.3", checkpoint_marker="model.diffusion_model.prompt_adaln_single.",
        notes="as ltx2, with ai-toolkit's explicit 2.3 guidance values (the same numbers, plus audio rescale 0.7 and "
              "cross timesteps) and the bandwidth-extension vocoder; base default is the preset's single file "
              "ltx-2.3-22b-dev.safetensors (Lightricks' layout, converted on load) with the Gemma 3 of "
              "Lightricks/gemma-3-12b-it-qat-q4_0-unquantized, as ai-toolkit loads them",
        **LTX2_COMMON),
)
