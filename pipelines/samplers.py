"""The sampler registry: ai-toolkit sampler names → scheduler factories, per sampler table (`SchedulerSpec.arch`).

Families register their tables (`register`); "match training" is the entry's `default_sampler`. Every scheduler
is built from the registry's *effective* config, never from the base repo's own scheduler, so the repo config
cannot leak into "match training" sampling. The SD table is ai-toolkit's `toolkit/sampler.py:get_sampler` for
arch "sd"; the flow-match table lives in `flowmatch.py`.
"""
from __future__ import annotations

from typing import Callable

from .errors import InputError

MATCH_TRAINING = "match training"

_TABLES: dict[str, dict[str, Callable]] = {}


def register(arch: str, name: str, factory: Callable) -> None:
    """`factory(config: dict) -> scheduler` for sampler `name` in table `arch`."""
    _TABLES.setdefault(arch, {})[name] = factory


def _diffusers(cls_name: str, **extra) -> Callable:
    def build(config):
        import diffusers

        return getattr(diffusers, cls_name).from_config(dict(config, **extra))
    return build


for _name, (_cls, _extra) in {
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
}.items():
    register("sd", _name, _diffusers(_cls, **_extra))


def sampler_names(spec) -> list[str]:
    return [MATCH_TRAINING] + sorted(_TABLES.get(spec.scheduler.arch, {}))


def all_sampler_names() -> list[str]:
    """Every name any table offers (the node's combo; a name the model lacks is refused with the model's list)."""
    return [MATCH_TRAINING] + sorted({n for table in _TABLES.values() for n in table})


def make_scheduler(spec, sampler: str | None = None):
    """A fresh scheduler for one generation (schedulers hold per-run state, so they are never shared)."""
    name = spec.scheduler.default_sampler if sampler in (None, "", MATCH_TRAINING) else sampler
    table = _TABLES.get(spec.scheduler.arch, {})
    if name not in table:
        raise InputError(f"Sampler {name!r} is not available for {spec.id}. "
                         f"Choose one of: {', '.join(sampler_names(spec))}.")
    return table[name](dict(spec.scheduler.config))


from . import flowmatch  # noqa: E402,F401  (registers the flow-match tables)
