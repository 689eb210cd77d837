"""LoKr files (`network.type: lokr`) on the flow-matching families added after FLUX.1, in each model's saved layout
(the prefix and module names of ai-toolkit's LoRA files for that model, `tests/fixtures/tiny_<family>.py`): every
key applies, and the render equals the base whose weights were merged by hand with ai-toolkit's LoKr formula
(`W.float() + m * kron(w1, w2) * scale`, `tests/test_lokr.py:ref_delta`) and saved as a new Diffusers folder, loaded
with no LoRA at all. FLUX.1 and SD have their own LoKr tests (test_flux.py, test_lokr.py)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.fixtures.lokr_files import lokr_tensors
from tests.fixtures.tiny_models import TINY
from tests.test_lokr import module_tensors, ref_delta

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.cache import CACHE
from aitk_pack.pipelines.sources import ModelRoots

MODELS = ["zimage_turbo", "lumina2", "qwen_image", "wan21_1b"]
STRENGTH = 0.7
SMALL = dict(width=64, height=64, steps=2, seed=5)
LORA_SUFFIXES = (".lora_A.weight", ".lora_down.weight")


def _module_names(state_dict) -> list[str]:
    return sorted({k[: -len(s)] for k in state_dict for s in LORA_SUFFIXES if k.endswith(s)})


def _lokr_file(pipe, lora_state, targets, seed=3) -> dict:
    """A LoKr module (factorised w2, with alpha) on every layer the model's LoRA file names, under the same names."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in _module_names(lora_state):
        component, path = targets[name]
        layer = getattr(pipe, component).get_submodule(path)
        for part, tensor in lokr_tensors(layer, 2, 2.0, 4, gen=gen, gain=0.6).items():
            out[f"{name}.{part}"] = tensor
    return out


def _merged_folder(src: str, dst: str, lokr_state, targets) -> None:
    """A copy of the Diffusers folder `src` whose weights hold the LoKr merged by hand (fp32, one rounding)."""
    import shutil

    shutil.copytree(src, dst)
    by_component: dict = {}
    for name, t in module_tensors(lokr_state).items():
        component, path = targets[name]
        by_component.setdefault(component, []).append((path, t))
    for component, items in by_component.items():
        [weights] = [os.path.join(dst, component, f) for f in os.listdir(os.path.join(dst, component))
                     if f.endswith(".safetensors")]
        state = load_file(weights)
        for path, t in items:
            w = state[f"{path}.weight"]
            state[f"{path}.weight"] = (w.float() + STRENGTH * ref_delta(t, w.shape)).to(w.dtype)
        save_file(state, weights)


@pytest.mark.parametrize("model", MODELS)
def test_lokr_in_the_models_layout_applies_every_key_and_merges_as_ai_toolkit(model, tmp_path):
    tiny = TINY[model]
    pipe = tiny.build()
    folder = str(tmp_path / "diffusers" / f"tiny-{model}")
    tiny.save(folder, pipe)
    lora_state, meta = tiny.lora(pipe, seed=1, trigger="ohwx")
    (tmp_path / "loras").mkdir()
    save_file(lora_state, str(tmp_path / "loras" / "plain.safetensors"), metadata=meta)
    roots = ModelRoots(diffusers=(str(tmp_path / "diffusers"),), loras=(str(tmp_path / "loras"),))
    try:
        base = engine.load(model, base=f"tiny-{model}", dtype="fp32", device="cpu", roots=roots, quantization="none")
        # where the model's own LoRA names land (one whole layer each): the LoKr uses the same names
        bound = engine.apply_lora(base, "plain.safetensors", 1.0, roots=roots).loras[-1].bound
        assert all(t.rows is None for t in bound.targets)
        targets = {t.module.name: (t.component, t.path) for t in bound.targets}
        lokr_state = _lokr_file(pipe, lora_state, targets)
        save_file(lokr_state, str(tmp_path / "loras" / "lokr.safetensors"),
                  metadata=dict(meta, **{"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "lokr"}'}))
        with_lokr = engine.apply_lora(base, "lokr.safetensors", STRENGTH, roots=roots)
        report = with_lokr.loras[-1].bound.report
        assert report.total_keys == len(lokr_state) and report.applied_keys == len(lokr_state), report.summary()
        assert not report.warnings()
        got = engine.generate(with_lokr, "photo of ohwx", **SMALL)

        # the weights the render used (the patcher leaves the stack in place) are the hand-merged ones, bit for bit
        merged_dir = str(tmp_path / "diffusers" / "merged")
        _merged_folder(folder, merged_dir, lokr_state, targets)
        for name, (component, path) in targets.items():
            [weights] = [os.path.join(merged_dir, component, f) for f in os.listdir(os.path.join(merged_dir, component))
                         if f.endswith(".safetensors")]
            live = getattr(with_lokr.base.pipe, component).get_submodule(path).weight
            assert torch.equal(live, load_file(weights)[f"{path}.weight"]), name
        plain = engine.generate(base, "photo of ohwx", **SMALL)
        assert np.abs(got.astype(int) - plain.astype(int)).max() > 3, "the LoKr must change the picture"
        merged = engine.load(model, base="merged", dtype="fp32", device="cpu", roots=roots, quantization="none")
        want = engine.generate(merged, "photo of ohwx", **SMALL)
        diff = np.abs(got.astype(int) - want.astype(int))
        # Same weights, other addresses: CPU kernels may round one ulp differently for a tensor at another address
        # alignment (families/common.py ALIGNMENT); measured on the tiny Qwen-Image: 1 level at 2 of 12288 values.
        assert diff.max() <= 1 and np.count_nonzero(diff) <= 8, f"{np.count_nonzero(diff)} values, max {diff.max()}"
        print(f"\n{model}: LoKr render vs the hand-merged base: max {diff.max()} levels "
              f"({np.count_nonzero(diff)} values)")
    finally:
        CACHE.release()
