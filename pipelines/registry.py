"""The model registry: one `ModelSpec` per model id, holding everything that decides the picture.

Values are read from ostris/ai-toolkit at commit `AITK_COMMIT` (version `AITK_VERSION`): the UI presets in
`ui/src/app/jobs/new/options.tsx` and `ui/src/helpers/defaultSamples.ts` for the sample defaults, and
`toolkit/sampler.py` plus the pipelines ai-toolkit builds in `toolkit/stable_diffusion_model.py` for the scheduler.
Everything about one model is found here plus its family module (`pipelines/families/<family>.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from .errors import UnknownModelError
from .families.flux.options import FluxOptions
from .flowmatch import FLUX_CONFIG
from .spec import (ControlSlot, GuidanceSpec, LatentPreview, LoraLayout, MediaSpec, QuantSpec, SampleDefaults,
                   SchedulerSpec, SizeRule)

AITK_COMMIT = "27a03a91"
AITK_VERSION = "0.12.26"

# toolkit/sampler.py `sd_config`: what `get_sampler(name, {...}, arch="sd")` starts from.
AITK_SD_SCHEDULER_CONFIG = MappingProxyType({
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 0,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "sample_max_value": 1.0,
    "prediction_type": "epsilon",
})


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides one model's preview, in typed parts (`spec.py`). `family` names the module under
    `pipelines/families/`; `variant` picks one of its `VARIANTS` (a Family subclass); `options` is that family's own
    options dataclass (what only it needs)."""
    id: str
    label: str
    family: str
    base_repo: str                   # Hugging Face repo id of the base ai-toolkit's UI preset trains on
    pipeline_class: str              # Diffusers pipeline class name (a base folder's model_index.json must match)
    defaults: SampleDefaults
    scheduler: SchedulerSpec
    lora: LoraLayout
    variant: str = ""
    compatible_pipelines: tuple[str, ...] = ()  # other model_index classes whose folders hold the same parts
    size: SizeRule = SizeRule()
    guidance: GuidanceSpec = GuidanceSpec()
    media: MediaSpec = MediaSpec()
    controls: tuple[ControlSlot, ...] = ()
    quant: QuantSpec = QuantSpec()
    base_versions: tuple[str, ...] = ()  # `ss_base_model_version` values ai-toolkit writes for this model
    single_file_config: str | None = None  # folder under pipelines/configs/ for single-file checkpoints
    checkpoint_marker: str | None = None   # a key prefix only this model's single-file checkpoints have
    preview: LatentPreview = LatentPreview()
    options: object = None
    workflow: str = ""               # the example workflow's file name under example_workflows/ (without .json)
    notes: str = ""


def _sd_scheduler(steps_offset: int) -> SchedulerSpec:
    return SchedulerSpec("ddpm", MappingProxyType(dict(AITK_SD_SCHEDULER_CONFIG, steps_offset=steps_offset)))


# ComfyUI's latent_formats.SD15 / SDXL preview factors (latent channel -> RGB), used for live previews only.
_SD15_RGB = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721),
             (-0.2120, -0.2616, -0.7177))
_SDXL_RGB = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
             (-0.3165, -0.2492, -0.2188))

_SPECS = (
    ModelSpec(
        id="sd15",
        label="Stable Diffusion 1.5",
        family="sd",
        base_repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
        pipeline_class="StableDiffusionPipeline",
        defaults=SampleDefaults(steps=30, guidance_scale=6.0, width=512, height=512),
        scheduler=_sd_scheduler(steps_offset=1),
        lora=LoraLayout(
            kohya_prefixes=MappingProxyType({"lora_unet": "unet", "lora_te": "text_encoder"}),
            peft_prefixes=MappingProxyType({"unet": "unet", "text_encoder": "text_encoder"}),
        ),
        base_versions=("sd_1.5", "sd_v1", "sd1"),
        single_file_config="sd15",
        checkpoint_marker="cond_stage_model.transformer.",
        preview=LatentPreview(_SD15_RGB),
        workflow="SD1.5 LoRA",
        notes="ai-toolkit SD 1.5 preset: ddpm, guidance 6, 512x512; steps_offset 1 (pipeline constructor rewrite)",
    ),
    ModelSpec(
        id="sdxl",
        label="Stable Diffusion XL 1.0",
        family="sd",
        base_repo="stabilityai/stable-diffusion-xl-base-1.0",
        pipeline_class="StableDiffusionXLPipeline",
        variant="xl",
        defaults=SampleDefaults(steps=30, guidance_scale=6.0, width=1024, height=1024),
        scheduler=_sd_scheduler(steps_offset=0),
        lora=LoraLayout(
            kohya_prefixes=MappingProxyType({"lora_unet": "unet", "lora_te1": "text_encoder",
                                             "lora_te2": "text_encoder_2"}),
            peft_prefixes=MappingProxyType({"unet": "unet", "text_encoder": "text_encoder",
                                            "text_encoder_2": "text_encoder_2"}),
        ),
        guidance=GuidanceSpec("cfg", rescale=True),
        base_versions=("sdxl_1.0", "sdxl", "sdxl_base_v1-0"),
        single_file_config="sdxl",
        checkpoint_marker="conditioner.embedders.1.",
        preview=LatentPreview(_SDXL_RGB, (-0.1, -0.1, -0.1)),
        workflow="SDXL LoRA",
        notes="ai-toolkit SDXL preset: ddpm, guidance 6, 1024x1024; steps_offset 0; no watermark",
    ),
)

# ComfyUI's latent_formats.Flux preview factors (16 latent channels).
_FLUX_RGB = ((-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
             (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
             (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
             (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
             (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
             (-0.1262, -0.0982, -0.0778))
_FLUX_PREVIEW = LatentPreview(_FLUX_RGB, (-0.0329, -0.0718, -0.0851))
# ai-toolkit's FLUX-family UI presets (options.tsx): flowmatch sampler; quantize + quantize_te with qfloat8
# (jobConfig.ts); sample defaults 1024², 30 steps, guidance 4 (defaultSamples.ts).
_FLOW_DEFAULTS = SampleDefaults(steps=30, guidance_scale=4.0, width=1024, height=1024)
_FLUX_SCHEDULER = SchedulerSpec("flowmatch", FLUX_CONFIG, arch="flux")
_FLUX_SIZE = SizeRule(divisor=8, minimum=64, pipeline_divisor=16)
_FLUX_QUANT = QuantSpec(preset="qfloat8", components=("transformer", "text_encoder_2"))
_FLUX_LORA = LoraLayout(
    kohya_prefixes=MappingProxyType({"lora_unet": "transformer", "lora_te1": "text_encoder"}),
    peft_prefixes=MappingProxyType({"transformer": "transformer", "diffusion_model": "transformer",
                                    "text_encoder": "text_encoder"}),
)
_FLUX_COMMON = dict(family="flux", compatible_pipelines=("FluxPipeline", "FluxKontextPipeline"), defaults=_FLOW_DEFAULTS, scheduler=_FLUX_SCHEDULER, lora=_FLUX_LORA,
                    size=_FLUX_SIZE, guidance=GuidanceSpec("embedded"), quant=_FLUX_QUANT, preview=_FLUX_PREVIEW,
                    options=FluxOptions())

_SPECS += (
    ModelSpec(
        id="flux", label="FLUX.1-dev", base_repo="black-forest-labs/FLUX.1-dev", pipeline_class="FluxPipeline",
        base_versions=("flux.1",), workflow="FLUX.1 LoRA",
        notes="flowmatch with dynamic shift, guidance embedding only, T5 512 tokens unmasked, qfloat8 preset",
        **_FLUX_COMMON),
    ModelSpec(
        id="flex1", label="Flex.1-alpha", base_repo="ostris/Flex.1-alpha", pipeline_class="FluxPipeline",
        base_versions=("flux.1", "flex.1"), workflow="Flex.1 LoRA",
        notes="ai-toolkit maps arch flex1 to flux: FLUX.1 previews; the guidance bypass is training-only",
        **_FLUX_COMMON),
    ModelSpec(
        id="flux_kontext", label="FLUX.1-Kontext-dev", base_repo="black-forest-labs/FLUX.1-Kontext-dev",
        pipeline_class="FluxKontextPipeline", variant="kontext",
        controls=(ControlSlot("control_image", True, "the image to edit (ai-toolkit ctrl_img), resized to the "
                                                     "output size with BILINEAR as ai-toolkit does"),),
        base_versions=("flux.1_kontext", "flux.1"), workflow="FLUX.1 Kontext LoRA",
        notes="FLUX.1 sampling with the control image as extra tokens; qfloat8 preset; no attn_masking option "
              "(FluxKontextModel.get_prompt_embeds has none)",
        **dict(_FLUX_COMMON, options=None)),
)

# Flex.2-preview: ai-toolkit's own Flex2Pipeline (extensions_built_in/flex2), re-implemented in families/flux/flex2.py.
# pipeline_class FluxPipeline: the tiny folders say so, and the repo is loaded elsewhere with
# `AutoPipelineForText2Image.from_pretrained(..., custom_pipeline=...)`, which needs a Diffusers class name there (not
# checked against the Hub file; a list-form `_class_name` passes the folder check as well). ai-toolkit loads the
# components one by one and never reads it. No attn_masking option (Flex2.get_prompt_embeds has none).
_SPECS += (
    ModelSpec(
        id="flex2", label="Flex.2-preview", base_repo="ostris/Flex.2-preview", pipeline_class="FluxPipeline",
        variant="flex2",
        controls=(ControlSlot("control_image", False, "a depth/line/pose control image (ai-toolkit ctrl_img with "
                                                      "ctrl_idx 1); without one Flex.2 renders as ai-toolkit's "
                                                      "previews do: inpaint mask of ones, zero latents"),),
        base_versions=("flex2",), workflow="Flex.2 LoRA",
        notes="Flex2Pipeline math: 196-channel input (latents | zero inpaint latent + mask of ones | control), "
              "control image LANCZOS + VAE sample drawn before the noise; FLUX.1 sampling otherwise; qfloat8 preset",
        **dict(_FLUX_COMMON, options=None)),
)

# Chroma1-Base: ai-toolkit's ChromaModel (extensions_built_in/diffusion_models/chroma), previewed through Diffusers'
# ChromaPipeline in families/chroma.py. The T5 is `text_encoder` here (ai-toolkit: text_encoder_2, quantize_te).
# A single file is ai-toolkit's BFL-layout transformer; `single_file_config` names no shipped folder: the family takes
# the config and the T5/VAE from a Diffusers folder beside the file or from the HF cache (as ai-toolkit does).
_SPECS += (
    ModelSpec(
        id="chroma", label="Chroma1-Base", base_repo="lodestones/Chroma1-Base", pipeline_class="ChromaPipeline",
        base_versions=("chroma",), workflow="Chroma LoRA", single_file_config="chroma",
        checkpoint_marker="distilled_guidance_layer.",
        notes="flowmatch with dynamic shift, true CFG with the negative iff guidance > 1.00001, T5 512 tokens run "
              "unmasked + bool mask of the tokens and one pad, approximator RMSNorm eps 1e-6; qfloat8 preset",
        **dict(_FLUX_COMMON, family="chroma", guidance=GuidanceSpec("true_cfg", threshold=1.00001),
               quant=QuantSpec(preset="qfloat8", components=("transformer", "text_encoder")),
               lora=LoraLayout(kohya_prefixes=MappingProxyType({"lora_unet": "transformer"}),
                               peft_prefixes=MappingProxyType({"diffusion_model": "transformer",
                                                               "transformer": "transformer"})),
               options=None)),
)

REGISTRY: Mapping[str, ModelSpec] = MappingProxyType({s.id: s for s in _SPECS})


def model_ids() -> list[str]:
    return list(REGISTRY)


def get_spec(model_id: str) -> ModelSpec:
    try:
        return REGISTRY[model_id]
    except KeyError:
        raise UnknownModelError(
            f"Unknown model id {model_id!r}. Known ids: {', '.join(REGISTRY)}. "
            "Pick one of these in LoadAIToolkitPipeline (or --model on the command line).") from None


def floor_size(spec: ModelSpec, width: int, height: int) -> tuple[int, int]:
    """The size ai-toolkit's `GenerateImageConfig` holds for a requested one (`SizeRule.config_floor`); the
    rendered image may be floored once more by the pipeline (`SizeRule.floor`)."""
    return spec.size.config_floor(width, height)
