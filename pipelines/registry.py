"""The model registry: one `ModelSpec` per model id, holding everything that decides the picture.

Values are read from ostris/ai-toolkit at commit `AITK_COMMIT` (version `AITK_VERSION`): the UI presets in
`ui/src/app/jobs/new/options.tsx` and `ui/src/helpers/defaultSamples.ts` for the sample defaults, and
`toolkit/sampler.py` plus the pipelines ai-toolkit builds in `toolkit/stable_diffusion_model.py` for the scheduler.
Everything about one model is found here plus its family module (`pipelines/families/<family>.py`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .errors import UnknownModelError

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
class SampleDefaults:
    """ai-toolkit's own sample defaults for the model's UI preset (what "model default" means in the nodes)."""
    steps: int
    guidance_scale: float
    width: int
    height: int


@dataclass(frozen=True)
class SchedulerSpec:
    """The sampler ai-toolkit previews this model with, and the scheduler config its pipeline ends up using.

    `config` is the *effective* config: e.g. Diffusers' StableDiffusionPipeline constructor rewrites ai-toolkit's
    `steps_offset: 0` to 1, so SD1.5 previews really sample with 1 while SDXL keeps 0."""
    default_sampler: str
    config: Mapping[str, object]
    arch: str = "sd"


@dataclass(frozen=True)
class LoraLayout:
    """How ai-toolkit names this model's LoRA keys.

    `kohya_prefixes` maps a kohya key prefix (`lora_unet`, `lora_te1` …) to the pipeline component it targets;
    `peft_prefixes` does the same for peft/Diffusers keys (`unet.`, `text_encoder.` …). `sgm_unet` says the UNet
    may also be named with original SGM/LDM module names (SDXL files of 2023-09 … 2024-07)."""
    kohya_prefixes: Mapping[str, str]
    peft_prefixes: Mapping[str, str]
    sgm_unet: bool = False


@dataclass(frozen=True)
class ModelSpec:
    id: str
    label: str
    family: str                      # module name under pipelines/families/
    base_repo: str                   # Hugging Face repo id of the base ai-toolkit's UI preset trains on
    pipeline_class: str              # Diffusers pipeline class name
    defaults: SampleDefaults
    scheduler: SchedulerSpec
    lora: LoraLayout
    size_divisor: int = 8
    size_min: int = 64
    vae_scale_factor: int = 8
    guidance: str = "cfg"            # "cfg": classic classifier-free guidance, active when > 1
    guidance_rescale: bool = False   # whether the pipeline honours ai-toolkit's guidance_rescale (`--gr`)
    negative: str = "encoded"        # "encoded": the negative (also "") is text-encoded, never zeros
    control_image: str | None = None  # None: no control image; otherwise what the model needs it for
    base_versions: tuple[str, ...] = ()  # `ss_base_model_version` values ai-toolkit writes for this model
    single_file_config: str | None = None  # folder under pipelines/configs/ for single-file checkpoints
    checkpoint_marker: str | None = None   # a key prefix only this model's single-file checkpoints have
    latent_rgb_factors: tuple[tuple[float, float, float], ...] = ()
    latent_rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    notes: str = ""
    extra: Mapping[str, object] = field(default_factory=dict)


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
        latent_rgb_factors=_SD15_RGB,
        notes="ai-toolkit SD 1.5 preset: ddpm, guidance 6, 512x512; steps_offset 1 (pipeline constructor rewrite)",
    ),
    ModelSpec(
        id="sdxl",
        label="Stable Diffusion XL 1.0",
        family="sd",
        base_repo="stabilityai/stable-diffusion-xl-base-1.0",
        pipeline_class="StableDiffusionXLPipeline",
        defaults=SampleDefaults(steps=30, guidance_scale=6.0, width=1024, height=1024),
        scheduler=_sd_scheduler(steps_offset=0),
        lora=LoraLayout(
            kohya_prefixes=MappingProxyType({"lora_unet": "unet", "lora_te1": "text_encoder",
                                             "lora_te2": "text_encoder_2"}),
            peft_prefixes=MappingProxyType({"unet": "unet", "text_encoder": "text_encoder",
                                            "text_encoder_2": "text_encoder_2"}),
            sgm_unet=True,
        ),
        guidance_rescale=True,
        base_versions=("sdxl_1.0", "sdxl", "sdxl_base_v1-0"),
        single_file_config="sdxl",
        checkpoint_marker="conditioner.embedders.1.",
        latent_rgb_factors=_SDXL_RGB,
        latent_rgb_bias=(-0.1, -0.1, -0.1),
        notes="ai-toolkit SDXL preset: ddpm, guidance 6, 1024x1024; steps_offset 0; no watermark",
    ),
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
    """Floor a requested size to the model's divisor with its minimum, as ai-toolkit's GenerateImageConfig does."""
    d, lo = spec.size_divisor, spec.size_min
    return max(lo, width - width % d), max(lo, height - height % d)
