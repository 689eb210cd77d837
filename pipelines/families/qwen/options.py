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
    legacy_ctrl_img: bool = field(default=False, metadata={"help": (
        "Qwen-Image-Edit-2509/2511: your sample gives its first image as `ctrl_img` (older configs) rather than "
        "`ctrl_img_1`. ai-toolkit then copies it into ctrl_img_1 and sends it TWICE to the Qwen2.5-VL prompt "
        "encoder (once as each), while the VAE sees it once: turn this on to reproduce such previews. Off: the "
        "first image is ctrl_img_1, as the UI writes it.")})
