"""Prompt handling follows ai-toolkit: trigger substitution, then `--flags` with its precedence and quirks."""
from __future__ import annotations

import pytest

from aitk_pack.pipelines.errors import InputError
from aitk_pack.pipelines.prompts import SampleRequest, apply_flags, inject_trigger, prepare


@pytest.mark.parametrize("trigger, expected", [
    ("ohwx", "photo of ohwx, ohwx style"),
    ("", "photo of ,  style"),                         # trigger_word: "" removes the tokens (plain replace)
    (None, "photo of [trigger], [name] style"),        # no trigger word: left literally, as ai-toolkit renders it
])
def test_trigger_replacement(trigger, expected):
    assert inject_trigger("photo of [trigger], [name] style", trigger) == expected


def test_trigger_is_never_prepended():
    assert inject_trigger("a dog", "ohwx") == "a dog"


def test_flags_override_node_values():
    req = prepare(SampleRequest("  [trigger] at the beach --n blurry [trigger] --w 768 --h 512 --seed 9 --cfg 3.5 "
                                "--steps 12 --m 0.8 --gr 0.7  ", negative_prompt="bad", width=1024, height=1024,
                                seed=42, steps=30, guidance_scale=6.0), "ohwx")
    assert req.prompt == "ohwx at the beach"
    assert req.negative_prompt == "blurry ohwx" and req.negative_prompt_2 == "bad"
    assert (req.width, req.height, req.seed, req.guidance_scale, req.steps) == (768, 512, 9, 3.5, 12)
    assert (req.network_multiplier, req.guidance_rescale) == (0.8, 0.7)
    assert req.flags == ("n", "w", "h", "seed", "cfg", "steps", "m", "gr")


def test_short_flag_aliases_and_unknown_flags():
    req = apply_flags(SampleRequest("x --d 3 --l 2 --s 5 --network_multiplier 0.25 --bogus 1 --frames 9 --fps 24"))
    assert (req.seed, req.guidance_scale, req.steps, req.network_multiplier) == (3, 2.0, 5, 0.25)
    assert (req.num_frames, req.fps, req.prompt) == (9, 24, "x")


def test_p2_and_n2_have_no_effect_as_in_ai_toolkit():
    """GenerateImageConfig parses --p2/--n2 and then overwrites them with the prompt and the sample's `neg`."""
    req = apply_flags(SampleRequest("main --p2 second --n2 other", negative_prompt="neg"))
    assert req.prompt == "main" and req.negative_prompt_2 == "neg"


def test_negative_prompt_keeps_trigger_tokens():
    """ai-toolkit substitutes the trigger in the prompt only; `neg` is passed as written."""
    req = prepare(SampleRequest("a [trigger]", negative_prompt="no [trigger]"), "ohwx")
    assert req.negative_prompt == "no [trigger]"


def test_bad_flag_values():
    with pytest.raises(InputError, match="--seed needs a number"):
        apply_flags(SampleRequest("x --seed abc"))
    with pytest.raises(InputError, match="--cfg needs a number"):
        apply_flags(SampleRequest("x --cfg"))
