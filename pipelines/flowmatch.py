"""ai-toolkit's flow-match Euler sampler (`toolkit/samplers/custom_flowmatch_sampler.py`) and its shift rules.

ai-toolkit previews every flow-matching model with `CustomFlowMatchEulerDiscreteScheduler`, a subclass of
Diffusers' `FlowMatchEulerDiscreteScheduler` that overrides no inference method (`set_timesteps`/`step` are
inherited; its other methods are training helpers) and sets `init_noise_sigma = 1.0`. This module keeps that
construction (our own subclass, registered as sampler "flowmatch" for the flow-match tables) plus the sequence-
length shift rule the pipelines apply (`mu_for`), so a family's own sampling loop uses the same numbers.

ai-toolkit's config tables (`toolkit/sampler.py`): `FLUX_CONFIG` = `flux_config` (dynamic shifting on; the
configured `shift` 3.0 is then unused), `LUMINA2_CONFIG` = `lumina2_config`.
"""
from __future__ import annotations

from types import MappingProxyType

from .samplers import register

FLUX_CONFIG = MappingProxyType({
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
})


def _scheduler_class():
    from diffusers import FlowMatchEulerDiscreteScheduler

    class AitkFlowMatchEulerScheduler(FlowMatchEulerDiscreteScheduler):
        """`FlowMatchEulerDiscreteScheduler` as ai-toolkit constructs its custom subclass for sampling (no
        inference method overridden; `init_noise_sigma` 1.0). The constructor is the parent's, so its config
        signature stays visible to `from_config`."""

    return AitkFlowMatchEulerScheduler


_CLASS = None


def flowmatch_scheduler(config):
    global _CLASS
    if _CLASS is None:
        _CLASS = _scheduler_class()
    scheduler = _CLASS.from_config(dict(config))
    scheduler.init_noise_sigma = 1.0
    return scheduler


def mu_for(config, image_seq_len: int) -> float:
    """The dynamic shift for `image_seq_len` packed image tokens: the line through (base_image_seq_len, base_shift)
    and (max_image_seq_len, max_shift) (`calculate_shift`, extrapolated outside that range as the pipelines do)."""
    m = (config["max_shift"] - config["base_shift"]) / (config["max_image_seq_len"] - config["base_image_seq_len"])
    b = config["base_shift"] - m * config["base_image_seq_len"]
    return image_seq_len * m + b


for _arch in ("flow",):  # the table of every flow-matching model (its config is the entry's)
    register(_arch, "flowmatch", flowmatch_scheduler)
