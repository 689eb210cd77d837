"""Wan 2.2 A14B (T2V and I2V) through the library renders ai-toolkit's preview bit for bit: library output == the
independent hand-written reference (tests/reference_wan22.py: ai-toolkit's Wan22Pipeline as its own loop), fp32 and
bf16 on CPU, with the high/low-noise expert pair: a `_high_noise` file with `expert` auto brings its `_low_noise`
sibling (strengths 1 and 0.6), a pair with the low side missing renders with transformer_2 on the base (and says so),
the combined `transformer_1`/`transformer_2` file is split, Diffusers names apply, `expert` high/low chain separate
files at separate strengths, `both` puts one file on both experts; the switch at t >= 875 (0.9 would differ); I2V
with the control image (VAE sample from the same generator) and without it (an error naming control_image); the
qfloat8 preset (both experts and the UMT5 quantized, the LoRAs as fp32 branches); UniPC (flow_shift 3) for LoRAs from
ai-toolkit < 0.9.3; and the ApplyAIToolkitLoRA node's `expert` input with its report."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests import reference_wan22 as ref
from tests.fixtures import tiny_wan, tiny_wan22
from tests.fixtures.fake_hub import fake_hub_repo
from tests.fixtures.model_roots import cached_roots
from tests.fixtures.pixels import levels, same

from aitk_pack.nodes.pipeline_nodes import ApplyAIToolkitLoRA
from aitk_pack.pipelines import engine
from aitk_pack.pipelines.cache import CACHE
from aitk_pack.pipelines.errors import ControlImageError, InputError, LoraError, ModelSourceError
from aitk_pack.pipelines.families import get_family
from aitk_pack.pipelines.families.base import EXPERTS
from aitk_pack.pipelines.registry import get_spec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# 2 steps at shift 5: t = 1000 (high-noise expert), 24.4 (low-noise expert)
SMALL = dict(width=64, height=64, steps=2, seed=7, guidance_scale=4.0, num_frames=5)
BOUNDARY_STEPS = 6  # t = 1000, 952.7, 883.2, 771.4, …: 883.2 lies between the boundaries 0.875 and 0.9
PROMPT = "a red fox running in the snow"
NEGATIVE = "blurry, low quality"
T2V, I2V = "wan22_14b_t2v", "wan22_14b_i2v"
HIGH, LOW = "pair_high_noise.safetensors", "pair_low_noise.safetensors"
LONE = "lone_high_noise.safetensors"  # train_low_noise off: no _low_noise file beside it


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan22_models")
    for sub in ("diffusers", "checkpoints", "loras"):
        (root / sub).mkdir()
    pipes = {m: tiny_wan22.save(m, str(root / "diffusers" / f"tiny-{m}")) for m in tiny_wan22.MODEL_IDS}
    # ai-toolkit's Wan 2.2 14B reads the VAE from ai-toolkit/wan2.1-vae, whatever the base (one VAE for both ids)
    fake_hub_repo(str(root / "hub"), tiny_wan22.VAE_REPO, {".": str(root / "diffusers" / f"tiny-{T2V}" / "vae")})
    loras = root / "loras"
    files = tiny_wan22.wan22_loras(pipes[T2V], seed=31, trigger_word="ohwx")
    save_file(files["high"][0], str(loras / HIGH), metadata=files["high"][1])
    save_file(files["low"][0], str(loras / LOW), metadata=files["low"][1])
    save_file(files["high"][0], str(loras / LONE), metadata=files["high"][1])
    save_file(files["combined"][0], str(loras / "pair_combined.safetensors"), metadata=files["combined"][1])
    # neither a file of a pair nor a combined file
    save_file(files["high"][0], str(loras / "plain.safetensors"), metadata=files["high"][1])
    save_file(files["high_diffusers"][0], str(loras / "dpair_high_noise.safetensors"), metadata=files["high"][1])
    save_file(files["low_diffusers"][0], str(loras / "dpair_low_noise.safetensors"), metadata=files["low"][1])
    for name, (sd, _) in (("old_high_noise", files["high"]), ("old_low_noise", files["low"])):
        save_file(sd, str(loras / f"{name}.safetensors"), metadata=tiny_wan22.metadata(sd, version="0.9.2"))
    i2v = tiny_wan22.wan22_loras(pipes[I2V], seed=41)
    save_file(i2v["high"][0], str(loras / "i2v_high_noise.safetensors"), metadata=i2v["high"][1])
    save_file(i2v["low"][0], str(loras / "i2v_low_noise.safetensors"), metadata=i2v["low"][1])
    tiny_wan.save("wan21_1b", str(root / "diffusers" / "tiny-wan21_1b"))
    sd21, meta21 = tiny_wan.wan_lora(tiny_wan.build("wan21_1b").transformer, seed=3)
    save_file(sd21, str(loras / "wan21.safetensors"), metadata=meta21)
    return root


@pytest.fixture(scope="module")
def roots(models):
    hub = os.environ.get("HF_HUB_CACHE")
    os.environ["HF_HUB_CACHE"] = str(models / "hub")
    yield from cached_roots(models, 8)
    if hub is None:
        os.environ.pop("HF_HUB_CACHE", None)
    else:
        os.environ["HF_HUB_CACHE"] = hub


@pytest.fixture(scope="module")
def control():
    """A smooth RGB test image (not 64x64: the resize to the render size is part of the recipe)."""
    y, x = np.mgrid[0:80, 0:96]
    rgb = np.stack([x * 2.5, y * 3.0, (x + y) * 1.4], axis=-1) % 256
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def handle(roots, dtype, loras=(), model=T2V, quantization="none"):
    h = engine.load(model, base=f"tiny-{model}", dtype=dtype, device="cpu", roots=roots, quantization=quantization)
    for name, strength, *expert in loras:
        h = engine.apply_lora(h, name, strength, roots=roots, expert=expert[0] if expert else "auto")
    return h


_RENDERS: dict = {}


def render(roots, dtype, loras=(), model=T2V, quantization="none", sampler=None, controls=(), **values):
    key = (dtype, tuple(loras), model, quantization, sampler, len(controls), tuple(sorted(values.items())))
    if key not in _RENDERS:
        h = handle(roots, dtype, loras, model, quantization)
        request = engine.build_request(h.spec, PROMPT, **{**SMALL, "negative_prompt": NEGATIVE, **values},
                                       controls=controls)
        _RENDERS[key] = engine.render(h, request, sampler=sampler)
    return _RENDERS[key]


def reference(models, dtype, merges=(), model=T2V, quantized=False, sampler="flowmatch", image=None,
              boundary=ref.BOUNDARY, vae_folder=None, tiled=True, **values):
    """`merges`: (file, strength, expert component) applied as ai-toolkit does (merged, or as fp32 branches over
    the quantized experts)."""
    v = dict(SMALL, **values)
    parts = ref.load_parts(str(models / "diffusers" / f"tiny-{model}"), DTYPES[dtype], vae_folder)
    if quantized:
        ref.quantize(parts, DTYPES[dtype])
    for name, strength, expert in merges:
        sd = load_file(str(models / "loras" / name))
        if quantized:
            from tests.reference_flux import branch_peft
            from tests.reference_wan import to_diffusers

            peft = {to_diffusers(k.rsplit(".lora_", 1)[0]) + ".lora_" + k.rsplit(".lora_", 1)[1]: t
                    for k, t in sd.items()}
            assert branch_peft({"transformer": parts[expert]}, peft, strength) == 20
        else:
            assert ref.merge(parts, sd, strength, expert) == 20
    return ref.preview(parts, PROMPT, NEGATIVE, v["seed"], v["steps"], v["guidance_scale"], v["width"],
                       v["height"], v["num_frames"], DTYPES[dtype], sampler=sampler, image=image, boundary=boundary,
                       tiled=tiled)


PAIR = ((HIGH, "transformer"), (LOW, "transformer_2"))


# ---------------------------------------------------------------------------------------------- T2V, the pair
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_base_matches_reference(models, roots, dtype):
    out = render(roots, dtype)
    assert out.frames.shape == (5, 64, 64, 3) and out.fps == 16.0
    assert out.frames.std() > 5 and len({f.tobytes() for f in out.frames}) > 1
    same(out.frames, reference(models, dtype))
    assert any(n.startswith("sampler flowmatch (flow-match Euler, shift 5") for n in out.notes), out.notes


@pytest.mark.parametrize("dtype,strength", [("fp32", 1.0), ("bf16", 1.0), ("fp32", 0.6), ("bf16", 0.6)])
def test_pair_auto_matches_reference(models, roots, dtype, strength):
    got = render(roots, dtype, loras=[(HIGH, strength)]).frames
    same(got, reference(models, dtype, merges=[(f, strength, e) for f, e in PAIR]))
    assert levels(got, render(roots, dtype).frames) > 0, "the LoRA pair should change the video"
    other = 1.6 - strength  # 0.6 <-> 1.0
    assert levels(got, render(roots, dtype, loras=[(HIGH, other)]).frames) > 0, "the strength should matter"


def test_boundary_is_0875_not_09(models, roots):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(**ref.FLOW_CONFIG)
    sched.set_timesteps(BOUNDARY_STEPS)
    assert any(875 <= float(t) < 900 for t in sched.timesteps), sched.timesteps  # the test can tell them apart
    got = render(roots, "fp32", loras=[(HIGH, 1.0)], steps=BOUNDARY_STEPS).frames
    merges = [(f, 1.0, e) for f, e in PAIR]
    at_09 = reference(models, "fp32", merges=merges, boundary=0.9, steps=BOUNDARY_STEPS)
    print(f"\nwan22_14b_t2v: boundary 0.9 instead of 0.875: {levels(got, at_09)} levels")
    assert levels(got, at_09) > 0
    same(got, reference(models, "fp32", merges=merges, steps=BOUNDARY_STEPS))


def test_every_key_applied_in_each_layout(models, roots):
    pair = handle(roots, "fp32", [(HIGH, 1.0)])
    assert [(r.file, dict(r.applied), r.applied_keys, r.total_keys) for r in pair.reports()] == [
        (HIGH, {"transformer": 20}, 40, 40), (LOW, {"transformer_2": 20}, 40, 40)]
    combined = handle(roots, "fp32", [("pair_combined.safetensors", 1.0)])
    (report,) = combined.reports()
    assert (dict(report.applied), report.applied_keys, report.total_keys) == (
        {"transformer": 20, "transformer_2": 20}, 80, 80), report.summary()
    diffusers = handle(roots, "fp32", [("dpair_high_noise.safetensors", 1.0)])
    assert [(dict(r.applied), r.not_applied_keys) for r in diffusers.reports()] == [
        ({"transformer": 20}, 0), ({"transformer_2": 20}, 0)]
    want = render(roots, "fp32", loras=[(HIGH, 1.0)]).frames
    for h in (combined, diffusers):
        same(engine.render(h, engine.build_request(h.spec, PROMPT, negative_prompt=NEGATIVE, **SMALL)).frames, want)


def test_low_file_brings_the_high_file(roots):
    h = handle(roots, "fp32", [(LOW, 1.0)])
    assert [(link.bound.name, link.expert.split()[0]) for link in h.loras] == [(HIGH, "high-noise"),
                                                                               (LOW, "low-noise")]
    same(render(roots, "fp32", loras=[(LOW, 1.0)]).frames, render(roots, "fp32", loras=[(HIGH, 1.0)]).frames)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_missing_low_side_renders_low_expert_on_base(models, roots, dtype):
    h = handle(roots, dtype, [(LONE, 1.0)])
    assert len(h.loras) == 1 and h.loras[0].bound.report.applied == {"transformer": 20}
    text = h.loras[0].summary()
    assert "lone_low_noise.safetensors" in text and "renders on the base model" in text, text
    got = render(roots, dtype, loras=[(LONE, 1.0)]).frames
    same(got, reference(models, dtype, merges=[(HIGH, 1.0, "transformer")]))  # LONE holds HIGH's tensors
    pair = render(roots, dtype, loras=[(HIGH, 1.0)]).frames
    print(f"\nwan22_14b_t2v {dtype}: low side missing vs the full pair: {levels(got, pair)} levels")
    assert levels(got, pair) > 0, "the low side should matter"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_high_and_low_chained_with_own_strengths(models, roots, dtype):
    got = render(roots, dtype, loras=[(HIGH, 1.0, "high"), (LOW, 0.6, "low")]).frames
    same(got, reference(models, dtype, merges=[(HIGH, 1.0, "transformer"), (LOW, 0.6, "transformer_2")]))
    assert levels(got, render(roots, dtype, loras=[(HIGH, 1.0)]).frames) > 0
    h = handle(roots, dtype, [(HIGH, 1.0, "high")])
    assert [link.bound.name for link in h.loras] == [HIGH], "expert high must not bring the sibling"


def test_both_puts_one_file_on_both_experts(models, roots):
    h = handle(roots, "fp32", [(HIGH, 0.6, "both")])
    assert [dict(r.applied) for r in h.reports()] == [{"transformer": 20}, {"transformer_2": 20}]
    assert h.loras[0].bound is not h.loras[1].bound  # the bind cache keys on the expert role
    same(render(roots, "fp32", loras=[(HIGH, 0.6, "both")]).frames,
         reference(models, "fp32", merges=[(HIGH, 0.6, "transformer"), (HIGH, 0.6, "transformer_2")]))


def test_bad_expert_choices_are_refused(roots):
    h = handle(roots, "fp32")
    with pytest.raises(LoraError, match="auto cannot tell.*Set expert to high"):
        engine.apply_lora(h, "plain.safetensors", 1.0, roots=roots)
    with pytest.raises(LoraError, match="holds both experts.*Set expert to auto"):
        engine.apply_lora(h, "pair_combined.safetensors", 1.0, roots=roots, expert="low")
    with pytest.raises(InputError, match="auto, high, low, both"):
        engine.apply_lora(h, HIGH, 1.0, roots=roots, expert="middle")
    assert h.loras == () and engine.apply_lora(h, "plain.safetensors", 1.0, roots=roots, expert="high").loras
    with pytest.raises(LoraError, match="Wan 2.2"):  # a Wan 2.1 LoRA is another family's
        engine.apply_lora(h, "wan21.safetensors", 1.0, roots=roots, expert="high")


def test_expert_on_a_model_without_experts(roots):
    for model in ("sdxl", "wan21_1b"):
        spec = get_spec(model)
        for expert in ("high", "low", "both"):
            with pytest.raises(LoraError, match="single transformer.*set expert to auto"):
                get_family(spec).lora_plan(spec, "x_high_noise.safetensors", expert)
    h = engine.load("wan21_1b", base="tiny-wan21_1b", dtype="fp32", device="cpu", roots=roots)
    with pytest.raises(LoraError, match="Wan 2.1 T2V 1.3B has a single transformer"):
        engine.apply_lora(h, "wan21.safetensors", 1.0, roots=roots, expert="high")
    assert engine.apply_lora(h, "wan21.safetensors", 1.0, roots=roots).reports()[0].applied_modules == 20


def test_size_floored_to_16_with_a_note(models, roots):
    out = render(roots, "fp32", width=72, height=88)
    assert out.frames.shape[1:3] == (80, 64)
    assert any("floored to 64x80" in n for n in out.notes), out.notes
    same(out.frames, reference(models, "fp32", width=64, height=80))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_old_lora_previews_with_unipc_flow_shift_3(models, roots, dtype):
    out = render(roots, dtype, loras=[("old_high_noise.safetensors", 1.0)])
    assert any(n.startswith("sampler unipc (UniPC, flow sigmas, flow_shift 3)") and "0.9.2" in n
               for n in out.notes), out.notes
    same(out.frames, reference(models, dtype, merges=[(f, 1.0, e) for f, e in PAIR], sampler="unipc"))
    euler = render(roots, dtype, loras=[(HIGH, 1.0)]).frames
    print(f"\nwan22_14b_t2v {dtype}: UniPC (ai-toolkit < 0.9.3) vs flow-match Euler: {levels(out.frames, euler)} levels")
    assert levels(out.frames, euler) > 0


# ---------------------------------------------------------------------------------------------- I2V
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_i2v_with_control_image_matches_reference(models, roots, control, dtype):
    loras = [("i2v_high_noise.safetensors", 1.0)]
    out = render(roots, dtype, loras=loras, model=I2V, controls=(control,))
    assert out.frames.shape == (5, 64, 64, 3)
    merges = [("i2v_high_noise.safetensors", 1.0, "transformer"), ("i2v_low_noise.safetensors", 1.0, "transformer_2")]
    same(out.frames, reference(models, dtype, merges=merges, model=I2V, image=control))


def test_i2v_image_conditions_the_video(models, roots, control):
    h = handle(roots, "fp32", model=I2V)
    flipped = control.transpose(Image.FLIP_LEFT_RIGHT)
    outs = [engine.render(h, engine.build_request(h.spec, PROMPT, negative_prompt=NEGATIVE, **SMALL,
                                                  controls=(img,))).frames for img in (control, flipped)]
    assert levels(*outs) > 5, "the first frame should follow the control image"
    same(outs[1], reference(models, "fp32", model=I2V, image=flipped))


def test_i2v_without_image_names_control_image(roots):
    h = handle(roots, "fp32", model=I2V)
    with pytest.raises(ControlImageError, match="control_image"):
        engine.render(h, engine.build_request(h.spec, PROMPT, **SMALL))


# ---------------------------------------------------------------------------------------------- qfloat8 preset
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_qfloat8_preset_with_branch_pair(models, roots, dtype):
    pytest.importorskip("optimum.quanto")
    out = render(roots, dtype, loras=[(HIGH, 1.0)], quantization="match training")
    assert any(n.startswith("quantized base: qfloat8 on transformer, transformer_2, text_encoder") and
               n.endswith("(LoRA as an fp32 branch)") for n in out.notes), out.notes
    same(out.frames, reference(models, dtype, merges=[(f, 1.0, e) for f, e in PAIR], quantized=True))
    plain = render(roots, dtype, loras=[(HIGH, 1.0)]).frames
    print(f"\nwan22_14b_t2v {dtype}: qfloat8 vs unquantized render: {levels(out.frames, plain)} levels")
    assert levels(out.frames, plain) > 0


# ---------------------------------------------------------------------------------------------- the node
def test_node_expert_input_and_report(models, roots, monkeypatch):
    from aitk_pack.nodes import pipeline_nodes

    monkeypatch.setattr(pipeline_nodes, "model_roots", lambda: roots)
    optional = ApplyAIToolkitLoRA.INPUT_TYPES()["optional"]
    assert optional["expert"][0] == list(EXPERTS) == ["auto", "high", "low", "both"]
    assert optional["expert"][1]["default"] == "auto"
    base = handle(roots, "fp32")
    out = ApplyAIToolkitLoRA().apply(base, HIGH, 1.0)
    (text,) = out["ui"]["text"]
    assert f"{HIGH}: applied 40/40 keys" in text and f"{LOW}: applied 40/40 keys" in text, text
    assert "-> high-noise expert (transformer" in text and "-> low-noise expert (transformer_2" in text, text
    assert f"brought {LOW}" in text, text
    assert [link.bound.name for link in out["result"][0].loras] == [HIGH, LOW]
    (text,) = ApplyAIToolkitLoRA().apply(base, LONE, 1.0, expert="auto")["ui"]["text"]
    assert "lone_low_noise.safetensors" in text and "renders on the base model" in text, text
    (text,) = ApplyAIToolkitLoRA().apply(base, LOW, 0.6, expert="low")["ui"]["text"]
    assert HIGH not in text and "-> low-noise expert" in text and "expert low: only this file" in text, text
    with pytest.raises(InputError, match="expert"):
        ApplyAIToolkitLoRA().apply(base, HIGH, 1.0, expert="HIGH")
    # the node is re-run when either file of the pair changes (auto reads both)
    before = ApplyAIToolkitLoRA.IS_CHANGED(lora_name=HIGH)
    low = os.path.join(str(models / "loras"), LOW)
    st = os.stat(low)
    os.utime(low, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    try:
        assert ApplyAIToolkitLoRA.IS_CHANGED(lora_name=HIGH) != before
    finally:
        os.utime(low, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_vae_comes_from_ai_toolkits_wan21_vae_repo(models, roots, tmp_path):
    """`_wan_vae_path`: the VAE is read from ai-toolkit/wan2.1-vae even for a local base folder with its own vae/
    (here another VAE in the repo than in the folder); without that repo the loader says what to download."""
    other = str(tmp_path / "other_vae")
    tiny_wan._seeded(5, tiny_wan._vae).save_pretrained(other)
    hub = os.environ["HF_HUB_CACHE"]
    try:
        os.environ["HF_HUB_CACHE"] = str(tmp_path / "hub")
        fake_hub_repo(str(tmp_path / "hub"), tiny_wan22.VAE_REPO, {".": other})
        CACHE.release()
        got = engine.generate(handle(roots, "fp32"), PROMPT, negative_prompt=NEGATIVE, **SMALL)
        same(got, reference(models, "fp32", vae_folder=other))
        assert levels(got, reference(models, "fp32")) > 0, "the folder's own VAE gives another picture"
        os.environ["HF_HUB_CACHE"] = str(tmp_path / "empty")
        CACHE.release()
        with pytest.raises(ModelSourceError, match=r"reads its VAE from ai-toolkit/wan2.1-vae.*hf download"):
            handle(roots, "fp32")
    finally:
        os.environ["HF_HUB_CACHE"] = hub
        CACHE.release()


def test_decode_is_tiled_as_the_low_vram_presets(models, roots):
    """The presets' low_vram decodes tiled (Diffusers' tiles, above 256 px): on by default, option vae_tiling off
    for a run trained without it; the two differ."""
    wide = dict(SMALL, width=288, steps=1)
    tiled = engine.generate(handle(roots, "fp32"), PROMPT, negative_prompt=NEGATIVE, **wide)
    same(tiled, reference(models, "fp32", **wide))
    plain = engine.generate(handle(roots, "fp32").with_options(vae_tiling=False), PROMPT, negative_prompt=NEGATIVE,
                            **wide)
    same(plain, reference(models, "fp32", tiled=False, **wide))
    assert levels(tiled, plain) > 0
