"""LoRA engine: every key of every layout applies (counted), strength and restore are exact, handles are
independent, and changing LoRAs never reloads the base."""
from __future__ import annotations

import os

import numpy as np
import pytest
from safetensors.torch import load_file

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.cache import CACHE

SMALL = dict(width=64, height=64, steps=4, seed=3, guidance_scale=6.0)


def lora_path(models_dir, name):
    return os.path.join(models_dir, "loras", f"{name}.safetensors")


def handle(model, dtype="fp32"):
    return engine.load(model, base=f"tiny-{model}", dtype=dtype, device="cpu")


def render(h, prompt="a small house"):
    return engine.generate(h, prompt, **SMALL)


def module_count(state_dict):
    return len({k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in state_dict})


LAYOUTS = ["sd15_kohya", "sd15_kohya_conv", "sd15_kohya_all", "sd15_kohya_te", "sd15_peft", "sdxl_kohya",
           "sdxl_kohya_conv", "sdxl_kohya_all", "sdxl_kohya_te", "sdxl_peft", "sdxl_kohya_sgm"]


@pytest.mark.parametrize("name", LAYOUTS)
def test_every_key_of_every_layout_applies(models_dir, name):
    model = name.split("_")[0]
    state = load_file(lora_path(models_dir, name))
    h = handle(model).with_lora(lora_path(models_dir, name), 1.0)
    report = h.loras[-1].bound.report
    assert report.total_keys == len(state)
    assert report.applied_keys == len(state), report.summary()
    assert report.applied_modules == module_count(state)
    assert not report.warnings()
    if name.endswith(("_te", "_all", "_peft")):
        expected = {"text_encoder", "text_encoder_2"} if model == "sdxl" else {"text_encoder"}
        assert expected <= set(report.applied)


def test_kohya_sdxl_add_embedding_and_time_keys_apply(models_dir):
    """kohya-trained SDXL files carry add_embedding_linear_1/2 (Diffusers' own loader drops them silently)."""
    h = handle("sdxl").with_lora(lora_path(models_dir, "sdxl_kohya_all"), 1.0)
    paths = {t.path for t in h.loras[-1].bound.targets}
    assert {"add_embedding.linear_1", "add_embedding.linear_2", "time_embedding.linear_1", "conv_in",
            "conv_out", "down_blocks.0.resnets.0.time_emb_proj"} <= paths


def test_layouts_with_the_same_values_render_the_same(models_dir):
    """SGM names == Diffusers names; peft (scale 1) == kohya with alpha == rank. Same values, same pixels."""
    base = handle("sdxl")
    kohya = render(base.with_lora(lora_path(models_dir, "sdxl_kohya"), 1.0))
    sgm = render(base.with_lora(lora_path(models_dir, "sdxl_kohya_sgm"), 1.0))
    np.testing.assert_array_equal(kohya, sgm)
    peft = render(base.with_lora(lora_path(models_dir, "sdxl_peft"), 1.0))
    rank_alpha = render(base.with_lora(lora_path(models_dir, "sdxl_kohya_rank_alpha"), 1.0))
    np.testing.assert_array_equal(peft, rank_alpha)
    assert np.abs(peft.astype(int) - kohya).max() > 0


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_strength_zero_equals_no_lora(models_dir, model):
    base = handle(model, "bf16")
    plain = render(base)
    zero = render(base.with_lora(lora_path(models_dir, f"{model}_kohya_all"), 0.0))
    np.testing.assert_array_equal(plain, zero)


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_removing_a_lora_restores_the_base_bit_for_bit(models_dir, model):
    base = handle(model, "bf16")
    components = base.base.patcher.components
    before = {(c, k): v.clone() for c, m in components.items() for k, v in m.state_dict().items()}
    plain = render(base)
    with_lora = render(base.with_lora(lora_path(models_dir, f"{model}_kohya_all"), 1.3))
    assert np.abs(with_lora.astype(int) - plain).max() > 10
    again = render(base)
    np.testing.assert_array_equal(plain, again)
    for (c, k), v in before.items():
        assert (components[c].state_dict()[k] == v).all(), f"{c}.{k} drifted"


def test_handles_are_independent_and_immutable(models_dir):
    a = handle("sdxl")
    b = a.with_lora(lora_path(models_dir, "sdxl_kohya"), 1.0)
    c = b.with_lora(lora_path(models_dir, "sdxl_kohya_b"), 0.5)
    assert a.loras == () and len(b.loras) == 1 and len(c.loras) == 2
    first = {k: render(h) for k, h in (("a", a), ("b", b), ("c", c))}
    for k, h in (("c", c), ("a", a), ("b", b), ("a", a), ("c", c)):  # interleaved: each sees only its own chain
        np.testing.assert_array_equal(render(h), first[k])
    assert len({first[k].tobytes() for k in first}) == 3


def test_strength_change_and_swap_never_reload_the_base(models_dir):
    base = handle("sd15")
    render(base)
    loads = CACHE.loads
    for name, strength in (("sd15_kohya", 1.0), ("sd15_kohya", 0.3), ("sd15_kohya_b", 1.0), ("sd15_kohya_conv", 2)):
        render(base.with_lora(lora_path(models_dir, name), strength))
    assert CACHE.loads == loads
    assert handle("sd15").base is base.base


def test_report_lists_unknown_keys_and_counts_them(models_dir, tmp_path):
    from safetensors.torch import save_file

    state = load_file(lora_path(models_dir, "sd15_kohya"))
    extra = dict(state)
    down = next(k for k in state if k.endswith(".lora_down.weight"))
    prefix = down[: -len(".lora_down.weight")]
    extra["lora_unet_no_such_block_to_q.lora_down.weight"] = state[down].clone()
    extra["lora_unet_no_such_block_to_q.lora_up.weight"] = state[prefix + ".lora_up.weight"].clone()
    extra["emb_params"] = state[down][:2].clone()
    path = os.path.join(models_dir, "loras", "with_unknown.safetensors")
    save_file(extra, path)
    try:
        h = engine.apply_lora(handle("sd15"), "with_unknown", 1.0)
        report = h.loras[-1].bound.report
        assert report.applied_keys == len(state) and report.total_keys == len(state) + 3
        assert report.unmatched == ["lora_unet_no_such_block_to_q"] and report.leftovers == ["emb_params"]
        text = report.summary()
        assert "no_such_block" in text and "emb_params" in text and f"{len(state)}/{len(state) + 3}" in text
    finally:
        os.remove(path)


def test_apply_node_shows_the_report(nodes):
    load, apply, _ = nodes
    (h,) = load.load(model="sd15", base="tiny-sd15", dtype="fp32", device="cpu")
    out = apply.apply(pipeline=h, lora_name="sd15_kohya_conv.safetensors", strength=1.0)
    assert out["result"][0] is not h and h.loras == ()
    assert "applied" in out["ui"]["text"][0] and "sd15_kohya_conv" in out["ui"]["text"][0]
