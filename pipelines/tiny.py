"""Tiny random SD 1.5 / SDXL pipelines with the real block structure, built locally from configs (no download).

Used by the offline demo (`python -m pipelines demo`) and the tests. Deterministic for a seed. The tokenizer is a
byte-level CLIP BPE (the 512 byte tokens with their real CLIP ids, the first real merges, start/end tokens), small
enough that the text encoders stay tiny. SDXL's two text encoders differ in width and `text_encoder_2` keeps 10
layers: Diffusers' single-file loader tells them apart by those, as with the real model.
"""
from __future__ import annotations

import os

import torch

TINY_MERGES = [("i", "n"), ("t", "h"), ("a", "n"), ("r", "e"), ("a", "r"), ("e", "r"), ("th", "e</w>"),
               ("in", "g</w>"), ("o", "u"), ("o", "n")]


def _byte_alphabet() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_vocab() -> dict:
    base = _byte_alphabet()
    vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in TINY_MERGES]
    return {v: i for i, v in enumerate(vocab + ["<|startoftext|>", "<|endoftext|>"])}


def tiny_tokenizer(pad_token: str = "<|endoftext|>"):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=tiny_vocab(), merges=list(TINY_MERGES), pad_token=pad_token, model_max_length=77)


def _text_config(hidden: int, layers: int, act: str):
    from transformers import CLIPTextConfig

    vocab = tiny_vocab()
    return CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=77,
                          hidden_act=act, projection_dim=hidden, layer_norm_eps=1e-5,
                          bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=1)


def _vae(scaling_factor: float, force_upcast: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(8, 16, 32, 32), layers_per_block=2, norm_num_groups=8, act_fn="silu",
                         sample_size=64, scaling_factor=scaling_factor, force_upcast=force_upcast)


def _seeded(seed: int, build):
    torch.manual_seed(seed)
    return build().eval()


def build_sd15(seed: int = 0):
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = _seeded(seed + 1, lambda: UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, block_out_channels=(32, 32, 64, 64),
        layers_per_block=2, norm_num_groups=32, cross_attention_dim=32, attention_head_dim=8))
    vae = _seeded(seed + 2, lambda: _vae(0.18215, False))
    te = _seeded(seed + 3, lambda: CLIPTextModel(_text_config(32, 2, "quick_gelu")))
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tiny_tokenizer(), unet=unet,
                                   scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                           beta_end=0.012, clip_sample=False, steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build_sdxl(seed: int = 0):
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = _seeded(seed + 11, lambda: UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(32, 64, 64),
        layers_per_block=2, norm_num_groups=32, attention_head_dim=(2, 4, 8), cross_attention_dim=32 + 64,
        transformer_layers_per_block=(1, 2, 2), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=64 + 6 * 8))
    vae = _seeded(seed + 12, lambda: _vae(0.13025, True))
    te = _seeded(seed + 13, lambda: CLIPTextModel(_text_config(32, 2, "quick_gelu")))
    te2 = _seeded(seed + 14, lambda: CLIPTextModelWithProjection(_text_config(64, 10, "gelu")))
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tiny_tokenizer(),
                                     tokenizer_2=tiny_tokenizer(pad_token="!"), unet=unet,
                                     scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                             beta_end=0.012, clip_sample=False, steps_offset=1),
                                     add_watermarker=False)


BUILDERS = {"sd15": build_sd15, "sdxl": build_sdxl}


def save_tiny(model_id: str, folder: str, seed: int = 0) -> str:
    """Build the tiny `model_id` pipeline and save it as a Diffusers folder (skipped when already there)."""
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        BUILDERS[model_id](seed).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# LoRA files in ai-toolkit's (and kohya's / peft's) real key layouts, for the demo and the tests
# ---------------------------------------------------------------------------------------------------------------
KOHYA_TE_PREFIXES = {"sd15": {"text_encoder": "lora_te"},
                     "sdxl": {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}}
AITK_UNET_BLOCKS = ("Transformer2DModel",)
AITK_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")


def lora_targets(pipe, unet_scope: str = "aitk", conv: bool = False, text: bool = False):
    """[(component, module path, module)] ai-toolkit would train: in the UNet every Linear and 1x1 Conv2d inside a
    Transformer2DModel, with `conv` also the layers of resnets and up/down samplers (3x3 convs at conv rank); in
    text encoders the Linears of CLIPAttention/CLIPMLP. `unet_scope="all"` adds every Linear/Conv2d of the UNet
    (conv_in/out, time and add embeddings), as kohya-trained files have."""
    out = []
    blocks = AITK_UNET_BLOCKS + (AITK_CONV_BLOCKS if conv or unet_scope == "all" else ())
    seen = set()
    for name, block in pipe.unet.named_modules():
        if type(block).__name__ in blocks:
            for sub, m in block.named_modules():
                path = f"{name}.{sub}" if sub else name
                if path in seen or not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                    continue
                if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1) and not (conv or unet_scope == "all"):
                    continue
                seen.add(path)
                out.append(("unet", path, m))
    if unet_scope == "all":
        for path, m in pipe.unet.named_modules():
            if path not in seen and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                out.append(("unet", path, m))
    if text:
        for comp in ("text_encoder", "text_encoder_2"):
            te = getattr(pipe, comp, None)
            if te is None:
                continue
            for name, block in te.named_modules():
                if type(block).__name__ in ("CLIPAttention", "CLIPMLP"):
                    for sub, m in block.named_modules():
                        if isinstance(m, torch.nn.Linear):
                            out.append((comp, f"{name}.{sub}", m))
    return out


def _factor_pair(module, rank: int, gen):
    if isinstance(module, torch.nn.Linear):
        down = torch.randn(rank, module.in_features, generator=gen) / module.in_features ** 0.5
        up = torch.randn(module.out_features, rank, generator=gen) / rank ** 0.5
    else:
        fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=gen) / fan_in ** 0.5
        up = torch.randn(module.out_channels, rank, 1, 1, generator=gen) / rank ** 0.5
    return down, up


def _with_text_model(path: str) -> str:
    return path if path.startswith("text_model.") else "text_model." + path


def make_lora(pipe, model_id: str, naming: str = "kohya", rank: int = 4, alpha: float | None = 2.0,
              unet_scope: str = "aitk", conv: bool = False, text: bool = False, seed: int = 0,
              dtype: torch.dtype = torch.float32, conv_rank: int | None = None) -> dict:
    """A random LoRA state dict for `pipe` in a real key layout:
    - "kohya": `lora_unet_<diffusers path>` / `lora_te*_text_model_…` with `.lora_down/.lora_up.weight` + `.alpha`
      (what ai-toolkit writes for SD/SDXL today);
    - "sgm": the same with original SGM UNet names (`lora_unet_input_blocks_4_1_…`; SDXL files 2023-09 … 2024-07);
    - "peft": `unet.<path>.lora_A/B.weight`, `text_encoder.text_model.<path>…` and no alpha (scale 1).
    Text-encoder names carry `text_model.` as with ai-toolkit's pinned transformers."""
    from .lora.sgm_names import sgm_name

    gen = torch.Generator().manual_seed(seed + 101)
    sd = {}
    for comp, path, module in lora_targets(pipe, unet_scope, conv, text):
        is_3x3 = isinstance(module, torch.nn.Conv2d) and module.kernel_size != (1, 1)
        r = (conv_rank or rank) if is_3x3 else rank
        down, up = _factor_pair(module, r, gen)
        down, up = down.to(dtype), up.to(dtype)
        name = _with_text_model(path) if comp != "unet" else path
        if naming == "peft":
            sd[f"{comp}.{name}.lora_A.weight"] = down
            sd[f"{comp}.{name}.lora_B.weight"] = up
            continue
        if comp == "unet":
            key = "lora_unet_" + (sgm_name(path, pipe.unet.config) if naming == "sgm" else path).replace(".", "_")
        else:
            key = KOHYA_TE_PREFIXES[model_id][comp] + "_" + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"] = down
        sd[f"{key}.lora_up.weight"] = up
        if alpha is not None:
            sd[f"{key}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return sd


def aitk_metadata(model_id: str, trigger_word: str | None = None, name: str = "tiny_lora", step: int = 0) -> dict:
    """The safetensors metadata ai-toolkit writes (`software`, `ss_base_model_version`, `ss_tag_frequency` …)."""
    import json

    meta = {"format": "pt", "software": json.dumps({"name": "ai-toolkit", "repo": "https://github.com/ostris/ai-toolkit",
                                                    "version": "0.12.26"}),
            "training_info": json.dumps({"step": step, "epoch": 0}), "ss_output_name": name, "name": name,
            "version": "1.0", "ss_base_model_version": {"sd15": "sd_1.5", "sdxl": "sdxl_1.0"}[model_id]}
    if trigger_word:
        meta["ss_tag_frequency"] = json.dumps({f"1_{trigger_word}": {trigger_word: 1}})
    return meta
