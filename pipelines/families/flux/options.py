"""The FLUX family's options: settings of ai-toolkit's training config that only these models read.

Kept apart from the family module so that the registry can name them without importing the pipelines."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FluxOptions:
    """FLUX.1-only settings from the training config (`model:` section)."""
    attn_masking: bool = field(default=False, metadata={"help": (
        "ai-toolkit's model.attn_masking (FLUX.1 / Flex.1): the T5 padding embeddings are zeroed before "
        "sampling. Off by default, as in ai-toolkit; turn it on only when your training config sets it.")})
