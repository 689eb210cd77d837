"""LTX-2 / LTX-2.3 from one checkpoint in Lightricks' original layout, as ai-toolkit loads a `.safetensors`
`name_or_path` (the LTX-2.3 preset's `Lightricks/LTX-2.3/ltx-2.3-22b-dev.safetensors`, its Gemma 3 from
`Lightricks/gemma-3-12b-it-qat-q4_0-unquantized`): the render equals the independent hand-written reference
(tests/reference_ltx2.py over the tiny Diffusers folder the file was written from, by names written independently in
tests/fixtures/ltx2_checkpoint.py), frames and audio, fp32 and bf16, with ai-toolkit's LoRA, for a checkpoint under
checkpoints/ and for base "default" from the HF cache; ai-toolkit's dequantization of scaled fp8 files; real key
names land on the full-size models the shipped configs build; wrong files are refused by name."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import reference_ltx2 as ref
from tests.fixtures import ltx2_checkpoint, tiny_ltx2
from tests.fixtures.fake_hub import fake_hub_repo
from tests.fixtures.model_roots import cached_roots
from tests.fixtures.pixels import same

from aitk_pack.pipelines import engine
from aitk_pack.pipelines.cache import CACHE
from aitk_pack.pipelines.errors import ModelSourceError
from aitk_pack.pipelines.families.ltx2 import ORIGINAL_NAMES_2_3, checkpoint, single_file
from aitk_pack.pipelines.sources import CONFIG_ROOT

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VERSIONS = {"ltx2": "2.0", "ltx2.3": "2.3"}
SMALL = dict(width=64, height=64, steps=2, seed=7, guidance_scale=4.0, num_frames=9)
PROMPT, NEGATIVE = "a red fox running in the snow", "blurry"
LAYERS = 2  # STG at block 28 is covered by tests/test_ltx2.py; here the layout is what is tested


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ltx2_single_file")
    for sub in ("diffusers", "checkpoints", "loras"):
        (root / sub).mkdir()
    for model_id, version in VERSIONS.items():
        pipe = tiny_ltx2.save(model_id, str(root / "diffusers" / f"tiny-{model_id}"), tiny_ltx2.build(model_id, LAYERS))
        ltx2_checkpoint.write_checkpoint(pipe, str(root / "checkpoints" / f"tiny-{model_id}.safetensors"), version)
        sd, meta = tiny_ltx2.ltx2_lora(pipe.transformer, seed=31)
        save_file(sd, str(root / "loras" / f"{model_id}_aitk.safetensors"), metadata=meta)
    return root


@pytest.fixture(scope="module")
def roots(models):
    yield from cached_roots(models, 4)


def reference(models, model, dtype, lora_strength=None, transform=None):
    parts = ref.load_parts(str(models / "diffusers" / f"tiny-{model}"), DTYPES[dtype], v23=model == "ltx2.3")
    if transform:
        transform(parts)
    if lora_strength is not None:
        sd = load_file(str(models / "loras" / f"{model}_aitk.safetensors"))
        assert ref.merge(parts, sd, lora_strength) == len(sd) // 2
    v = SMALL
    return ref.preview(parts, PROMPT, NEGATIVE, v["seed"], v["steps"], v["guidance_scale"], v["width"], v["height"],
                       v["num_frames"], DTYPES[dtype])


def render(roots, model, dtype, base, loras=()):
    h = engine.load(model, base=base, dtype=dtype, device="cpu", roots=roots, quantization="none")
    for name, strength in loras:
        h = engine.apply_lora(h, name, strength, roots=roots)
    return h, engine.render(h, engine.build_request(h.spec, PROMPT, negative_prompt=NEGATIVE, **SMALL))


def same_render(out, want):
    frames, wave, rate = want
    same(out.frames, frames)
    assert out.audio.sample_rate == rate
    assert np.array_equal(np.asarray(out.audio.waveform), wave), "the audio differs"


@pytest.mark.parametrize("model", list(VERSIONS))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_checkpoint_matches_reference(models, roots, model, dtype):
    h, out = render(roots, model, dtype, f"tiny-{model}.safetensors")
    assert out.frames.shape == (9, 64, 64, 3) and out.frames.std() > 5
    same_render(out, reference(models, model, dtype))
    assert type(h.base.pipe.vocoder).__name__ == ("LTX2VocoderWithBWE" if model == "ltx2.3" else "LTX2Vocoder")


@pytest.mark.parametrize("model", list(VERSIONS))
def test_lora_on_a_checkpoint_every_key(models, roots, model):
    name = f"{model}_aitk.safetensors"
    h, out = render(roots, model, "fp32", f"tiny-{model}.safetensors", loras=[(name, 0.6)])
    report = h.reports()[0]
    n = len(load_file(str(models / "loras" / name))) // 2  # 28 Linears a block (2.3: 34, with the gates)
    assert n == (34 if model == "ltx2.3" else 28) * LAYERS
    assert (report.applied_modules, report.not_applied_keys) == (n, 0), report.summary()
    same_render(out, reference(models, model, "fp32", lora_strength=0.6))


def _hub(tmp_path, pipe_folder, with_gemma=True):
    cache = str(tmp_path / "hf")
    snapshot = str(tmp_path / "repo")
    os.makedirs(snapshot)
    from diffusers import LTX2Pipeline

    pipe = LTX2Pipeline.from_pretrained(pipe_folder)
    tiny_ltx2.hub_checkpoint(pipe, snapshot)  # the preset's file + its config sidecar, no text parts
    fake_hub_repo(cache, "Lightricks/LTX-2.3", {".": snapshot})
    if with_gemma:
        for repo, files in tiny_ltx2.gemma_repo(pipe_folder).items():
            fake_hub_repo(cache, repo, files)
    return cache


def test_base_default_is_the_preset_file_with_its_gemma_repo(models, roots, tmp_path, monkeypatch):
    folder = str(models / "diffusers" / "tiny-ltx2.3")
    monkeypatch.setenv("HF_HUB_CACHE", _hub(tmp_path, folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    CACHE.release()
    try:
        _, out = render(roots, "ltx2.3", "fp32", "default")
        same_render(out, reference(models, "ltx2.3", "fp32"))
    finally:
        CACHE.release()


def test_base_default_without_the_gemma_repo_names_it(models, roots, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", _hub(tmp_path, str(models / "diffusers" / "tiny-ltx2.3"), with_gemma=False))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    CACHE.release()
    with pytest.raises(ModelSourceError, match="Lightricks/gemma-3-12b-it-qat-q4_0-unquantized"):
        engine.load("ltx2.3", base="default", dtype="fp32", device="cpu", roots=roots, quantization="none")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelSourceError, match="ltx-2.3-22b-dev.safetensors"):
        engine.load("ltx2.3", base="default", dtype="fp32", device="cpu", roots=roots, quantization="none")


def _fp8(weight, per_row: bool):
    """A weight as a scaled-fp8 file stores it: e4m3 values and their scale (max |w| / 448 per tensor or row)."""
    amax = weight.abs().amax(dim=1, keepdim=True) if per_row else weight.abs().max()
    scale = (amax / 448.0).clamp(min=1e-12).float()
    return (weight / scale).to(torch.float8_e4m3fn), (scale.flatten() if per_row else scale.reshape(()))


def test_scaled_fp8_checkpoint_is_dequantized_as_ai_toolkit(models, roots):
    """ai-toolkit's `dequantize_state_dict`: `(fp8.float() * scale).bfloat16()`, for ComfyUI's `weight_scale` +
    `comfy_quant` (per tensor) and the legacy `scale_weight` (per row); the reference gets those weights by hand."""
    path = str(models / "checkpoints" / "tiny-ltx2.3.safetensors")
    sd = load_file(path)
    quantized = {"model.diffusion_model.transformer_blocks.0.attn1.to_q": False,
                 "model.diffusion_model.transformer_blocks.1.ff.net.0.proj": True}
    dequantized = {}
    for stem, per_row in quantized.items():
        q, scale = _fp8(sd[stem + ".weight"], per_row)
        sd[stem + ".weight"] = q
        if per_row:
            sd[stem + ".scale_weight"] = scale
        else:
            sd[stem + ".weight_scale"] = scale
            sd[stem + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()),
                                                     dtype=torch.uint8)
            sd[stem + ".input_scale"] = torch.tensor(1.0)
        w = q.to(torch.float32) * (scale.reshape(-1, 1) if per_row else scale)
        dequantized[stem[len("model.diffusion_model."):]] = w.to(torch.bfloat16)
    name = "tiny-ltx2.3-fp8.safetensors"
    save_file(sd, str(models / "checkpoints" / name))
    ltx2_checkpoint.write_sidecar(tiny_ltx2.build("ltx2.3", LAYERS), str(models / "checkpoints" / name[:-12]))

    def put(parts):
        for path_, weight in dequantized.items():
            parts["transformer"].get_submodule(path_).weight.data.copy_(weight.float())

    _, out = render(roots, "ltx2.3", "fp32", name)
    same_render(out, reference(models, "ltx2.3", "fp32", transform=put))
    _, plain = render(roots, "ltx2.3", "fp32", "tiny-ltx2.3.safetensors")
    assert not np.array_equal(out.frames, plain.frames) or not np.array_equal(out.audio.waveform,
                                                                              plain.audio.waveform)


def test_convrot_quantized_layer_is_refused(tmp_path):
    marker = torch.tensor(list(json.dumps({"format": "int8_tensorwise", "convrot": True}).encode()),
                          dtype=torch.uint8)
    state = {"a.weight": torch.zeros(2, 2, dtype=torch.int8), "a.weight_scale": torch.tensor(1.0),
             "a.comfy_quant": marker}
    with pytest.raises(ModelSourceError, match="a.*ConvRot.*full-precision"):
        checkpoint.dequantize(state, "x.safetensors")


def test_wrong_version_and_damaged_files_are_refused(models, roots):
    ckpts = models / "checkpoints"
    with pytest.raises(ModelSourceError, match="LTX-2.3 checkpoint.*ltx2.3"):
        engine.load("ltx2", base="tiny-ltx2.3.safetensors", dtype="fp32", device="cpu", roots=roots)
    with pytest.raises(ModelSourceError, match="pick model ltx2"):
        engine.load("ltx2.3", base="tiny-ltx2.safetensors", dtype="fp32", device="cpu", roots=roots)
    sd = load_file(str(ckpts / "tiny-ltx2.3.safetensors"))
    del sd["vae.decoder.up_blocks.8.res_blocks.0.conv1.conv.weight"]
    save_file(sd, str(ckpts / "tiny-ltx2.3-cut.safetensors"))
    ltx2_checkpoint.write_sidecar(tiny_ltx2.build("ltx2.3", LAYERS), str(ckpts / "tiny-ltx2.3-cut"))
    with pytest.raises(ModelSourceError, match=r"its vae .*missing decoder\.up_blocks\.3\.resnets\.0\.conv1\.conv"):
        engine.load("ltx2.3", base="tiny-ltx2.3-cut.safetensors", dtype="fp32", device="cpu", roots=roots)
    (ckpts / "tiny-ltx2.3-broken.safetensors").write_bytes(
        (ckpts / "tiny-ltx2.3.safetensors").read_bytes()[:4096])
    with pytest.raises(ModelSourceError, match="tiny-ltx2.3-broken.safetensors"):
        engine.load("ltx2.3", base="tiny-ltx2.3-broken.safetensors", dtype="fp32", device="cpu", roots=roots)


# Names in the real LTX-2.3 file (Lightricks' layout: ai-toolkit's and Diffusers' conversion tables, Diffusers'
# `CHECKPOINT_KEY_NAMES["ltx2"]`, public loaders of `ltx-2.3-22b-dev.safetensors`) → the Diffusers tensor each must
# land on in the full-size model that the shipped config builds.
REAL_NAMES = {
    "transformer": {
        "model.diffusion_model.av_ca_a2v_gate_adaln_single.emb.timestep_embedder.linear_1.weight":
            "av_cross_attn_video_a2v_gate.emb.timestep_embedder.linear_1.weight",
        "model.diffusion_model.adaln_single.linear.weight": "time_embed.linear.weight",
        "model.diffusion_model.prompt_adaln_single.linear.weight": "prompt_adaln.linear.weight",
        "model.diffusion_model.patchify_proj.weight": "proj_in.weight",
        "model.diffusion_model.transformer_blocks.47.attn1.q_norm.weight": "transformer_blocks.47.attn1.norm_q.weight",
        "model.diffusion_model.transformer_blocks.0.scale_shift_table_a2v_ca_audio":
            "transformer_blocks.0.audio_a2v_cross_attn_scale_shift_table"},
    "connectors": {
        "model.diffusion_model.video_embeddings_connector.learnable_registers": "video_connector.learnable_registers",
        "model.diffusion_model.audio_embeddings_connector.transformer_1d_blocks.7.attn1.k_norm.weight":
            "audio_connector.transformer_blocks.7.attn1.norm_k.weight",
        "text_embedding_projection.video_aggregate_embed.weight": "video_text_proj_in.weight"},
    "vae": {"vae.decoder.up_blocks.8.res_blocks.0.conv1.conv.weight": "decoder.up_blocks.3.resnets.0.conv1.conv.weight",
            "vae.decoder.up_blocks.7.conv.conv.weight": "decoder.up_blocks.3.upsamplers.0.conv.conv.weight",
            "vae.decoder.up_blocks.0.res_blocks.1.conv2.conv.bias": "decoder.mid_block.resnets.1.conv2.conv.bias",
            "vae.encoder.down_blocks.8.res_blocks.0.conv1.conv.weight": "encoder.mid_block.resnets.0.conv1.conv.weight",
            "vae.encoder.down_blocks.5.conv.conv.weight": "encoder.down_blocks.2.downsamplers.0.conv.conv.weight",
            "vae.per_channel_statistics.mean-of-means": "latents_mean"},
    "audio_vae": {"audio_vae.per_channel_statistics.std-of-means": "latents_std",
                  "audio_vae.decoder.conv_in.conv.weight": "decoder.conv_in.conv.weight"},
    "vocoder": {"vocoder.vocoder.conv_pre.weight": "vocoder.conv_in.weight",
                "vocoder.vocoder.ups.5.weight": "vocoder.upsamplers.5.weight",
                "vocoder.vocoder.resblocks.0.acts1.0.act.alpha": "vocoder.resnets.0.acts1.0.act.alpha",
                "vocoder.bwe_generator.resblocks.14.acts2.2.downsample.lowpass.filter":
                    "bwe_generator.resnets.14.acts2.2.downsample.filter",
                "vocoder.bwe_generator.act_post.act.beta": "bwe_generator.act_out.act.beta",
                "vocoder.mel_stft.mel_basis": "mel_stft.mel_basis"},
}


def test_real_names_land_on_the_full_size_models():
    from accelerate import init_empty_weights

    config_dir = os.path.join(CONFIG_ROOT, "ltx2.3")
    classes = single_file._classes("LTX2VocoderWithBWE")
    state = {name: torch.zeros(1) for names in REAL_NAMES.values() for name in names}
    renamed = single_file._renamed_parts(state, config_dir, "2.3", ORIGINAL_NAMES_2_3, classes)
    for part, names in REAL_NAMES.items():
        with init_empty_weights():
            module = classes[part].from_config(classes[part].load_config(os.path.join(config_dir, part)))
        keys = set(module.state_dict())
        assert sorted(renamed[part]) == sorted(names.values()), part
        assert set(names.values()) <= keys, (part, set(names.values()) - keys)
    assert len(module.vocoder.upsamplers) == 6 and len(module.bwe_generator.upsamplers) == 5

