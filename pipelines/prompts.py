"""Prompt handling as ai-toolkit does it for sample previews: `[trigger]`/`[name]` replacement, then `--flags`.

Order (ai-toolkit `BaseSDTrainProcess.sample` → `GenerateImageConfig`): the trigger word is substituted in the raw
text first (so it also lands inside `--n …`), then the text is split on `--` and each flag overrides the sample's
own value. `--p2`/`--n2` are parsed but, exactly as in ai-toolkit, overwritten afterwards (the second SDXL encoder
gets the parsed prompt and the sample's own negative), so they have no effect.
"""
from __future__ import annotations

from dataclasses import replace

from .errors import InputError
from .request import SampleRequest

__all__ = ["SampleRequest", "apply_flags", "inject_trigger", "prepare"]

TRIGGER_TOKENS = ("[name]", "[trigger]")

_INT_FLAGS = {"w": "width", "h": "height", "d": "seed", "seed": "seed", "s": "steps", "steps": "steps",
              "frames": "num_frames", "num_frames": "num_frames", "fps": "fps", "ctrl_idx": "ctrl_idx"}
_FLOAT_FLAGS = {"l": "guidance_scale", "cfg": "guidance_scale", "m": "network_multiplier",
                "network_multiplier": "network_multiplier", "gr": "guidance_rescale",
                "a": "adapter_conditioning_scale", "ref": "refiner_start_at"}
_TEXT_FLAGS = {"n": "negative_prompt", "p2": "ignored_prompt_2", "n2": "ignored_negative_prompt_2",
               "ctrl_img": "ctrl_img"}
_LIST_FLAGS = {"ev": "extra_values", "extra_values": "extra_values"}


def inject_trigger(prompt: str, trigger_word: str | None) -> str:
    """Replace `[trigger]` and `[name]` with the trigger word; the word is never prepended.

    `None` (no trigger word in the training config) leaves the tokens in the text literally, as ai-toolkit's
    sampler does; an explicit empty string removes them."""
    if trigger_word is None:
        return prompt
    for token in TRIGGER_TOKENS:
        prompt = prompt.replace(token, trigger_word)
    return prompt


def _convert(flag: str, content: str, kind):
    try:
        return kind(content)
    except ValueError:
        raise InputError(f"Prompt flag --{flag} needs a number, got {content!r}. "
                         f"Write it like `--{flag} 512`.") from None


def apply_flags(request: SampleRequest) -> SampleRequest:
    """Split `request.prompt` on `--` and apply each known flag over the request's own values.

    Mirrors `GenerateImageConfig._process_prompt_string`: the prompt is stripped, everything before the first
    `--` is the prompt, a flag is the chunk's first space-separated word, unknown flags are ignored. The second
    encoder's negative keeps the sample's own negative (set before the flags)."""
    text = request.prompt
    neg2 = request.negative_prompt if request.negative_prompt_2 is None else request.negative_prompt_2
    if not text:
        return replace(request, negative_prompt_2=neg2)
    chunks = text.strip().split("--")
    values: dict[str, object] = {"prompt": chunks[0].strip()}
    seen = []
    for chunk in chunks[1:]:
        flag = chunk.split(" ")[0].strip()
        content = chunk[len(flag):].strip()
        seen.append(flag)
        if flag in _INT_FLAGS:
            values[_INT_FLAGS[flag]] = _convert(flag, content, int)
        elif flag in _FLOAT_FLAGS:
            values[_FLOAT_FLAGS[flag]] = _convert(flag, content, float)
        elif flag in _TEXT_FLAGS:
            values[_TEXT_FLAGS[flag]] = content
        elif flag in _LIST_FLAGS:
            values[_LIST_FLAGS[flag]] = tuple(_convert(flag, v, float) for v in content.split(","))
    return replace(request, negative_prompt_2=neg2, flags=tuple(seen), **values)


def prepare(request: SampleRequest, trigger_word: str | None) -> SampleRequest:
    """Trigger substitution, then flag parsing: the full ai-toolkit order.

    Only the prompt text is substituted (so also a `--n` inside it); the sample's own negative is used as written,
    as ai-toolkit passes `neg` untouched."""
    return apply_flags(replace(request, prompt=inject_trigger(request.prompt, trigger_word)))
