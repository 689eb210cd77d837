"""Registry entries of the Stable Diffusion family (`families/sd/`): SD 1.5 and SDXL.

Values from ai-toolkit 27a03a91: the UI presets (`ui/src/app/jobs/new/options.tsx`, `ui/src/helpers/defaultSamples.ts`)
for the sample defaults, `toolkit/sampler.py` and the pipelines of `toolkit/stable_diffusion_model.py` for the scheduler.
"""
from __future__ import annotations

from types import MappingProxyType

from .. import latent_formats
from ..spec import GuidanceSpec, LoraLayout, ModelSpec, SampleDefaults, SchedulerSpec

ORDER = 0  # position of these entries in the registry (the loader's model list)

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


def _sd_scheduler(steps_offset: int) -> SchedulerSpec:
    return SchedulerSpec("ddpm", MappingProxyType(dict(AITK_SD_SCHEDULER_CONFIG, steps_offset=steps_offset)))


SPECS = (
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
        preview=latent_formats.SD15,
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
        preview=latent_formats.SDXL,
        workflow="SDXL LoRA",
        notes="ai-toolkit SDXL preset: ddpm, guidance 6, 1024x1024; steps_offset 0; no watermark",
    ),
)
