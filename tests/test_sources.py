"""Base-model sources: the Hugging Face cache (offline), Diffusers folders, single-file checkpoints; the cache."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from aitk_pack.pipelines import engine, get_spec
from aitk_pack.pipelines.errors import ModelSourceError
from aitk_pack.pipelines.sources import CONFIG_ROOT, ModelRoots, resolve_base

SMALL = dict(width=64, height=64, steps=3, seed=11)


def test_model_folders_are_listed(models_dir):
    roots = ModelRoots.from_env()
    assert roots.list_diffusers() == ["tiny-sd15", "tiny-sdxl"]
    assert "tiny-sdxl.safetensors" in roots.list_files("checkpoints", (".safetensors",))
    assert "sdxl_kohya.safetensors" in roots.list_files("loras", (".safetensors",))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_single_file_checkpoint_renders_like_the_diffusers_folder(models_dir, model, dtype):
    folder = engine.load(model, base=f"tiny-{model}", dtype=dtype, device="cpu")
    single = engine.load(model, base=f"tiny-{model}.safetensors", dtype=dtype, device="cpu")
    assert single.base is not folder.base and single.base.source.kind == "single_file"
    for module in single.base.pipe.components.values():
        if isinstance(module, torch.nn.Module):
            assert all(p.device.type == "cpu" and p.dtype == engine.DTYPES[dtype] for p in module.parameters())
    np.testing.assert_array_equal(engine.generate(single, "a boat", **SMALL), engine.generate(folder, "a boat", **SMALL))


def test_default_base_comes_from_the_local_hf_cache_offline(models_dir, tmp_path, monkeypatch):
    """`default` = the registry's repo id, found in the HF cache layout with no network (HF_HUB_OFFLINE=1)."""
    repo = get_spec("sd15").base_repo
    cache = tmp_path / "hub"
    snap = cache / ("models--" + repo.replace("/", "--")) / "snapshots" / "0123456789abcdef"
    shutil.copytree(os.path.join(models_dir, "diffusers", "tiny-sd15"), snap)
    (cache / ("models--" + repo.replace("/", "--")) / "refs").mkdir()
    (cache / ("models--" + repo.replace("/", "--")) / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = engine.load("sd15", base="default", dtype="fp32", device="cpu")
    assert hub.base.source.kind == "hub" and hub.base.source.location == repo
    folder = engine.load("sd15", base="tiny-sd15", dtype="fp32", device="cpu")
    np.testing.assert_array_equal(engine.generate(hub, "a tree", **SMALL), engine.generate(folder, "a tree", **SMALL))


def test_single_file_without_sidecar_uses_the_shipped_real_config(models_dir, tmp_path):
    roots = ModelRoots(checkpoints=(str(tmp_path),))
    shutil.copy(os.path.join(models_dir, "checkpoints", "tiny-sdxl.safetensors"), tmp_path / "mine.safetensors")
    source = resolve_base(get_spec("sdxl"), "mine.safetensors", roots)
    assert source.config_dir == os.path.join(CONFIG_ROOT, "sdxl")
    with pytest.raises(ModelSourceError, match="mine.safetensors"):  # tiny weights do not fit the real config
        engine.load("sdxl", base="mine.safetensors", dtype="fp32", device="cpu", roots=roots)


@pytest.mark.parametrize("model, counts", [
    ("sd15", {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}),
    ("sdxl", {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}),
])
def test_shipped_single_file_configs_describe_the_real_models(model, counts):
    """The config folders shipped for single files build exactly the real architectures (published parameter
    counts of SD 1.5 / SDXL base), checked on the meta device without weights."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = os.path.join(CONFIG_ROOT, model)
    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}
    with init_empty_weights():
        for name, expected in counts.items():
            if name in classes:
                with open(os.path.join(folder, name, "config.json")) as f:
                    module = classes[name].from_config(json.load(f))
            else:
                cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
                module = cls(CLIPTextConfig.from_pretrained(os.path.join(folder, name)))
            assert sum(p.numel() for p in module.parameters()) == expected, name


def test_shipped_clip_tokenizer_is_the_real_one():
    from aitk_pack.pipelines.families import get_family

    toks = get_family(get_spec("sdxl"))._shipped_tokenizers(os.path.join(CONFIG_ROOT, "sdxl"))
    ids = toks["tokenizer"]("a photo of a cat").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP ViT-L/14's ids for this text
    assert toks["tokenizer_2"].pad_token == "!" and toks["tokenizer"].pad_token == "<|endoftext|>"


def test_bases_are_cached_and_the_cache_is_bounded(models_dir):
    from aitk_pack.pipelines.cache import CACHE

    a = engine.load("sd15", base="tiny-sd15", dtype="fp32", device="cpu")
    assert engine.load("sd15", base="tiny-sd15", dtype="fp32", device="cpu").base is a.base
    loads = CACHE.loads
    for dtype in ("bf16", "fp16", "fp32"):
        engine.load("sd15", base="tiny-sd15", dtype=dtype, device="cpu")
    assert len(CACHE.bases()) <= CACHE.max_bases
    assert CACHE.loads > loads


def test_symlinked_files_inside_a_model_folder_resolve(models_dir, tmp_path):
    """Users often symlink model files into ComfyUI's folders; those resolve, `..` and absolute names never do."""
    real = tmp_path / "elsewhere.safetensors"
    real.write_bytes(b"x")
    link = os.path.join(models_dir, "loras", "linked.safetensors")
    os.symlink(real, link)
    try:
        roots = ModelRoots.from_env()
        assert roots.resolve("loras", "linked.safetensors") == link
        assert roots.resolve("loras", "../loras/linked.safetensors") is None
        assert roots.resolve("loras", str(real)) is None
    finally:
        os.remove(link)


def test_released_base_frees_weights_and_handles_reload(models_dir):
    """What ComfyUI's "Unload models" triggers: the cache releases its bases; a handle still held by a graph keeps
    working (the base and its LoRAs are loaded again) and renders the same pixels."""
    from aitk_pack.pipelines.cache import CACHE

    h = engine.load("sdxl", base="tiny-sdxl", dtype="fp32", device="cpu")
    h = h.with_lora(os.path.join(models_dir, "loras", "sdxl_kohya.safetensors"), 0.8)
    before = engine.generate(h, "a boat", **SMALL)
    old = h.base
    assert CACHE.release() >= 1
    assert old.released and old.pipe is None and old.patcher is None
    np.testing.assert_array_equal(engine.generate(h, "a boat", **SMALL), before)
    chained = h.with_lora(os.path.join(models_dir, "loras", "sdxl_kohya_b.safetensors"), 0.5)
    assert not chained.base.released and len(chained.loras) == 2


def test_default_download_takes_every_shard_and_nothing_else():
    """The Hub filter (huggingface_hub's own matcher) on FLUX.1-dev's real file list."""
    from huggingface_hub.utils import filter_repo_objects

    from aitk_pack.pipelines.sources import HUB_ALLOW, HUB_IGNORE

    repo = ["model_index.json", "flux1-dev.safetensors", "ae.safetensors", "README.md", "dev_grid.jpg",
            "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
            "text_encoder_2/config.json", "text_encoder_2/model-00001-of-00002.safetensors",
            "text_encoder_2/model-00002-of-00002.safetensors", "text_encoder_2/model.safetensors.index.json",
            "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
            "tokenizer/vocab.json", "tokenizer_2/spiece.model", "tokenizer_2/tokenizer.json",
            "tokenizer_2/tokenizer_config.json", "tokenizer_2/special_tokens_map.json",
            "transformer/config.json", "transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
            "transformer/diffusion_pytorch_model-00002-of-00003.safetensors",
            "transformer/diffusion_pytorch_model-00003-of-00003.safetensors",
            "transformer/diffusion_pytorch_model.safetensors.index.json", "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.bin", "safety_checker/model.safetensors"]
    got = set(filter_repo_objects(repo, allow_patterns=HUB_ALLOW, ignore_patterns=HUB_IGNORE))
    assert {f for f in repo if "-of-0000" in f} <= got
    assert "transformer/diffusion_pytorch_model.safetensors.index.json" in got
    assert not got & {"flux1-dev.safetensors", "ae.safetensors", "README.md", "dev_grid.jpg",
                      "vae/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.bin",
                      "safety_checker/model.safetensors"}
    assert {"text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "tokenizer_2/spiece.model", "tokenizer/vocab.json"} <= got
