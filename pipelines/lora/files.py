"""Reading LoRA files: the safetensors header (metadata, shapes) and the tensors, with clear errors.

`read_header` reads only the JSON header (never the tensors), so it is safe for listing and info routes.
`LoraInfo` is what a file says about itself (ai-toolkit writes `software`, `ss_base_model_version`,
`ss_tag_frequency` with the trigger word, `training_info`; rank comes from the tensor shapes).
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field

from ..errors import LoraError

MAX_HEADER = 100 * 1024 * 1024


def read_header(path: str) -> tuple[dict, dict]:
    """(tensor entries, metadata) from a safetensors header; raises LoraError naming the file if unreadable."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("file is shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n <= 1 or n > MAX_HEADER or 8 + n > size:
                raise ValueError("header length is not plausible (truncated or not a safetensors file)")
            header = json.loads(f.read(n).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise LoraError(f"LoRA file {name} cannot be read as safetensors ({exc}). Re-download or re-save the file "
                        "from ai-toolkit's output folder.") from None
    if not isinstance(header, dict):
        raise LoraError(f"LoRA file {name} has a malformed safetensors header.")
    metadata = header.pop("__metadata__", None) or {}
    end = max((e.get("data_offsets", [0, 0])[1] for e in header.values() if isinstance(e, dict)), default=0)
    if 8 + n + end > size:
        raise LoraError(f"LoRA file {name} is truncated ({size} bytes, the header promises {8 + n + end}). "
                        "Copy the file again.")
    return header, metadata


def load_tensors(path: str) -> dict:
    from safetensors.torch import load_file

    read_header(path)  # a clear error first for truncated / non-safetensors files
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise LoraError(f"LoRA file {os.path.basename(path)} could not be loaded: {exc}") from None


def _json_field(metadata: dict, key: str):
    value = metadata.get(key)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@dataclass
class LoraInfo:
    file: str
    base_model_version: str | None = None
    software: str | None = None
    software_version: str | None = None
    trigger_word: str | None = None
    output_name: str | None = None
    step: int | None = None
    ranks: list[int] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)
    tensor_count: int = 0
    module_count: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def lora_info(path: str) -> LoraInfo:
    """What a LoRA file says about itself, from its header only."""
    header, meta = read_header(path)
    info = LoraInfo(file=os.path.basename(path), tensor_count=len(header))
    info.base_model_version = meta.get("ss_base_model_version")
    info.output_name = meta.get("ss_output_name") or meta.get("name")
    software = _json_field(meta, "software")
    if isinstance(software, dict):
        info.software = software.get("name")
        info.software_version = software.get("version")
    tags = _json_field(meta, "ss_tag_frequency")
    if isinstance(tags, dict) and tags:
        words = [w for freq in tags.values() if isinstance(freq, dict) for w in freq]
        info.trigger_word = words[0] if words else None
    training = _json_field(meta, "training_info")
    if isinstance(training, dict) and isinstance(training.get("step"), int):
        info.step = training["step"]
    ranks, dtypes, modules = set(), set(), set()
    for key, entry in header.items():
        dtypes.add(entry.get("dtype", "?"))
        for suffix in (".lora_down.weight", ".lora_A.weight"):
            if key.endswith(suffix):
                modules.add(key[: -len(suffix)])
                shape = entry.get("shape") or [0]
                ranks.add(int(shape[0]))
    info.ranks, info.dtypes, info.module_count = sorted(ranks), sorted(dtypes), len(modules)
    return info
