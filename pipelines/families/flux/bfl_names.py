"""BFL (original FLUX.1 / Chroma) module names → Diffusers module paths, with the row slices of fused layers.

BFL checkpoints and LoRA files (`diffusion_model.double_blocks.0.img_attn.qkv`, kohya
`lora_unet_single_blocks_0_linear1`) fuse layers that Diffusers keeps apart: `img_attn.qkv` is `to_q | to_k |
to_v` stacked by rows, `txt_attn.qkv` is `add_q_proj | add_k_proj | add_v_proj`, a single block's `linear1` is
`to_q | to_k | to_v | proj_mlp`. The final adaLN modulation is stored as (shift, scale) where Diffusers'
`norm_out.linear` holds (scale, shift). The mapping follows Diffusers' own checkpoint converter
(`loaders/single_file_utils.py:convert_flux_transformer_checkpoint_to_diffusers`).
"""
from __future__ import annotations

from ...lora.aliases import Alias, row_splits

DOUBLE = {
    "img_attn.proj": "attn.to_out.0", "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2",
    "img_mod.lin": "norm1.linear", "txt_attn.proj": "attn.to_add_out", "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2", "txt_mod.lin": "norm1_context.linear",
}
DOUBLE_FUSED = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
SINGLE = {"linear2": "proj_out", "modulation.lin": "norm.linear"}
SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
TOP = {
    "img_in": "x_embedder", "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
SWAPPED = {"final_layer.adaLN_modulation.1": "norm_out.linear"}  # (shift, scale) in BFL, (scale, shift) here


def _has(model, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def bfl_names(component: str, model) -> dict[str, tuple[Alias, ...]]:
    """{BFL module name: aliases} for a Diffusers FLUX-style transformer (FLUX.1, Flex, Chroma): every name whose
    Diffusers layers exist in `model`."""
    names: dict = {}
    for kind, table, fused in (("transformer_blocks", DOUBLE, DOUBLE_FUSED),
                               ("single_transformer_blocks", SINGLE, SINGLE_FUSED)):
        blocks = getattr(model, kind, ())
        bfl = "double_blocks" if kind == "transformer_blocks" else "single_blocks"
        for i in range(len(blocks)):
            for name, path in table.items():
                if _has(model, f"{kind}.{i}.{path}"):
                    names[f"{bfl}.{i}.{name}"] = (Alias(component, f"{kind}.{i}.{path}"),)
            for name, parts in fused.items():
                paths = [f"{kind}.{i}.{p}" for p in parts]
                if all(_has(model, p) for p in paths):
                    names[f"{bfl}.{i}.{name}"] = row_splits(model, [(component, p) for p in paths])
    for name, path in TOP.items():
        if _has(model, path):
            names[name] = (Alias(component, path),)
    for name, path in SWAPPED.items():
        if _has(model, path):
            half = int(model.get_submodule(path).weight.shape[0]) // 2
            names[name] = (Alias(component, path, rows=slice(0, half), into=slice(half, 2 * half)),
                           Alias(component, path, rows=slice(half, 2 * half), into=slice(0, half)))
    return names
