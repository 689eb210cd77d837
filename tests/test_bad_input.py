"""Bad input never crashes, never renders black, and never changes a cached pipeline: a table-driven suite.

Every case goes through the contract nodes on each registry model's tiny base (the suite is parametrised over the
registry, so a family added later is covered the day its tiny model exists). For each case:
- either a clear error (an `AitkError`) whose message names the input, or a sane output (finite, not uniform);
- afterwards the cached base, and a handle with a LoRA on it, render exactly the pixels they rendered before.

Cases that could kill the process (a memory-mapped file truncated under a live handle: SIGBUS) run in a subprocess
(`tests/fixtures/file_change_probe.py`), so a regression fails its test instead of ending the run.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.errors import AitkError, Interrupted, RenderError
from aitk_pack.pipelines.registry import REGISTRY
from tests.conftest import ROOT

# The models whose kohya-layout files the shared conftest builds (the cases below edit kohya keys); the FLUX family's
# bad input is in tests/test_flux.py.
MODELS = [m for m in REGISTRY if m in ("sd15", "sdxl")]
SMALL = dict(prompt="a cat", negative_prompt="", trigger_word="", width=64, height=64, seed=5, steps=3,
             guidance_scale=6.0)


@dataclass
class State:
    model: str
    models_dir: str
    plain: object          # handle on the cached base
    with_lora: object      # handle with the model's kohya LoRA
    plain_pixels: np.ndarray
    lora_pixels: np.ndarray

    def lora_file(self, name="kohya") -> str:
        return os.path.join(self.models_dir, "loras", f"{self.model}_{name}.safetensors")


def render(handle, **values) -> np.ndarray:
    return engine.generate(handle, **dict(SMALL, **values))


@pytest.fixture(scope="module", params=MODELS)
def state(request, models_dir):
    model = request.param
    plain = engine.load(model, base=f"tiny-{model}", dtype="fp32", device="cpu")
    with_lora = plain.with_lora(os.path.join(models_dir, "loras", f"{model}_kohya.safetensors"), 1.0)
    return State(model, models_dir, plain, with_lora, render(plain), render(with_lora))


def assert_unchanged(state: State) -> None:
    np.testing.assert_array_equal(render(state.plain), state.plain_pixels)
    np.testing.assert_array_equal(render(state.with_lora), state.lora_pixels)


def assert_sane(pixels) -> None:
    pixels = np.asarray(pixels)
    assert pixels.dtype == np.uint8 and pixels.ndim == 4 and pixels.shape[-1] == 3
    assert pixels.std() > 1.0, "uniform (black) image"


def expect_error(call, *names: str, match: str | None = None) -> str:
    """Runs `call`; it must raise an AitkError whose message contains every one of `names` (and `match`)."""
    with pytest.raises(AitkError) as err:
        call()
    message = str(err.value)
    for name in names:
        assert name in message, f"{name!r} not named in: {message}"
    if match:
        assert __import__("re").search(match, message), f"{match!r} not in: {message}"
    return message


@pytest.fixture
def scratch(state):
    """Files written into the shared loras/diffusers/checkpoints folders for one case, removed afterwards."""
    made = []
    yield made
    for path in made:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)


# ---------------------------------------------------------------------------------------------------------------
# LoRA files: each builder gets (good file bytes, good tensors, model) and returns bytes or (tensors, metadata).

def _split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _pack(header, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _edit_header(edit):
    def build(good, tensors, model):
        header, body = _split(good)
        key = sorted(k for k in header if k != "__metadata__")[0]
        edit(header, key)
        return _pack(header, body)
    return build


def _edit_tensors(edit, keep_metadata=True):
    def build(good, tensors, model):
        from tests.fixtures import tiny_sd as tiny

        tensors = {k: v.clone() for k, v in tensors.items()}
        edit(tensors)
        return tensors, (tiny.aitk_metadata(model, "ohwx") if keep_metadata else None)
    return build


def _first(tensors, suffix):
    return sorted(k for k in tensors if k.endswith(suffix))[0]


def _set_first(suffix, value):
    def edit(t):
        t[_first(t, suffix)].view(-1)[0] = value
    return edit


def _other_model(model):
    return next(m for m in MODELS if m != model)


def _other_family_file(stripped: bool):
    def build(good, tensors, model):
        other = os.path.join(os.environ["AITK_MODELS_DIR"], "loras", f"{_other_model(model)}_kohya.safetensors")
        if not stripped:
            return open(other, "rb").read()
        return load_file(other), None
    return build


LORA_CASES = {
    "random_bytes": (lambda g, t, m: os.urandom(4096), "cannot be read as safetensors"),
    "empty_file": (lambda g, t, m: b"", "file is empty"),
    "seven_bytes": (lambda g, t, m: b"\x01" * 7, "shorter than a safetensors header"),
    "header_length_huge": (lambda g, t, m: struct.pack("<Q", 2 ** 40) + g[8:], "header length is not plausible"),
    "header_not_json": (lambda g, t, m: struct.pack("<Q", 8) + b"{not js}", "cannot be read as safetensors"),
    "header_not_utf8": (lambda g, t, m: struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc", "cannot be read"),
    "header_is_a_list": (lambda g, t, m: _pack([1, 2]), "JSON header is an array, not an object"),
    "header_is_a_number": (lambda g, t, m: _pack(12345), "JSON header is a number, not an object"),
    "entry_not_an_object": (_edit_header(lambda h, k: h.__setitem__(k, 5)), "is not an object"),
    "offsets_not_a_list": (_edit_header(lambda h, k: h[k].__setitem__("data_offsets", "0-16")), "data_offsets"),
    "offsets_three_values": (_edit_header(lambda h, k: h[k].__setitem__("data_offsets", [0, 1, 2])),
                             "data_offsets"),
    "offsets_reversed": (_edit_header(lambda h, k: h[k].__setitem__("data_offsets", h[k]["data_offsets"][::-1])),
                         "data_offsets"),
    "offsets_disagree_with_shape": (_edit_header(lambda h, k: h[k].__setitem__("shape", [10 ** 6])), "needs"),
    "unknown_dtype": (_edit_header(lambda h, k: h[k].__setitem__("dtype", "F128")), "unknown dtype"),
    "shape_not_a_list": (_edit_header(lambda h, k: h[k].__setitem__("shape", "4x4")), "shape"),
    "negative_shape": (_edit_header(lambda h, k: h[k].__setitem__("shape", [-1, 4])), "shape"),
    "metadata_value_not_a_string": (_edit_header(lambda h, k: h["__metadata__"].__setitem__("step", 5)),
                                    "metadata value of 'step'"),
    "metadata_is_a_list": (_edit_header(lambda h, k: h.__setitem__("__metadata__", ["a"])), "__metadata__ is an array"),
    "truncated_half": (lambda g, t, m: g[: len(g) // 2], "truncated"),
    "truncated_last_byte": (lambda g, t, m: g[:-1], "truncated"),
    "nan_in_lora_up": (_edit_tensors(_set_first(".lora_up.weight", float("nan"))), "NaN or Inf values"),
    "inf_in_lora_down": (_edit_tensors(_set_first(".lora_down.weight", float("inf"))), "NaN or Inf values"),
    "nan_alpha": (_edit_tensors(_set_first(".alpha", float("nan"))), "NaN or Inf values"),
    "ranks_disagree": (_edit_tensors(lambda t: t.__setitem__(_first(t, ".lora_up.weight"),
                                                             torch.ones(t[_first(t, ".lora_up.weight")].shape[0], 7))),
                       "rank"),
    "rank_zero": (_edit_tensors(lambda t: t.update({_first(t, ".lora_down.weight"):
                                                    torch.ones(0, t[_first(t, ".lora_down.weight")].shape[1]),
                                                    _first(t, ".lora_up.weight"):
                                                    torch.ones(t[_first(t, ".lora_up.weight")].shape[0], 0)})),
                  "rank 0"),
    "alpha_not_a_scalar": (_edit_tensors(lambda t: t.__setitem__(_first(t, ".alpha"), torch.ones(4))),
                           "alpha holds 4 values"),
    "conv_down_with_linear_up": (_edit_tensors(lambda t: t.__setitem__(
        _first(t, ".lora_down.weight"), t[_first(t, ".lora_down.weight")][:, :, None, None].clone())), "both"),
    "no_lora_up_tensors": (_edit_tensors(lambda t: [t.pop(k) for k in list(t) if ".lora_up." in k]),
                           "no lora_up"),
    "only_alpha_tensors": (_edit_tensors(lambda t: [t.pop(k) for k in list(t) if not k.endswith(".alpha")]),
                           "no lora_up"),
    "checkpoint_not_a_lora": (lambda g, t, m: ({"model.diffusion_model.conv_in.weight": torch.zeros(4, 4, 3, 3)},
                                               None), "holds no LoRA weights"),
    "embedding_only": (lambda g, t, m: ({"emb_params": torch.randn(2, 32)}, None), "holds no LoRA weights"),
    "flux_lora_by_metadata": (lambda g, t, m: ({"transformer.x.lora_A.weight": torch.ones(4, 8),
                                                "transformer.x.lora_B.weight": torch.ones(8, 4)},
                                               {"ss_base_model_version": "flux.1"}), r"FLUX.1(-dev)? LoRA"),
    "bfl_keys_without_metadata": (lambda g, t, m: ({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight":
                                                    torch.ones(4, 8),
                                                    "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight":
                                                    torch.ones(24, 4)}, None), "looks like a FLUX.1/Chroma/FLUX.2"),
    "other_sd_family_with_metadata": (_other_family_file(stripped=False), r"LoRA \(its metadata says"),
    "other_sd_family_metadata_stripped": (_other_family_file(stripped=True), "does not fit|applies to"),
    "unknown_layer_names": (lambda g, t, m: ({"lora_unet_nowhere.lora_down.weight": torch.ones(4, 8),
                                             "lora_unet_nowhere.lora_up.weight": torch.ones(8, 4)}, None),
                            "none of its layer names exist"),
    "loha_modules_only": (lambda g, t, m: ({f"lora_unet_x.hada_w{i}_{ab}": torch.ones(4, 4) for i in (1, 2)
                                           for ab in "ab"}, None), "LoHa modules are not supported"),
}


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_bad_lora_file(state, nodes, scratch, case):
    build, message = LORA_CASES[case]
    good = open(state.lora_file(), "rb").read()
    made = build(good, load_file(state.lora_file()), state.model)
    name = f"bad_{case}.safetensors"
    path = os.path.join(state.models_dir, "loras", name)
    scratch.append(path)
    if isinstance(made, bytes):
        open(path, "wb").write(made)
    else:
        save_file(made[0], path, metadata=made[1])
    expect_error(lambda: nodes[1].apply(pipeline=state.plain, lora_name=name, strength=1.0), name, match=message)
    expect_error(lambda: nodes[1].apply(pipeline=state.with_lora, lora_name=name, strength=1.0), name)
    assert_unchanged(state)


@pytest.mark.parametrize("name, message", [
    ("missing.safetensors", "was not found in the loras folders"),
    ("missing", "was not found in the loras folders"),
    ("../outside.safetensors", "was not found in the loras folders"),
    ("/etc/passwd", "was not found in the loras folders"),
    ("nul\0byte.safetensors", "was not found in the loras folders"),
    ("", "was not found in the loras folders"),
])
def test_lora_names_that_resolve_to_nothing(state, nodes, name, message):
    expect_error(lambda: nodes[1].apply(pipeline=state.plain, lora_name=name, strength=1.0), repr(name),
                 match=message)
    assert_unchanged(state)


def test_a_folder_named_like_a_lora(state, nodes, scratch):
    path = os.path.join(state.models_dir, "loras", "folder.safetensors")
    os.makedirs(path)
    scratch.append(path)
    expect_error(lambda: nodes[1].apply(pipeline=state.plain, lora_name="folder.safetensors", strength=1.0),
                 "folder.safetensors", match="is a folder, not a file")
    assert_unchanged(state)


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), float("-inf"), 1e6, -1e6, "abc", None])
def test_impossible_strengths(state, nodes, strength):
    expect_error(lambda: nodes[1].apply(pipeline=state.plain, lora_name=f"{state.model}_kohya.safetensors",
                                        strength=strength), "LoRA strength")
    assert_unchanged(state)


def test_extreme_but_finite_lora_weights_raise_instead_of_black(state, nodes, scratch):
    """A finite file that blows the activations up: the render stops with RenderError at the first bad step."""
    tensors = {k: (v * 1e18 if k.endswith(".lora_up.weight") else v) for k, v in load_file(state.lora_file()).items()}
    name = "huge_weights.safetensors"
    path = os.path.join(state.models_dir, "loras", name)
    save_file(tensors, path)
    scratch.append(path)
    handle = nodes[1].apply(pipeline=state.plain, lora_name=name, strength=10.0)["result"][0]
    with pytest.raises(RenderError, match=r"NaN/Inf at step 1 of .*strength far too high \(10;"):
        nodes[2].sample(pipeline=handle, **SMALL)
    assert_unchanged(state)


# ---------------------------------------------------------------------------------------------------------------
# Sample inputs and prompt flags. (values, names the message must hold); None: a sane output is expected.

SAMPLE_CASES = {
    "width_below_minimum": (dict(width=32), ["width 32"]),
    "height_above_maximum": (dict(height=9000), ["height 9000"]),
    "width_negative": (dict(width=-8), ["width -8"]),
    "width_not_whole": (dict(width=64.5), ["width"]),
    "steps_negative": (dict(steps=-1), ["steps"]),
    "steps_too_many": (dict(steps=1001), ["steps must be"]),
    "seed_negative": (dict(seed=-2), ["seed"]),
    "seed_too_large": (dict(seed=2 ** 64), ["seed"]),
    "seed_text": (dict(seed="abc"), ["seed"]),
    "guidance_nan": (dict(guidance_scale=float("nan")), ["guidance_scale"]),
    "guidance_inf": (dict(guidance_scale=float("inf")), ["guidance_scale"]),
    "guidance_huge": (dict(guidance_scale=1e6), ["guidance_scale"]),
    "guidance_text": (dict(guidance_scale="high"), ["guidance_scale"]),
    "rescale_nan": (dict(guidance_rescale=float("nan")), ["guidance_rescale"]),
    "rescale_above_one": (dict(guidance_rescale=2.0), ["guidance_rescale"]),
    "rescale_negative": (dict(guidance_rescale=-0.5), ["guidance_rescale"]),
    "lora_mode_unknown": (dict(lora_mode="bogus"), ["lora_mode", "bogus"]),
    "lora_mode_library_name": (dict(lora_mode="merge"), ["lora_mode", "merged"]),
    "flag_m_inf": (dict(prompt="a cat --m inf"), ["--m"]),
    "flag_m_nan": (dict(prompt="a cat --m nan"), ["--m"]),
    "flag_m_huge": (dict(prompt="a cat --m 1e6"), ["--m"]),
    "flag_m_text": (dict(prompt="a cat --m strong"), ["--m"]),
    "flag_cfg_nan": (dict(prompt="a cat --cfg nan"), ["--cfg"]),
    "flag_cfg_inf": (dict(prompt="a cat --cfg inf"), ["--cfg"]),
    "flag_l_nan": (dict(prompt="a cat --l nan"), ["--cfg/--l"]),
    "flag_cfg_negative": (dict(prompt="a cat --cfg -3"), ["--cfg"]),
    "flag_gr_nan": (dict(prompt="a cat --gr nan"), ["--gr"]),
    "flag_gr_five": (dict(prompt="a cat --gr 5"), ["--gr"]),
    "flag_w_huge": (dict(prompt="a cat --w 99999"), ["--w/--h", "at most 8192"]),
    "flag_h_huge": (dict(prompt="a cat --h 99999"), ["--w/--h"]),
    "flag_w_text": (dict(prompt="a cat --w wide"), ["--w"]),
    "flag_w_fraction": (dict(prompt="a cat --w 64.5"), ["--w"]),
    "flag_steps_zero": (dict(prompt="a cat --steps 0"), ["steps must be"]),
    "flag_s_too_many": (dict(prompt="a cat --s 5000"), ["steps must be"]),
    "flag_seed_text": (dict(prompt="a cat --seed abc"), ["--seed"]),
    "flag_seed_negative": (dict(prompt="a cat --seed -5"), ["seed"]),
    "flag_d_fraction": (dict(prompt="a cat --d 2.5"), ["--d"]),
    "flag_ev_text": (dict(prompt="a cat --ev a,b"), ["--ev"]),
    # sane outputs
    "prompt_none": (dict(prompt=None), None),
    "negative_none": (dict(negative_prompt=None), None),
    "trigger_none": (dict(trigger_word=None), None),
    "prompt_unicode": (dict(prompt="ein Kätzchen 🐱 猫 --n ✗"), None),
    "prompt_very_long": (dict(prompt="a cat " * 2000), None),
    "flag_alone": (dict(prompt="a cat --"), None),
    "flags_empty": (dict(prompt="-- -- --"), None),
    "flag_unknown": (dict(prompt="a cat --foo 3"), None),
    "flag_n_empty": (dict(prompt="a cat --n"), None),
    "flag_w_small_floored": (dict(prompt="a cat --w 20 --h 70"), None),
    "flag_m_zero": (dict(prompt="a cat --m 0"), None),
    "guidance_default": (dict(guidance_scale=-1.0), None),
}


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_sample_inputs_and_prompt_flags(state, nodes, case):
    values, names = SAMPLE_CASES[case]
    inputs = dict(SMALL, **values)
    if names is None:
        image = nodes[2].sample(pipeline=state.with_lora, **inputs)[0]
        assert_sane((image.numpy() * 255).round().astype(np.uint8))
    else:
        expect_error(lambda: nodes[2].sample(pipeline=state.with_lora, **inputs), *names)
    assert_unchanged(state)


@pytest.mark.parametrize("pipeline", [None, "sdxl", 5])
def test_not_a_pipeline(state, nodes, pipeline):
    expect_error(lambda: nodes[2].sample(pipeline=pipeline, **SMALL), "pipeline must come from")
    expect_error(lambda: nodes[1].apply(pipeline=pipeline, lora_name="x", strength=1.0), "pipeline must come from")
    assert_unchanged(state)


def test_control_image_on_a_model_without_one_renders_the_same(state, nodes):
    image = torch.rand(1, 64, 64, 3)
    out = nodes[2].sample(pipeline=state.with_lora, control_image=image, **SMALL)[0]
    np.testing.assert_array_equal((out.numpy() * 255).round().astype(np.uint8), state.lora_pixels)
    assert_unchanged(state)


# ---------------------------------------------------------------------------------------------------------------
# Loader inputs

def _copy_base(state, scratch, name, kind="diffusers"):
    src = os.path.join(state.models_dir, kind, f"tiny-{state.model}")
    dest = os.path.join(state.models_dir, kind, name)
    if kind == "diffusers":
        shutil.copytree(src, dest)
    else:
        shutil.copy(src + ".safetensors", dest + ".safetensors")
        dest += ".safetensors"
    scratch.append(dest)
    return dest


def _broken_index(state, scratch):
    folder = _copy_base(state, scratch, "broken_index")
    open(os.path.join(folder, "model_index.json"), "w").write("{not json")
    return dict(base="broken_index"), ["broken_index", "model_index.json"]


def _missing_unet_weights(state, scratch):
    folder = _copy_base(state, scratch, "no_unet_weights")
    for f in os.listdir(os.path.join(folder, "unet")):
        if f.endswith(".safetensors"):
            os.remove(os.path.join(folder, "unet", f))
    return dict(base="no_unet_weights"), ["no_unet_weights"]


def _corrupt_checkpoint(state, scratch):
    path = os.path.join(state.models_dir, "checkpoints", "corrupt.safetensors")
    open(path, "wb").write(os.urandom(2048))
    scratch.append(path)
    return dict(base="corrupt.safetensors"), ["corrupt.safetensors"]


def _truncated_checkpoint(state, scratch):
    path = _copy_base(state, scratch, "cut", kind="checkpoints")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    return dict(base="cut.safetensors"), ["cut.safetensors"]


LOADER_CASES = {
    "unknown_model": lambda s, sc: (dict(model="sdxxl"), ["Unknown model id 'sdxxl'"]),
    "empty_model": lambda s, sc: (dict(model=""), ["Unknown model id ''"]),
    "model_none": lambda s, sc: (dict(model=None), ["Unknown model id None"]),
    "dtype_unknown": lambda s, sc: (dict(dtype="fp64"), ["dtype 'fp64'"]),
    "device_unknown": lambda s, sc: (dict(device="tpu"), ["device 'tpu'"]),
    "device_cuda_without_cuda": lambda s, sc: (dict(device="cuda"), ["device 'cuda'"]),
    "base_missing": lambda s, sc: (dict(base="nope"), ["'nope' was not found"]),
    "base_outside_roots": lambda s, sc: (dict(base="../diffusers/tiny-sdxl"), ["was not found"]),
    "base_absolute_path": lambda s, sc: (dict(base=os.path.join(s.models_dir, "diffusers", f"tiny-{s.model}")),
                                         ["was not found"]),
    "folder_of_the_other_family": lambda s, sc: (dict(base=f"tiny-{_other_model(s.model)}"),
                                                 [f"tiny-{_other_model(s.model)}", f"pick model {_other_model(s.model)}"]),
    "checkpoint_of_the_other_family": lambda s, sc: (dict(base=f"tiny-{_other_model(s.model)}.safetensors"),
                                                     [f"pick model {_other_model(s.model)}"]),
    "broken_model_index": _broken_index,
    "missing_unet_weights": _missing_unet_weights,
    "corrupt_checkpoint": _corrupt_checkpoint,
    "truncated_checkpoint": _truncated_checkpoint,
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cuda case needs a machine without CUDA")
@pytest.mark.parametrize("case", list(LOADER_CASES))
def test_bad_loader_inputs(state, nodes, scratch, case):
    values, names = LOADER_CASES[case](state, scratch)
    inputs = dict(dict(model=state.model, base=f"tiny-{state.model}", dtype="fp32", device="cpu"), **values)
    expect_error(lambda: nodes[0].load(**inputs), *names)
    assert_unchanged(state)


# ---------------------------------------------------------------------------------------------------------------
# Concurrency and Cancel

def test_concurrent_renders_of_two_handles_on_one_base(state):
    results, errors = {}, []

    def work(key, handle):
        try:
            results[key] = [render(handle) for _ in range(3)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(k, h)) for k, h in (("plain", state.plain),
                                                                      ("lora", state.with_lora))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for pixels in results["plain"]:
        np.testing.assert_array_equal(pixels, state.plain_pixels)
    for pixels in results["lora"]:
        np.testing.assert_array_equal(pixels, state.lora_pixels)


def test_concurrent_applies_of_one_file(state):
    handles, errors = [], []

    def work():
        try:
            handles.append(state.plain.with_lora(state.lora_file("kohya_b"), 0.5))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len({id(h.loras[-1].bound) for h in handles}) == 1  # read and bound once
    first = render(handles[0])
    for h in handles[1:]:
        np.testing.assert_array_equal(render(h), first)
    assert_unchanged(state)


@pytest.mark.parametrize("mode", ["merge", "branch"])
def test_cancel_mid_render(state, mode):
    def cancel(step, total, latents):
        if step == 2:
            raise Interrupted("cancelled")
    request = engine.build_request(state.with_lora.spec, "a cat", width=64, height=64, seed=5, steps=3,
                                   guidance_scale=6.0)
    with pytest.raises(Interrupted):
        engine.render(state.with_lora, request, on_step=cancel, lora_mode=mode)
    assert_unchanged(state)


# ---------------------------------------------------------------------------------------------------------------
# Files changing on disk under live handles (in a subprocess: a regression may be a SIGBUS)

PROBE = os.path.join(ROOT, "tests", "fixtures", "file_change_probe.py")
FILE_CHANGES = ["lora_truncated_after_apply", "lora_overwritten_same_size", "lora_resaved_shorter_then_applied",
                "base_weights_truncated", "base_weights_overwritten_same_size", "checkpoint_truncated"]


@pytest.fixture(scope="module")
def file_change_results(state, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"file_changes_{state.model}")
    run = subprocess.run([sys.executable, PROBE, state.model, state.models_dir, str(work)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    results = {}
    for line in run.stdout.splitlines():
        if line.startswith("RESULT "):
            entry = json.loads(line[len("RESULT "):])
            results[entry["case"]] = entry
    return run, results


@pytest.mark.parametrize("case", FILE_CHANGES)
def test_files_changing_on_disk(state, file_change_results, case):
    run, results = file_change_results
    assert case in results, (f"the probe died (exit {run.returncode}) before {case}:\n{run.stdout[-3000:]}\n"
                             f"{run.stderr[-3000:]}")
    assert results[case]["ok"], results[case]
    assert_unchanged(state)
