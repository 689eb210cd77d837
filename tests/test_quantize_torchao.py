"""torchao float8 (`Float8WeightOnlyConfig`) as ai-toolkit applies it, and the Z-Image-Turbo preset with its training
adapter on a quantized base: ai-toolkit merges the adapter at +1 into the full-precision weights, then quantizes the
transformer with torchao float8 (the preset's qfloat8 becomes float8) and the text encoder with qfloat8, and samples
with the adapter at -1 as a model-dtype branch and the user's LoRA as an fp32 branch over it.

The reference (`reference_float8`) writes the merge, the order and the module selection out by hand
(tests/reference_zimage.py for the rest) and calls torchao's own `quantize_` per Linear, the library ai-toolkit
calls. fp32 and bf16, bit for bit. Skipped without torchao (requirements-test.txt installs ai-toolkit's pin,
torchao==0.10.0), except the missing-package test, which simulates its absence in a subprocess.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from fnmatch import fnmatch

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import reference_zimage as ref
from tests.fixtures import tiny_zimage
from tests.fixtures.model_roots import cached_roots
from tests.fixtures.pixels import levels, same

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.cache import CACHE
from aitk_pack.pipelines.quantize import QuantizeRule, is_quantized, quantize_component
from aitk_pack.pipelines.registry import get_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    from torchao.quantization.quant_api import Float8WeightOnlyConfig, quantize_
    HAVE_TORCHAO = True
except Exception:  # noqa: BLE001
    HAVE_TORCHAO = False
needs_torchao = pytest.mark.skipif(not HAVE_TORCHAO, reason="torchao is not installed "
                                   "(pip install -r requirements-test.txt)")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# ai-toolkit's `Float8WeightOnlyConfig()`; set_inductor_config only decides whether torchao also changes torch.compile
# settings and `torch.set_float32_matmul_precision("high")` process-wide (which would leak into the other tests): the
# quantized weights are the same either way.
FLOAT8 = Float8WeightOnlyConfig(set_inductor_config=False) if HAVE_TORCHAO else None
SMALL = dict(width=64, height=64, steps=2, seed=7)
PROMPT = "a red fox in the snow"
NEGATIVE = "blurry, low quality"
LORA = "zimage_aitk.safetensors"
ADAPTER = "zimage_turbo_training_adapter_v2.safetensors"


# ------------------------------------------------------------------------------------------------ the layers
def tiny_blocks(dtype):
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.GELU(),
                                                            torch.nn.Linear(48, 32)) for _ in range(2)])
    model.t_embedder = torch.nn.Linear(8, 32)
    model.out = torch.nn.Linear(32, 16)
    return model.to(dtype)


@needs_torchao
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_float8_layers_equal_torchao_applied_by_hand(dtype):
    model = tiny_blocks(DTYPES[dtype])
    expect, original = copy.deepcopy(model), copy.deepcopy(model)
    for layer in (*expect.layers[0], *expect.layers[1], expect.out):   # every Linear but the excluded embedder
        if isinstance(layer, torch.nn.Linear):
            quantize_(layer, FLOAT8)
    report = quantize_component(model, "float8", DTYPES[dtype], QuantizeRule(exclude=("t_embedder*",),
                                                                             blocks=("layers",)))
    assert report.quantized == ["layers.0.0", "layers.0.2", "layers.1.0", "layers.1.2", "out"]
    assert is_quantized(model.out) and not is_quantized(model.t_embedder)
    x = torch.randn(3, 32).to(DTYPES[dtype])
    with torch.no_grad():
        for got, want in ((model.out, expect.out), (model.layers[1][0], expect.layers[1][0])):
            assert torch.equal(got.weight.dequantize(), want.weight.dequantize())
            assert torch.equal(got(x), want(x))
        assert not torch.equal(model.out(x), original.out(x)), "float8 must change the layer's output"


def test_missing_torchao_is_a_clear_error_and_qfloat8_still_runs():
    code = ("import sys\nsys.modules['torchao'] = None\n"
            "import torch\nfrom pipelines.errors import QuantizationError\n"
            "from pipelines.quantize import quantize_component, resolve_qtype\n"
            "try:\n    resolve_qtype('float8')\nexcept QuantizationError as e:\n    print('MESSAGE:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    message = out.stdout.split("MESSAGE:", 1)[1]
    assert "torchao" in message and 'pip install --no-deps "torchao==0.10.0"' in message


def test_the_pack_never_imports_torchao_unasked():
    code = "import sys, pipelines, pipelines.quantize, pipelines.engine\nprint('torchao' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------- Z-Image-Turbo + adapter, quantized
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("zimage_ao_models")
    (root / "loras").mkdir()
    pipe = tiny_zimage.build("zimage_turbo")
    pipe.save_pretrained(str(root / "diffusers" / "tiny-zimage-turbo"))
    sd, meta = tiny_zimage.zimage_lora(pipe.transformer, seed=21)
    save_file(sd, str(root / "loras" / LORA), metadata=meta)
    save_file(tiny_zimage.training_adapter(pipe.transformer), str(root / "loras" / ADAPTER))
    return root


@pytest.fixture(scope="module")
def roots(models):
    yield from cached_roots(models, 6)


def render(roots, dtype, quantization, adapter=ADAPTER, loras=()):
    handle = engine.load("zimage_turbo", base="tiny-zimage-turbo", dtype=dtype, device="cpu", roots=roots,
                         quantization=quantization)
    if adapter:
        handle = handle.with_options(roots=roots, training_adapter=adapter)
    for name, strength in loras:
        handle = engine.apply_lora(handle, name, strength, roots=roots)
    guidance = get_spec("zimage_turbo").defaults.guidance_scale
    return engine.generate(handle, PROMPT, negative_prompt=NEGATIVE, guidance_scale=guidance, **SMALL)[0]


def _quanto_te(text_encoder) -> None:
    """`quantize(text_encoder, weights=qfloat8)` + `freeze` (quantize_te with qtype_te qfloat8)."""
    from optimum import quanto

    for name, module in list(text_encoder.named_modules()):
        if not name or isinstance(module, quanto.QModuleMixin):
            continue
        qmodule = quanto.quantize_module(module, weights=quanto.qfloat8)
        if qmodule is not None:
            parent, _, leaf = name.rpartition(".")
            setattr(text_encoder.get_submodule(parent), leaf, qmodule)
    quanto.freeze(text_encoder)


def reference_float8(models, dtype, strength=None):
    """`load_training_adapter` (merge at +1, adapter weights in the model dtype), then `quantize_model` with
    "float8": each of `layers`, then the whole transformer, every `nn.Linear` not matching the exclusions handed to
    torchao's `quantize_` (a quantized one is skipped by torchao's filter, checked here by hand); `quantize_te`
    qfloat8. Sampling: the adapter at -1 (model dtype) wraps the quantized layer, the user's LoRA (fp32) wraps that."""
    d = DTYPES[dtype]
    parts = ref.load_parts(str(models / "diffusers" / "tiny-zimage-turbo"), d)
    adapter = load_file(str(models / "loras" / ADAPTER))
    assert ref.merge(parts, adapter, 1.0, d) == 37
    transformer = parts["transformer"]

    def linears(root, exclude):
        return [m for n, m in root.named_modules() if isinstance(m, torch.nn.Linear)
                and not any(fnmatch(n, p) for p in exclude) and "torchao" not in type(m.weight).__module__]
    for block in transformer.layers:
        for layer in linears(block, ref.QUANT_EXCLUDE):
            quantize_(layer, FLOAT8)
    for layer in linears(transformer, ref.QUANT_EXCLUDE):
        quantize_(layer, FLOAT8)
    _quanto_te(parts["text_encoder"])
    ref.branch(parts, adapter, -1.0, d)
    if strength is not None:
        assert ref.branch(parts, load_file(str(models / "loras" / LORA)), strength) == 16
    guidance = get_spec("zimage_turbo").defaults.guidance_scale
    return ref.preview(parts, PROMPT, NEGATIVE, SMALL["seed"], SMALL["steps"], guidance, SMALL["width"],
                       SMALL["height"])


@needs_torchao
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_turbo_adapter_on_the_quantized_preset_matches_reference(models, roots, dtype, capsys):
    pytest.importorskip("optimum.quanto")
    got = render(roots, dtype, "qfloat8", loras=[(LORA, 0.8)])
    same(got, reference_float8(models, dtype, strength=0.8))
    # the merged-then-quantized base is a cache entry of its own; the handle's qfloat8 base is left as it was
    merged = [b for b in CACHE.bases() if b.spec.id == "zimage_turbo" and b.dtype == DTYPES[dtype]
              and (b.quantization or "").startswith("float8+")]
    assert len(merged) == 1 and is_quantized(merged[0].pipe.transformer.layers[0].attention.to_q)
    if dtype == "bf16":
        plain = render(roots, dtype, "qfloat8", adapter="", loras=[(LORA, 0.8)])
        with capsys.disabled():
            print(f"\n{dtype}: Turbo + adapter + LoRA on float8 vs the qfloat8 base without the adapter: "
                  f"{levels(got, plain)} levels")
        assert levels(got, plain) > 0


def test_without_torchao_the_quantized_adapter_render_names_the_package(models, roots, monkeypatch):
    """Refused before the second base is loaded; the handle's own base still renders."""
    pytest.importorskip("optimum.quanto")
    from aitk_pack.pipelines.errors import QuantizationError

    for name in ("torchao", "torchao.quantization", "torchao.quantization.quant_api"):
        monkeypatch.setitem(sys.modules, name, None)   # import now raises ImportError
    render(roots, "fp32", "qfloat8", adapter="")      # the handle's base, loaded (or cached) now
    loads = CACHE.loads
    with pytest.raises(QuantizationError, match=r"torchao.*pip install --no-deps \"torchao==0.10.0\""):
        render(roots, "fp32", "qfloat8")
    assert CACHE.loads == loads
    assert render(roots, "fp32", "qfloat8", adapter="").std() > 1
