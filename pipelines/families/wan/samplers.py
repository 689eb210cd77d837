"""The samplers ai-toolkit previews Wan with, and which one a LoRA's previews were made with.

ai-toolkit's Wan classes build the preview scheduler in `get_generation_pipeline` (`toolkit/models/wan21/wan21.py`,
`extensions_built_in/diffusion_models/wan22/*`):
- up to ai-toolkit 0.9.3: `UniPCMultistepScheduler(**scheduler_configUniPC)` (flow sigmas, `bh2`, `flow_shift` 3.0
  for Wan 2.1) — registered here as sampler "unipc" (ai-toolkit has no sampler name for it; `sample.sampler` is
  ignored by its Wan classes);
- since commit ab1ee4df (2026-04-16 20:53 UTC, "Hotfix some issues with Wan models caused by diffusers and
  transformers updates"; "unipc got broken in a diffusers update. Use euler for now"): `get_train_scheduler()` =
  `CustomFlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)` — the
  pack's "flowmatch".
`version.py` read "0.9.3" from commit 0c18b393 (2026-04-16 19:09 UTC, before the switch) until be540947 bumped it to
0.9.4 (2026-04-17): files saved by 0.9.2 and older were previewed with UniPC, 0.9.4 and newer with flow-match Euler,
and 0.9.3 either way (flow-match Euler for all but its first ~2 hours: that is the pick, and the note says so).
ai-toolkit writes its version into every LoRA file (`software` = `info.py:software_meta`, `toolkit/metadata.py`).

Table "wan" (`SchedulerSpec.arch`): the entry's config is the flow-match config ai-toolkit samples with; an optional
`unipc_flow_shift` in it sets the UniPC shift where it differs from `shift` (Wan 2.2 14B: 5.0 vs 3.0).
"""
from __future__ import annotations

from types import MappingProxyType

from ...flowmatch import flowmatch_scheduler
from ...samplers import MATCH_TRAINING, register

ARCH = "wan"
FLOWMATCH, UNIPC = "flowmatch", "unipc"
EULER_SINCE = (0, 9, 3)          # the version.py value when ab1ee4df switched the Wan preview sampler
SWITCH = "ab1ee4df, 2026-04-16"
# toolkit/models/wan21/wan21.py:scheduler_configUniPC (unchanged from its first version e6739f7e to 27a03a91),
# without the `_class_name` / `_diffusers_version` bookkeeping keys (which the scheduler constructor drops)
UNIPC_CONFIG = MappingProxyType({
    "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001, "disable_corrector": [],
    "dynamic_thresholding_ratio": 0.995, "final_sigmas_type": "zero", "flow_shift": 3.0, "lower_order_final": True,
    "num_train_timesteps": 1000, "predict_x0": True, "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False, "sample_max_value": 1.0, "solver_order": 2, "solver_p": None,
    "solver_type": "bh2", "steps_offset": 0, "thresholding": False, "timestep_spacing": "linspace",
    "trained_betas": None, "use_beta_sigmas": False, "use_exponential_sigmas": False, "use_flow_sigmas": True,
    "use_karras_sigmas": False,
})


def wan_flowmatch(config):
    return flowmatch_scheduler({k: v for k, v in dict(config).items() if k != "unipc_flow_shift"})


def wan_unipc(config):
    from diffusers import UniPCMultistepScheduler

    shift = dict(config).get("unipc_flow_shift", dict(config)["shift"])
    return UniPCMultistepScheduler.from_config(dict(UNIPC_CONFIG, flow_shift=float(shift)))


register(ARCH, FLOWMATCH, wan_flowmatch)
register(ARCH, UNIPC, wan_unipc)


def parse_version(text) -> tuple | None:
    try:
        return tuple(int(part) for part in str(text).strip().lstrip("v").split("."))
    except (TypeError, ValueError):
        return None


def describe(name: str, config) -> str:
    config = dict(config)
    if name == UNIPC:
        return f"unipc (UniPC, flow sigmas, flow_shift {config.get('unipc_flow_shift', config['shift']):g})"
    if name == FLOWMATCH:
        return f"flowmatch (flow-match Euler, shift {config['shift']:g}, no dynamic shift)"
    return name


def preview_sampler(spec, loras, asked=None) -> tuple[str, str]:
    """(sampler, note): the user's sampler if asked, else the one ai-toolkit previewed the first ai-toolkit LoRA of
    the chain with (by its `software` version), else today's (flow-match Euler)."""
    config = spec.scheduler.config
    known = [(info, parse_version(info.software_version)) for info in loras
             if (info.software or "ai-toolkit") == "ai-toolkit" and parse_version(info.software_version)]
    if known:
        info, version = known[0]
        pick = UNIPC if version < EULER_SINCE else FLOWMATCH
        why = f"{info.file} was saved by ai-toolkit {info.software_version}, "
        if version < EULER_SINCE:
            why += f"which previewed Wan with UniPC (flow-match Euler since 0.9.3, {SWITCH})"
        elif version == EULER_SINCE:
            why += (f"whose Wan previews used flow-match Euler after {SWITCH} but UniPC in the release's first "
                    "hours: if the previews differ, choose sampler unipc")
        else:
            why += "which previews Wan with flow-match Euler"
        if len({UNIPC if v < EULER_SINCE else FLOWMATCH for _, v in known}) > 1:
            why += " (the chain's LoRAs come from ai-toolkit versions with different Wan samplers: the first decides)"
    else:
        pick = FLOWMATCH
        why = ("ai-toolkit's Wan preview sampler since 0.9.3 (" + SWITCH + ")"
               + ("; the LoRA records no ai-toolkit version" if loras else ""))
    if asked not in (None, "", MATCH_TRAINING):
        return asked, f"sampler {describe(asked, config)}: chosen on the node (match training: {pick}, as {why})"
    return pick, f"sampler {describe(pick, config)}: {why}"
