"""Z-Image through the library renders ai-toolkit's preview bit for bit: library output == the independent hand-written
reference (tests/reference_zimage.py: Diffusers' ZImagePipeline fed with ai-toolkit's scheduler, hand-encoded prompts,
guidance max(0, cfg - 1), its own LoRA merge and branches), fp32 and bf16 on CPU, for each id (Turbo cfg 1, base
cfg 4, De-Turbo cfg 3 with its transformer + Turbo's parts), ai-toolkit's LoRA layout merged at strengths 1 and 0.6,
the Turbo training adapter (merged at +1, sampled at -1, the LoRA merged on top), and the qfloat8 base with the LoRA
as an fp32 branch. Wrong choices (shift, guidance offset, a dynamic shift) are shown to change the picture, and the
residue of rendering without the adapter is measured (printed)."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import reference_zimage as ref
from tests.fixtures import tiny_zimage
from tests.fixtures.fake_hub import fake_hub_repo
from tests.fixtures.model_roots import cached_roots
from tests.fixtures.pixels import levels, same

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.errors import LoraError
from aitk_pack.pipelines.registry import get_spec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SMALL = dict(width=64, height=64, steps=2, seed=7)
PROMPT = "a red fox in the snow"
NEGATIVE = "blurry, low quality"
LORA = "zimage_aitk.safetensors"
ADAPTER = "zimage_turbo_training_adapter_v2.safetensors"
ADAPTER_HUB = "ostris/zimage_turbo_training_adapter/" + ADAPTER
FOLDERS = {"zimage": "tiny-zimage", "zimage_turbo": "tiny-zimage-turbo", "zimage_deturbo": "tiny-zimage-deturbo"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("zimage_models")
    for sub in ("diffusers", "checkpoints", "loras"):
        (root / sub).mkdir()
    for model_id, name in FOLDERS.items():
        pipe = tiny_zimage.build(model_id)
        pipe.save_pretrained(str(root / "diffusers" / name))
        if model_id == "zimage_turbo":
            sd, meta = tiny_zimage.zimage_lora(pipe.transformer, seed=21, trigger_word="ohwx")
            save_file(sd, str(root / "loras" / LORA), metadata=meta)
            save_file(tiny_zimage.training_adapter(pipe.transformer), str(root / "loras" / ADAPTER))
    cache = str(root / "hf_cache")
    diffusers = root / "diffusers"
    # base "default" of De-Turbo: ostris/Z-Image-De-Turbo holds the transformer, the rest is Z-Image-Turbo's
    fake_hub_repo(cache, "ostris/Z-Image-De-Turbo", {"transformer": str(diffusers / FOLDERS["zimage_deturbo"] /
                                                                          "transformer")})
    fake_hub_repo(cache, "Tongyi-MAI/Z-Image-Turbo", {n: str(diffusers / FOLDERS["zimage_turbo"] / n) for n in
                                                        ("model_index.json", "transformer", "text_encoder",
                                                         "tokenizer", "vae", "scheduler")})
    fake_hub_repo(cache, "ostris/zimage_turbo_training_adapter", {ADAPTER: str(root / "loras" / ADAPTER)})
    return root


@pytest.fixture(scope="module")
def roots(models):
    yield from cached_roots(models, 12)


def load(roots, dtype, model="zimage_turbo", base=None, quantization="none", adapter=""):
    handle = engine.load(model, base=base or FOLDERS[model], dtype=dtype, device="cpu", roots=roots,
                         quantization=quantization)
    return handle.with_options(roots=roots, training_adapter=adapter) if adapter else handle


def render(roots, dtype, model="zimage_turbo", loras=(), base=None, quantization="none", adapter="", **values):
    handle = load(roots, dtype, model, base, quantization, adapter)
    for name, strength in loras:
        handle = engine.apply_lora(handle, name, strength, roots=roots)
    values = {**SMALL, "negative_prompt": NEGATIVE, "guidance_scale": get_spec(model).defaults.guidance_scale,
              **values}
    return engine.generate(handle, values.pop("prompt", PROMPT), **values)[0]


def reference(models, dtype, model="zimage_turbo", strength=None, adapter=False, quantized=False, prompt=PROMPT,
              **values):
    v = {**SMALL, "negative_prompt": NEGATIVE, "guidance_scale": get_spec(model).defaults.guidance_scale, **values}
    folder = models / "diffusers" / FOLDERS[model]
    if model == "zimage_deturbo":  # the preset's parts: transformer of its repo, the rest of Z-Image-Turbo
        parts = ref.load_parts(str(models / "diffusers" / FOLDERS["zimage_turbo"]), DTYPES[dtype], str(folder))
    else:
        parts = ref.load_parts(str(folder), DTYPES[dtype])
    if quantized:
        ref.quantize_like_aitk(parts)
    if adapter:
        assert ref.merge(parts, load_file(str(models / "loras" / ADAPTER)), 1.0, DTYPES[dtype]) == 37
    if strength is not None:
        sd = load_file(str(models / "loras" / LORA))
        if quantized:
            assert ref.branch(parts, sd, strength) == 16
        else:
            assert ref.merge(parts, sd, strength) == 16
    if adapter:
        ref.branch(parts, load_file(str(models / "loras" / ADAPTER)), -1.0, DTYPES[dtype])
    return ref.preview(parts, prompt, v["negative_prompt"], v["seed"], v["steps"], v["guidance_scale"], v["width"],
                       v["height"])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model", list(FOLDERS))
def test_base_matches_reference(models, roots, model, dtype):
    base = "default" if model == "zimage_deturbo" else None
    if base:
        os.environ["HF_HUB_CACHE"] = str(models / "hf_cache")
    try:
        got = render(roots, dtype, model, base=base)
    finally:
        os.environ.pop("HF_HUB_CACHE", None)
    assert got.std() > 5, "the tiny model should render a non-flat image"
    same(got, reference(models, dtype, model))


def test_defaults_are_the_presets():
    for model, (steps, cfg) in {"zimage_turbo": (9, 1.0), "zimage": (30, 4.0), "zimage_deturbo": (25, 3.0)}.items():
        d = get_spec(model).defaults
        assert (d.steps, d.guidance_scale, d.width, d.height) == (steps, cfg, 1024, 1024)
        assert get_spec(model).quant.preset == "qfloat8"


def test_guidance_is_cfg_minus_one(models, roots):
    """cfg 1 (Turbo): guidance 0, one pass, the negative unused; cfg 2 is CFG with g = 1, not g = 2."""
    no_cfg = render(roots, "fp32", "zimage", guidance_scale=1.0)
    same(render(roots, "fp32", "zimage", guidance_scale=1.0, negative_prompt="another negative"), no_cfg)
    same(render(roots, "fp32", "zimage", guidance_scale=0.5), no_cfg)  # max(0, cfg - 1)
    cfg2 = render(roots, "fp32", "zimage", guidance_scale=2.0)
    assert levels(cfg2, no_cfg) > 5
    assert levels(cfg2, render(roots, "fp32", "zimage", guidance_scale=2.0, negative_prompt="another negative")) > 0
    parts = ref.load_parts(str(models / "diffusers" / FOLDERS["zimage"]))
    stock = ref.preview(parts, PROMPT, NEGATIVE, SMALL["seed"], SMALL["steps"], 2.0, 64, 64, guidance=2.0)
    print(f"\nguidance 2 passed as is (no -1 offset): {levels(stock, cfg2)} levels off")
    assert levels(stock, cfg2) > 0


def test_static_shift_three_matters(models, roots):
    got = render(roots, "fp32", "zimage")
    parts = ref.load_parts(str(models / "diffusers" / FOLDERS["zimage"]))
    for label, sched in (("shift 1", ref.scheduler(1.0)), ("dynamic shift", None)):
        if sched is None:
            from diffusers import FlowMatchEulerDiscreteScheduler
            sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, use_dynamic_shifting=True, shift=3.0)
        other = ref.preview(parts, PROMPT, NEGATIVE, SMALL["seed"], SMALL["steps"], 4.0, 64, 64, sched=sched)
        print(f"\n{label} instead of static 3: {levels(other, got)} levels off")
        assert levels(other, got) > 0


def test_sizes_are_floored_to_16(roots):
    got = render(roots, "fp32", width=100, height=79)
    assert got.shape == (64, 96, 3)  # 100 -> 96 (8) -> 96 (16); 79 -> 72 (8) -> 64 (16)


@pytest.mark.parametrize("dtype, strength", [("fp32", 1.0), ("fp32", 0.6), ("bf16", 1.0)])
def test_aitk_lora_matches_reference(models, roots, dtype, strength):
    got = render(roots, dtype, loras=[(LORA, strength)])
    assert levels(got, render(roots, dtype)) > 5, "the LoRA should change the image"
    same(got, reference(models, dtype, strength=strength))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model", ["zimage", "zimage_deturbo"])
def test_lora_strength_and_flags_on_the_other_ids(models, roots, model, dtype):
    """Z-Image (base) and De-Turbo, with their own CFG defaults: the LoRA at 0.8 with the trigger and --n / --cfg
    flags equals the reference."""
    base = "default" if model == "zimage_deturbo" else None  # its preset's parts (see test_base_matches_reference)
    if base:
        os.environ["HF_HUB_CACHE"] = str(models / "hf_cache")
    try:
        got = render(roots, dtype, model, loras=[(LORA, 0.8)], base=base, trigger_word="ohwx",
                     prompt="a [trigger] fox --n a neg [trigger] --cfg 3")
        assert levels(got, render(roots, dtype, model, base=base)) > 5, "the LoRA and flags should change the image"
    finally:
        os.environ.pop("HF_HUB_CACHE", None)
    same(got, reference(models, dtype, model, strength=0.8, prompt="a ohwx fox", negative_prompt="a neg ohwx",
                        guidance_scale=3.0))


def test_every_key_of_an_aitk_lora_applies(roots):
    report = engine.apply_lora(load(roots, "fp32"), LORA, 1.0, roots=roots).loras[-1].bound.report
    assert report.applied_keys == report.total_keys == 2 * 8 * tiny_zimage.N_LAYERS, report.summary()
    assert report.applied == {"transformer": 16}


def test_trigger_and_prompt_flags(models, roots):
    got = render(roots, "fp32", loras=[(LORA, 1.0)], prompt="a [trigger] fox --m 0.6 --n a neg [trigger] --cfg 2",
                 trigger_word="ohwx")
    same(got, reference(models, "fp32", strength=0.6, prompt="a ohwx fox", negative_prompt="a neg ohwx",
                        guidance_scale=2.0))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_training_adapter_matches_reference(models, roots, monkeypatch, dtype):
    """ai-toolkit's Turbo preview: adapter merged at +1 (model dtype), the LoRA merged on top, the adapter at -1.
    The adapter is found by name in the loras folder."""
    got = render(roots, dtype, loras=[(LORA, 1.0)], adapter=ADAPTER)
    same(got, reference(models, dtype, strength=1.0, adapter=True))
    if dtype == "fp32":  # lora_mode "branch": the LoRA as an fp32 branch over the adapter's, the adapter still merged
        handle = engine.apply_lora(load(roots, dtype, adapter=ADAPTER), LORA, 1.0, roots=roots)
        branched = engine.generate(handle, PROMPT, negative_prompt=NEGATIVE, guidance_scale=1.0, lora_mode="branch",
                                   **SMALL)[0]
        patcher = handle.base.patcher  # left as rendered: the adapter merged at +1 into a layer the LoRA lacks
        key = ("transformer", "t_embedder.mlp.0", "weight")
        assert key in patcher.pristine, "the adapter must stay merged at +1 in branch mode"
        assert not torch.equal(patcher.pristine[key], handle.base.pipe.transformer.t_embedder.mlp[0].weight)
        assert levels(branched, got) <= 1
    plain = render(roots, dtype, loras=[(LORA, 1.0)])
    print(f"\n{dtype}: Turbo + LoRA without the adapter is {levels(got, plain)} levels off ai-toolkit's preview")
    # the cached base is exactly restored: the plain render after the adapter one equals a fresh reference
    same(render(roots, dtype), reference(models, dtype))


def test_training_adapter_from_the_hf_cache_and_base_only(models, roots, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(models / "hf_cache"))
    got = render(roots, "fp32", adapter=ADAPTER_HUB)
    same(got, reference(models, "fp32", adapter=True))


def test_training_adapter_errors(roots):
    with pytest.raises(LoraError, match="was not found"):
        render(roots, "fp32", adapter="missing_adapter.safetensors")
    # quantized + adapter (merged before torchao float8): tests/test_quantize_torchao.py


def test_qfloat8_base_runs_the_lora_as_an_fp32_branch(models, roots):
    got = render(roots, "fp32", loras=[(LORA, 0.8)], quantization="qfloat8")
    same(got, reference(models, "fp32", strength=0.8, quantized=True))


def test_wrong_family_lora_is_refused(models, roots, tmp_path):
    sd, meta = tiny_zimage.zimage_lora(tiny_zimage.build("zimage").transformer)
    save_file(sd, str(models / "loras" / "flux_tagged.safetensors"), metadata={**meta, "ss_base_model_version": "flux.1"})
    with pytest.raises(LoraError, match="FLUX"):
        engine.apply_lora(load(roots, "fp32"), "flux_tagged.safetensors", roots=roots)


def test_stack_stages_round_in_turn_and_branches_compute_in_their_dtype():
    """The generic pieces the adapter uses (`lora.merge.StackEntry`): a lower stage is merged and rounded before the
    next one reads the weights; `branch_dtype` runs a branch in that dtype; restoring gives the pristine weights."""
    from aitk_pack.pipelines.lora.bind import BoundLora, MatchReport, Target
    from aitk_pack.pipelines.lora.merge import StackEntry, WeightPatcher
    from aitk_pack.pipelines.lora.parse import LoraModule

    gen = torch.Generator().manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16)).to(torch.bfloat16).requires_grad_(False)
    pristine = model[0].weight.clone()

    def bound(seed):
        g = torch.Generator().manual_seed(seed)
        mod = LoraModule("0", "peft", {"down": torch.randn(4, 16, generator=g), "up": torch.randn(16, 4, generator=g)})
        return BoundLora("x.safetensors", [Target("m", "0", mod)], MatchReport("x"), None), mod

    (adapter, a), (lora, b) = bound(1), bound(2)
    product = lambda m: m.tensors["up"] @ m.tensors["down"]  # noqa: E731
    patcher = WeightPatcher({"m": model})
    patcher.set_stack([StackEntry(adapter, 1.0, stage=-1), (lora, 0.5)])
    staged = ((pristine.float() + product(a)).to(torch.bfloat16).float() + 0.5 * product(b)).to(torch.bfloat16)
    assert torch.equal(model[0].weight, staged)
    assert not torch.equal(staged, (pristine.float() + product(a) + 0.5 * product(b)).to(torch.bfloat16))
    patcher.set_stack([StackEntry(adapter, -1.0, branch_dtype=torch.bfloat16)])
    x = torch.randn(2, 16, generator=gen).to(torch.bfloat16)
    low = a.tensors["down"].to(torch.bfloat16), a.tensors["up"].to(torch.bfloat16)
    want = torch.nn.functional.linear(x, pristine, model[0].bias) - (x @ low[0].T) @ low[1].T
    assert torch.equal(model(x), want) and torch.equal(model[0].weight, pristine)
    patcher.set_stack([])
    assert torch.equal(model[0].weight, pristine) and "forward" not in model[0].__dict__
