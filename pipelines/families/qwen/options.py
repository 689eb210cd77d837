"""The Qwen-Image-Edit-Plus options: settings of ai-toolkit's training config that only these models read.

Kept apart from the family module so that the registry can name them without importing the pipelines."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class QwenEditOptions:
    """Qwen-Image-Edit-2509 / 2511 settings from the training config (`sample:` section)."""
    do_cfg_norm: bool = field(default=False, metadata={"help": (
        "ai-toolkit's sample.do_cfg_norm (Qwen-Image-Edit-2509/2511 only): rescale the CFG prediction to the norm "
        "of the conditional one, as stock Qwen pipelines do. Off by default, as in ai-toolkit; turn it on only "
        "when your training config sets it.")})
