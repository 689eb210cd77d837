"""Weights into the BFL layout: Diffusers `Flux2Transformer2DModel` / `AutoencoderKLFlux2` state dicts → BFL names,
and the sizes of a BFL file read from its tensors.

The transformer mapping is the inverse of Diffusers' `loaders/single_file_utils.py:
convert_flux2_transformer_checkpoint_to_diffusers` (q/k/v concatenated back into `qkv`, the final modulation's
(scale, shift) halves swapped back to (shift, scale), RMSNorm `weight` → `scale`); concatenation is exact, so a
Diffusers folder gives the BFL file's bits. The VAE mapping is the LDM ↔ Diffusers naming of `convert_ldm_vae_checkpoint`
(attention Linear weights → 1×1 convs), with BFL's quant convs inside the encoder/decoder.
"""
from __future__ import annotations

import re

import torch

from .autoencoder import AutoEncoderParams
from .model import Flux2Params

TOP = {"x_embedder": "img_in", "context_embedder": "txt_in",
       "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
       "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
       "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
       "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
       "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
       "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
       "single_stream_modulation.linear": "single_stream_modulation.lin", "proj_out": "final_layer.linear"}
FINAL_MOD = ("norm_out.linear", "final_layer.adaLN_modulation.1")
# Diffusers double-block paths → BFL names; a tuple is fused by rows in this order
DOUBLE = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn.proj": ("attn.to_out.0",),
          "img_mlp.0": ("ff.linear_in",), "img_mlp.2": ("ff.linear_out",),
          "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
          "txt_attn.proj": ("attn.to_add_out",), "txt_mlp.0": ("ff_context.linear_in",),
          "txt_mlp.2": ("ff_context.linear_out",)}
SINGLE = {"linear1": ("attn.to_qkv_mlp_proj",), "linear2": ("attn.to_out",)}
DOUBLE_NORMS = {"img_attn.norm.query_norm": "attn.norm_q", "img_attn.norm.key_norm": "attn.norm_k",
                "txt_attn.norm.query_norm": "attn.norm_added_q", "txt_attn.norm.key_norm": "attn.norm_added_k"}
SINGLE_NORMS = {"norm.query_norm": "attn.norm_q", "norm.key_norm": "attn.norm_k"}


def _count(sd, prefix):
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def transformer_to_bfl(sd: dict) -> dict:
    """Diffusers FLUX.2 transformer state dict → BFL names. Raises KeyError naming what is left over."""
    sd = dict(sd)
    out = {}
    for ours, bfl in TOP.items():
        if ours + ".weight" in sd:
            out[bfl + ".weight"] = sd.pop(ours + ".weight")
    scale, shift = sd.pop(FINAL_MOD[0] + ".weight").chunk(2, dim=0)
    out[FINAL_MOD[1] + ".weight"] = torch.cat([shift, scale], dim=0)
    for kind, bfl, table, norms in (("transformer_blocks", "double_blocks", DOUBLE, DOUBLE_NORMS),
                                    ("single_transformer_blocks", "single_blocks", SINGLE, SINGLE_NORMS)):
        for i in range(_count(sd, kind + ".")):
            for name, parts in table.items():
                tensors = [sd.pop(f"{kind}.{i}.{p}.weight") for p in parts]
                out[f"{bfl}.{i}.{name}.weight"] = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
            for name, path in norms.items():
                out[f"{bfl}.{i}.{name}.scale"] = sd.pop(f"{kind}.{i}.{path}.weight")
    if sd:
        raise KeyError(f"not FLUX.2 transformer weights: {sorted(sd)[:6]}")
    return out


def params_from_config(config) -> Flux2Params:
    """A Diffusers `Flux2Transformer2DModel` config → the BFL sizes."""
    c = dict(config)
    heads, head_dim = int(c.get("num_attention_heads", 48)), int(c.get("attention_head_dim", 128))
    return Flux2Params(in_channels=int(c.get("in_channels", 128)), context_in_dim=int(c.get("joint_attention_dim", 15360)),
                       hidden_size=heads * head_dim, num_heads=heads, depth=int(c.get("num_layers", 8)),
                       depth_single_blocks=int(c.get("num_single_layers", 48)),
                       axes_dim=tuple(c.get("axes_dims_rope", (32, 32, 32, 32))), theta=int(c.get("rope_theta", 2000)),
                       mlp_ratio=float(c.get("mlp_ratio", 3.0)), use_guidance_embed=bool(c.get("guidance_embeds", True)))


def params_from_bfl(sd: dict) -> Flux2Params:
    """The sizes of a BFL FLUX.2 transformer file, read from its tensors (RoPE axes: 4 equal parts of a head, as
    every FLUX.2 model has; theta 2000)."""
    hidden, in_channels = sd["img_in.weight"].shape
    head_dim = int(sd["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0])
    mlp_rows = int(sd["double_blocks.0.img_mlp.0.weight"].shape[0])
    return Flux2Params(in_channels=int(in_channels), context_in_dim=int(sd["txt_in.weight"].shape[1]),
                       hidden_size=int(hidden), num_heads=int(hidden) // head_dim,
                       depth=_count(sd, "double_blocks."), depth_single_blocks=_count(sd, "single_blocks."),
                       axes_dim=(head_dim // 4,) * 4, theta=2000, mlp_ratio=mlp_rows / 2 / int(hidden),
                       use_guidance_embed="guidance_in.in_layer.weight" in sd)


# ----------------------------------------------------------------------------- VAE
_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_name(key: str, levels: int) -> str | None:
    side, rest = key.split(".", 1)
    if side in ("quant_conv", "post_quant_conv"):
        return ("encoder." if side == "quant_conv" else "decoder.") + key
    if side == "bn":
        return key
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets\.(\d+)\.(\w+)|(down|up)samplers\.0\.conv)\.(weight|bias)$", rest)
    if m:
        level = int(m.group(2)) if m.group(1) == "down" else levels - 1 - int(m.group(2))
        stage = f"{side}.{m.group(1)}.{level}"
        if m.group(4) is not None:
            return f"{stage}.block.{m.group(4)}.{_RESNET[m.group(5)]}.{m.group(7)}"
        return f"{stage}.{m.group(1)}sample.conv.{m.group(7)}"
    m = re.match(r"mid_block\.resnets\.(\d)\.(\w+)\.(weight|bias)$", rest)
    if m:
        return f"{side}.mid.block_{int(m.group(1)) + 1}.{_RESNET[m.group(2)]}.{m.group(3)}"
    m = re.match(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$", rest)
    if m:
        return f"{side}.mid.attn_1.{_ATTN[m.group(1)]}.{m.group(2)}"
    simple = {"conv_in": "conv_in", "conv_norm_out": "norm_out", "conv_out": "conv_out"}
    head, _, param = rest.rpartition(".")
    if head in simple:
        return f"{side}.{simple[head]}.{param}"
    return None


def vae_to_bfl(sd: dict, levels: int) -> dict:
    """Diffusers AutoencoderKLFlux2 state dict → `ae.safetensors` names (attention Linear weights as 1×1 convs)."""
    out, left = {}, []
    for key, value in sd.items():
        name = _vae_name(key, levels)
        if name is None:
            left.append(key)
            continue
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[name] = value
    if left:
        raise KeyError(f"not FLUX.2 VAE weights: {sorted(left)[:6]}")
    return out


def vae_params_from_config(config) -> AutoEncoderParams:
    c = dict(config)
    chans = list(c["block_out_channels"])
    dec = list(c.get("decoder_block_out_channels") or chans)
    return AutoEncoderParams(in_channels=int(c.get("in_channels", 3)), out_channels=int(c.get("out_channels", 3)),
                             ch=chans[0], decoder_ch=dec[0], ch_mult=tuple(ch // chans[0] for ch in chans),
                             num_res_blocks=int(c.get("layers_per_block", 2)),
                             z_channels=int(c.get("latent_channels", 32)), groups=int(c.get("norm_num_groups", 32)))


def vae_params_from_bfl(sd: dict) -> AutoEncoderParams:
    """The sizes of an `ae.safetensors` (the small-decoder variant has its own decoder width), GroupNorm 32 as
    ai-toolkit's AutoEncoder fixes it."""
    ch = int(sd["encoder.conv_in.weight"].shape[0])
    levels = _count(sd, "encoder.down.")
    mult = tuple(int(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // ch for i in range(levels))
    return AutoEncoderParams(in_channels=int(sd["encoder.conv_in.weight"].shape[1]),
                             out_channels=int(sd["decoder.conv_out.weight"].shape[0]), ch=ch,
                             decoder_ch=int(sd["decoder.conv_out.weight"].shape[1]) // mult[0], ch_mult=mult,
                             num_res_blocks=_count(sd, "encoder.down.0.block."),
                             z_channels=int(sd["decoder.conv_in.weight"].shape[1]), groups=32)
