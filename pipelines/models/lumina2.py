"""Registry entry of Lumina-Image 2.0 (`families/lumina2.py`).

Values from ai-toolkit 27a03a91: the UI preset `lumina2` (`ui/src/app/jobs/new/options.tsx`: repo
Alpha-VLLM/Lumina-Image-2.0, `quantize: false`, `quantize_te: true`, sampler flowmatch), `jobConfig.ts` (qtype
qfloat8), `ui/src/helpers/defaultSamples.ts` (1024², 30 steps, guidance 4), `toolkit/sampler.py` (`lumina2_config`)
and the lumina2 branches of `toolkit/stable_diffusion_model.py` (no extension class has arch lumina2).
"""
from __future__ import annotations

from types import MappingProxyType

from .. import latent_formats
from ..spec import GuidanceSpec, LoraLayout, ModelSpec, QuantSpec, SampleDefaults, SchedulerSpec, SizeRule

ORDER = 40

# toolkit/sampler.py:lumina2_config, as written (shift 6.0, no dynamic shift).
AITK_LUMINA2_CONFIG = MappingProxyType({
    "base_image_seq_len": 256, "base_shift": 0.5, "invert_sigmas": False, "max_image_seq_len": 4096,
    "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 6.0, "shift_terminal": None, "use_beta_sigmas": False,
    "use_dynamic_shifting": False, "use_exponential_sigmas": False, "use_karras_sigmas": False,
})
# What previews really sample with: shift 1.0. `get_sampler('flowmatch', arch='lumina2')` builds
# `CustomFlowMatchEulerDiscreteScheduler.from_config(lumina2_config)`, and that class defines
# `__init__(self, *args, **kwargs)`: Diffusers' `ConfigMixin.extract_init_dict` finds no named init argument, so every
# key goes to the hidden config and `__init__` runs with the parent's defaults. `scheduler.config.shift` reads 6.0,
# but the static (non-dynamic) `set_timesteps` path uses `self.shift` = 1.0: sigmas linspace(1, 1/n, n), unshifted
# (4 steps: timesteps 1000/750/500/250). Our flow-match scheduler honours its config, so it gets the effective one.
LUMINA2_EFFECTIVE_CONFIG = MappingProxyType(dict(AITK_LUMINA2_CONFIG, shift=1.0))

SPECS = (
    ModelSpec(
        id="lumina2", label="Lumina-Image 2.0", family="lumina2", base_repo="Alpha-VLLM/Lumina-Image-2.0",
        pipeline_class="Lumina2Pipeline", base_versions=("lumina2",), workflow="Lumina2 LoRA",
        defaults=SampleDefaults(steps=30, guidance_scale=4.0, width=1024, height=1024),
        scheduler=SchedulerSpec("flowmatch", LUMINA2_EFFECTIVE_CONFIG, arch="flow"),
        # GenerateImageConfig floors to 8 (min 64); Lumina2Pipeline.check_inputs then raises unless divisible by 16
        # (families/lumina2.py refuses such sizes before anything runs)
        size=SizeRule(divisor=8, minimum=64),
        # true CFG iff guidance_scale > 1 (`do_classifier_free_guidance`), with the negative encoded through the
        # same `encode_prompt` call (system prompt included) and cfg_normalization on
        guidance=GuidanceSpec("true_cfg", threshold=1.0),
        # the preset quantizes only Gemma2 (`quantize_te`, with `model.qtype`); the transformer stays in the train
        # dtype, so the LoRA is merged as on an unquantized base
        quant=QuantSpec(preset="qfloat8", components=("text_encoder",), flag="quantize_te"),
        lora=LoraLayout(kohya_prefixes=MappingProxyType({"lora_transformer": "transformer"}),
                        peft_prefixes=MappingProxyType({"transformer": "transformer"})),
        preview=latent_formats.FLUX,  # the FLUX.1 VAE (ComfyUI: latent_formats.Flux for Lumina2)
        notes="flowmatch with shift 1.0 (lumina2_config says 6, hidden by the custom scheduler's __init__), true "
              "CFG iff guidance > 1 with cfg_normalization, Gemma2 hidden_states[-2] at 256 tokens with the system "
              "prompt on both prompt and negative; sizes must be multiples of 16; Gemma2 qfloat8 preset"),
)
