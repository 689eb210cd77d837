"""The model registry: one `ModelSpec` (`spec.py`) per model id, holding everything that decides the picture.

The entries live with their family's data in `pipelines/models/<family>.py` (values read from ostris/ai-toolkit at
commit `AITK_COMMIT`, version `AITK_VERSION`); this module collects them and answers lookups. Everything about one
model is found in its entry plus its family module (`pipelines/families/<family>`).
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from .errors import UnknownModelError
from .models import all_specs
from .spec import ModelSpec

AITK_COMMIT = "27a03a91"
AITK_VERSION = "0.12.26"

_SPECS = all_specs()
_duplicate = sorted({s.id for s in _SPECS if [t.id for t in _SPECS].count(s.id) > 1})
if _duplicate:
    raise ValueError(f"registry ids defined twice: {_duplicate}")

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
    """The size ai-toolkit's `GenerateImageConfig` holds for a requested one (`SizeRule.config_floor`); the
    rendered image may be floored once more by the pipeline (`SizeRule.floor`)."""
    return spec.size.config_floor(width, height)
