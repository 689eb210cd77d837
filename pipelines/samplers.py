"""ai-toolkit sampler names → Diffusers schedulers (`toolkit/sampler.py:get_sampler`, arch "sd").

Every scheduler is built from the model's *effective* scheduler config in the registry, never from the base repo's
own scheduler (PNDM/Euler in the SD repos), so the repo config cannot leak into "match training" sampling.
"""
from __future__ import annotations

from .errors import InputError

MATCH_TRAINING = "match training"

_SD_SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "k_lms": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "k_euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "k_dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "use_karras_sigmas": True}),
    "k_dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}


def sampler_names(spec) -> list[str]:
    return [MATCH_TRAINING] + (sorted(_SD_SCHEDULERS) if spec.scheduler.arch == "sd" else [])


def make_scheduler(spec, sampler: str | None = None):
    """A fresh scheduler for one generation (schedulers hold per-run state, so they are never shared)."""
    import diffusers

    name = spec.scheduler.default_sampler if sampler in (None, "", MATCH_TRAINING) else sampler
    table = _SD_SCHEDULERS if spec.scheduler.arch == "sd" else {}
    if name not in table:
        raise InputError(f"Sampler {name!r} is not available for {spec.id}. "
                         f"Choose one of: {', '.join(sampler_names(spec))}.")
    cls_name, extra = table[name]
    return getattr(diffusers, cls_name).from_config(dict(spec.scheduler.config, **extra))
