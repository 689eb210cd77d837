"""Qwen-Image-Edit, -Edit-2509 (`qwen_image_edit_plus`) and -Edit-2511 through the library render ai-toolkit's preview
bit for bit: library output == the independent hand-written reference (tests/reference_qwen.py `preview_edit` /
`preview_plus`), fp32 and bf16 on CPU, with 1 and 3 control images, ai-toolkit's LoRA merged, `do_cfg_norm`, and a
missing control image refused. The VAE-side control area (1024² in ai-toolkit) is shrunk to 128² for speed by
setting the SAME module constant in the pack and in the reference (`small_vae_area`); one test runs at the real sizes.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests import reference_qwen as ref
from tests.fixtures import tiny_qwen
from tests.fixtures.model_roots import cached_roots
from tests.fixtures.pixels import levels, same

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.errors import ControlImageError
from aitk_pack.pipelines.families.qwen import edit as pack_edit

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SMALL = dict(width=64, height=64, steps=2, seed=7, guidance_scale=4.0)
PROMPT = "make the fox blue"
NEGATIVE = "blurry"
LORA = "qwen_edit_lora.safetensors"
IDS = ("qwen_image_edit", "qwen_image_edit_plus", "qwen_image_edit_plus_2511")
SMALL_VAE_AREA = 128 * 128


def control(width=80, height=48, color=(250, 20, 40)):
    """A deterministic control image of another size and ratio than the output (so every resize matters)."""
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)
    rgb = np.stack([np.add.outer(y, x) / 2, np.outer(y, np.ones_like(x)), np.outer(np.ones_like(y), x)], -1)
    rgb[height // 3: height // 2, width // 4: width // 2] = color
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


CONTROLS = (control(), control(48, 72, (20, 200, 40)), control(64, 64, (30, 30, 220)))


@pytest.fixture(autouse=True)
def small_vae_area(request, monkeypatch):
    """ai-toolkit's 1024²-area VAE-side control is ~10 s per image on CPU: shrink it in the pack AND the reference."""
    if "real_sizes" not in request.node.name:
        monkeypatch.setattr(pack_edit, "VAE_AREA", SMALL_VAE_AREA)
        monkeypatch.setattr(ref, "VAE_AREA", SMALL_VAE_AREA)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    start = time.time()
    root = tmp_path_factory.mktemp("qwen_edit_models")
    (root / "loras").mkdir()
    for model_id in IDS:
        pipe = tiny_qwen.save(model_id, str(root / "diffusers" / f"tiny-{model_id}"))
        if model_id == "qwen_image_edit_plus":
            sd, meta = tiny_qwen.peft_lora(pipe.transformer, seed=22)
            save_file(sd, str(root / "loras" / LORA), metadata=meta)
    print(f"\n[qwen edit fixtures built in {time.time() - start:.1f} s]")
    return root


@pytest.fixture(scope="module")
def roots(models):
    yield from cached_roots(models, 8)


def render(roots, dtype, model_id, controls, loras=(), options=None, prompt=PROMPT, quantization="none", **values):
    handle = engine.load(model_id, base=f"tiny-{model_id}", dtype=dtype, device="cpu", roots=roots,
                         quantization=quantization)
    for name, strength in loras:
        handle = engine.apply_lora(handle, name, strength, roots=roots)
    if options:
        handle = handle.with_options(**options)
    return engine.generate(handle, prompt, controls=tuple(controls),
                           **{**SMALL, "negative_prompt": NEGATIVE, **values})[0]


def reference(models, dtype, model_id, controls, strength=None, do_cfg_norm=False, prompt=PROMPT, negative=NEGATIVE,
              legacy_ctrl_img=False, quantized=False, **values):
    v = dict(SMALL, **values)
    parts = ref.load_parts(str(models / "diffusers" / f"tiny-{model_id}"), DTYPES[dtype], edit=True)
    if quantized:
        ref.quantize_qfloat8(parts, DTYPES[dtype])
    if strength is not None:
        lora = ref.branch_lora if quantized else ref.merge_lora
        assert lora(parts, load_file(str(models / "loras" / LORA)), strength) == 28
    args = (v["seed"], v["steps"], v["guidance_scale"], v["width"], v["height"])
    if model_id == "qwen_image_edit":
        return ref.preview_edit(parts, prompt, negative, controls[0], *args)
    return ref.preview_plus(parts, prompt, negative, list(controls), *args, do_cfg_norm=do_cfg_norm,
                            legacy_ctrl_img=legacy_ctrl_img)


@pytest.mark.parametrize("n, dtype", [(1, "fp32"), (3, "fp32"), (3, "bf16")])
def test_edit_plus_matches_reference(models, roots, dtype, n):
    got = render(roots, dtype, "qwen_image_edit_plus", CONTROLS[:n])
    assert got.std() > 5
    same(got, reference(models, dtype, "qwen_image_edit_plus", CONTROLS[:n]))


def test_edit_plus_controls_and_cfg_norm_matter(models, roots, capsys):
    one = render(roots, "fp32", "qwen_image_edit_plus", CONTROLS[:1])
    assert levels(one, render(roots, "fp32", "qwen_image_edit_plus", CONTROLS[:2])) > 0
    normed = render(roots, "fp32", "qwen_image_edit_plus", CONTROLS[:1], options={"do_cfg_norm": True})
    with capsys.disabled():
        print(f"\nEdit-2509: the stock norm rescale (do_cfg_norm) vs the preview: {levels(normed, one)} levels")
    assert levels(normed, one) > 0, "do_cfg_norm must change the picture"
    same(normed, reference(models, "fp32", "qwen_image_edit_plus", CONTROLS[:1], do_cfg_norm=True))


@pytest.mark.parametrize("dtype", ["bf16"])
def test_edit_plus_lora_matches_reference(models, roots, dtype):
    got = render(roots, dtype, "qwen_image_edit_plus", CONTROLS[:2], loras=[(LORA, 0.7)])
    assert levels(got, render(roots, dtype, "qwen_image_edit_plus", CONTROLS[:2])) > 5
    same(got, reference(models, dtype, "qwen_image_edit_plus", CONTROLS[:2], strength=0.7))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_edit_matches_reference(models, roots, dtype):
    same(render(roots, dtype, "qwen_image_edit", CONTROLS[:1], width=96),
         reference(models, dtype, "qwen_image_edit", CONTROLS[:1], width=96))


@pytest.mark.parametrize("n, dtype", [(1, "bf16"), (2, "fp32")])
def test_edit_2511_matches_reference(models, roots, n, dtype):
    same(render(roots, dtype, "qwen_image_edit_plus_2511", CONTROLS[:n]),
         reference(models, dtype, "qwen_image_edit_plus_2511", CONTROLS[:n]))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model_id", IDS)
def test_every_edit_model_with_lora_strength_flags_and_all_its_controls(models, roots, model_id, dtype):
    """Per id and dtype: ai-toolkit's LoRA at 0.7, the trigger and --n / --cfg / --seed flags, and as many control
    images as the model takes (1 for Edit, 3 for Edit-Plus 2509/2511), all at once, equal the reference."""
    controls = CONTROLS[:1] if model_id == "qwen_image_edit" else CONTROLS
    got = render(roots, dtype, model_id, controls, loras=[(LORA, 0.7)], trigger_word="ohwx",
                 prompt="make the [trigger] fox blue --n no [trigger] --cfg 3 --seed 11")
    assert levels(got, render(roots, dtype, model_id, controls)) > 5, "LoRA and flags must change the picture"
    same(got, reference(models, dtype, model_id, controls, strength=0.7, prompt="make the ohwx fox blue",
                        negative="no ohwx", guidance_scale=3.0, seed=11))


@pytest.mark.parametrize("n, dtype", [(1, "fp32"), (2, "bf16")])
def test_legacy_ctrl_img_sample_shows_the_first_image_twice_to_the_vl_encoder(models, roots, n, dtype):
    """A sample that names its first image `ctrl_img` (option legacy_ctrl_img): ai-toolkit's VL encoder sees it
    twice, the VAE once; that preview differs from the ctrl_img_1 one and equals the reference."""
    got = render(roots, dtype, "qwen_image_edit_plus", CONTROLS[:n], options={"legacy_ctrl_img": True})
    same(got, reference(models, dtype, "qwen_image_edit_plus", CONTROLS[:n], legacy_ctrl_img=True))
    assert levels(got, render(roots, dtype, "qwen_image_edit_plus", CONTROLS[:n])) > 0


def test_edit_lora_applies_to_every_edit_model(roots):
    for model_id in IDS:
        handle = engine.load(model_id, base=f"tiny-{model_id}", dtype="fp32", device="cpu", roots=roots,
                             quantization="none")
        report = engine.apply_lora(handle, LORA, 1.0, roots=roots).loras[-1].bound.report
        assert report.applied_keys == report.total_keys == 56, (model_id, report)


@pytest.mark.parametrize("model_id", IDS)
def test_missing_control_image_is_a_clear_error(roots, model_id):
    handle = engine.load(model_id, base=f"tiny-{model_id}", dtype="fp32", device="cpu", roots=roots,
                         quantization="none")
    with pytest.raises(ControlImageError, match="control_image"):
        engine.generate(handle, PROMPT, **SMALL)


def test_edit_plus_at_real_sizes(models, roots):
    """ai-toolkit's own sizes (VAE side 1024² area: 1248x832 for the 80x48 control), 2 steps."""
    assert pack_edit.VAE_AREA == ref.VAE_AREA == 1024 * 1024
    same(render(roots, "fp32", "qwen_image_edit_plus", CONTROLS[:1], steps=2),
         reference(models, "fp32", "qwen_image_edit_plus", CONTROLS[:1], steps=2))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_edit_plus_qfloat8_with_lora_branch_matches_reference(models, roots, dtype):
    """The presets' qfloat8: the transformer block by block and the text encoder with its vision tower, the LoRA as
    an fp32 branch over the quantized layers."""
    pytest.importorskip("optimum.quanto")
    got = render(roots, dtype, "qwen_image_edit_plus", CONTROLS[:2], loras=[(LORA, 0.7)], quantization="qfloat8")
    assert levels(got, render(roots, dtype, "qwen_image_edit_plus", CONTROLS[:2], loras=[(LORA, 0.7)])) > 0
    same(got, reference(models, dtype, "qwen_image_edit_plus", CONTROLS[:2], strength=0.7, quantized=True))


def test_edit_qfloat8_matches_reference(models, roots):
    pytest.importorskip("optimum.quanto")
    same(render(roots, "bf16", "qwen_image_edit", CONTROLS[:1], quantization="qfloat8"),
         reference(models, "bf16", "qwen_image_edit", CONTROLS[:1], quantized=True))
