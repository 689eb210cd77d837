"""Reading LoRA files: the safetensors header (metadata, shapes) and the tensors, with clear errors.

`read_header` reads only the JSON header (never the tensors), so it is safe for listing and info routes.
`read_lora` reads the whole file once into memory and builds the tensors from those bytes: what a handle holds is
its own memory, so a file that ai-toolkit overwrites or truncates while ComfyUI has it applied can never change or
kill the handle (safetensors' `load_file` memory-maps the file: its tensors would follow the file, or SIGBUS).
Every header is validated against the safetensors format before anything is built, and each problem is named with
what to do about it.
`LoraInfo` is what a file says about itself (ai-toolkit writes `software`, `ss_base_model_version`,
`ss_tag_frequency` with the trigger word, `training_info`; rank comes from the tensor shapes).
"""
from __future__ import annotations

import io
import json
import math
import os
import struct
from dataclasses import dataclass, field

from ..errors import LoraError

MAX_HEADER = 100 * 1024 * 1024
# safetensors dtype names -> bytes per element
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
RESAVE = "Re-save the LoRA from ai-toolkit's output folder (or copy the file again)."


@dataclass
class LoraFile:
    """One consistent snapshot of a LoRA file: header entries, metadata and (when read) the tensors."""
    path: str
    entries: dict
    metadata: dict
    tensors: dict | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def _json_kind(value) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _malformed(name: str, what: str) -> LoraError:
    return LoraError(f"LoRA file {name} has a malformed safetensors header: {what}. The file is damaged or was not "
                     f"written by a safetensors writer. {RESAVE}")


def _check_entry(name: str, key: str, entry) -> int:
    """Validates one tensor entry; returns the end of its data."""
    if not isinstance(entry, dict):
        raise _malformed(name, f"the entry for {key!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise _malformed(name, f"{key!r} has an unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise _malformed(name, f"{key!r} has a shape that is not a list of sizes ({shape!r})")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise _malformed(name, f"{key!r} has data_offsets that are not [begin, end] ({offsets!r})")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise _malformed(name, f"the data of {key!r} is {offsets[1] - offsets[0]} bytes, but its shape {shape} "
                               f"of {dtype} needs {math.prod(shape) * DTYPE_SIZES[dtype]}")
    return offsets[1]


def _parse_header(name: str, stream, size: int) -> tuple[dict, dict, int]:
    """(entries, metadata, data start) from a readable stream positioned at the file's start."""
    try:
        raw = stream.read(8)
        if len(raw) < 8:
            raise ValueError("the file is shorter than a safetensors header" if size else "the file is empty")
        (n,) = struct.unpack("<Q", raw)
        if n <= 1 or n > MAX_HEADER or 8 + n > size:
            raise ValueError("the header length is not plausible (truncated, or not a safetensors file)")
        header = json.loads(stream.read(n).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise LoraError(f"LoRA file {name} cannot be read as safetensors ({exc}). {RESAVE}") from None
    if not isinstance(header, dict):
        raise _malformed(name, f"the JSON header is {_json_kind(header)}, not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _malformed(name, f"__metadata__ is {_json_kind(metadata)}, not an object of strings")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise _malformed(name, f"the metadata value of {key!r} is {_json_kind(value)}, not a string")
    end = max((_check_entry(name, key, entry) for key, entry in header.items()), default=0)
    if 8 + n + end > size:
        raise LoraError(f"LoRA file {name} is truncated ({size} bytes, its header promises {8 + n + end}): it was "
                        "probably still being written or copied. Wait for ai-toolkit to finish saving, or copy the "
                        "file again.")
    return header, metadata, 8 + n


def _unreadable(name: str, exc: OSError) -> LoraError:
    return LoraError(f"LoRA file {name} cannot be read ({exc.strerror or exc}). Check that it exists and is readable.")


def _check_is_file(path: str) -> None:
    if os.path.isdir(path):
        raise LoraError(f"LoRA {os.path.basename(path)} is a folder, not a file. Pick the .safetensors file inside "
                        "it (or rename the folder).")


def read_header(path: str) -> tuple[dict, dict]:
    """(tensor entries, metadata) from a safetensors header; raises LoraError naming the file if unreadable."""
    name = os.path.basename(path)
    _check_is_file(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            entries, metadata, _ = _parse_header(name, f, size)
    except OSError as exc:
        raise _unreadable(name, exc) from None
    return entries, metadata


def read_lora(path: str) -> LoraFile:
    """The whole file read once: validated header and tensors in memory of their own (never a view of the file)."""
    from safetensors.torch import load

    name = os.path.basename(path)
    _check_is_file(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise _unreadable(name, exc) from None
    entries, metadata, _ = _parse_header(name, io.BytesIO(data), len(data))
    try:
        tensors = load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise LoraError(f"LoRA file {name} could not be loaded ({exc}). {RESAVE}") from None
    return LoraFile(path, entries, metadata, tensors)


def load_tensors(path: str) -> dict:
    return read_lora(path).tensors


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


def info_from(name: str, header: dict, meta: dict) -> LoraInfo:
    """What a file says about itself, from a validated header."""
    info = LoraInfo(file=name, tensor_count=len(header))
    info.base_model_version = meta.get("ss_base_model_version")
    info.output_name = meta.get("ss_output_name") or meta.get("name")
    software = _json_field(meta, "software")
    if isinstance(software, dict):
        info.software = software.get("name") if isinstance(software.get("name"), str) else None
        version = software.get("version")
        info.software_version = version if isinstance(version, str) else None
    tags = _json_field(meta, "ss_tag_frequency")
    if isinstance(tags, dict) and tags:
        words = [w for freq in tags.values() if isinstance(freq, dict) for w in freq]
        info.trigger_word = words[0] if words else None
    training = _json_field(meta, "training_info")
    if isinstance(training, dict) and isinstance(training.get("step"), int):
        info.step = training["step"]
    ranks, dtypes, modules = set(), set(), set()
    for key, entry in header.items():
        dtypes.add(entry["dtype"])
        for suffix in (".lora_down.weight", ".lora_A.weight"):
            if key.endswith(suffix):
                modules.add(key[: -len(suffix)])
                if entry["shape"]:
                    ranks.add(int(entry["shape"][0]))
    info.ranks, info.dtypes, info.module_count = sorted(ranks), sorted(dtypes), len(modules)
    return info


def lora_info(path: str) -> LoraInfo:
    """What a LoRA file says about itself, from its header only."""
    header, meta = read_header(path)
    return info_from(os.path.basename(path), header, meta)


# ai-toolkit's multistage models (Wan 2.2 14B) save one file per expert: `<name>_high_noise.safetensors` and
# `<name>_low_noise.safetensors` (`Wan2214bModel.save_lora`); its `load_lora` given either one loads both.
PAIR_STAGES = {"_high_noise": "high", "_low_noise": "low"}


def pair_stage(path: str) -> tuple[str | None, str | None]:
    """(stage, sibling path) of one file of an expert pair — stage "high" or "low" by the name, the sibling the
    pair's other file in the same folder (it may not exist) — or (None, None) for any other name."""
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    for suffix, stage in PAIR_STAGES.items():
        if stem.endswith(suffix):
            other = next(s for s in PAIR_STAGES if s != suffix)
            return stage, os.path.join(folder, stem[: -len(suffix)] + other + ext)
    return None, None


def pair_siblings(path: str) -> tuple[str, ...]:
    """The other file of `path`'s expert pair (whether it exists or not), or () when the name is not a pair's."""
    _, sibling = pair_stage(path)
    return (sibling,) if sibling else ()
