"""Original SGM/LDM names of Diffusers UNet modules (`down_blocks.1.attentions.0` → `input_blocks.4.1`).

kohya sd-scripts, and ai-toolkit between 2023-09-04 and 2024-07-20 (its `stable_diffusion_locon_sdxl.json` keymap),
name SDXL LoRA keys after the original UNet layout. The numbering follows from the UNet config: each down level has
`layers_per_block` resnet(+attention) input blocks followed by one downsampler block; each up level has
`layers_per_block + 1` output blocks, the last one carrying the upsampler.
"""
from __future__ import annotations

_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _resnet_rest(rest: list[str]) -> list[str]:
    return [_RESNET.get(rest[0], rest[0])] + rest[1:] if rest else rest


def sgm_name(path: str, config) -> str | None:
    """The SGM name of one Diffusers UNet module path, or None when it has none."""
    for head, sgm in _TOP.items():
        if path == head or path.startswith(head + "."):
            return sgm + path[len(head):]
    lpb = config["layers_per_block"]
    parts = path.split(".")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) >= 4:
        level, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if parts[0] == "down_blocks":
            if kind == "resnets":
                return ".".join([f"input_blocks.{(lpb + 1) * level + j + 1}.0"] + _resnet_rest(rest))
            if kind == "attentions":
                return ".".join([f"input_blocks.{(lpb + 1) * level + j + 1}.1"] + rest)
            if kind == "downsamplers" and rest[:1] == ["conv"]:
                return ".".join([f"input_blocks.{(lpb + 1) * (level + 1)}.0.op"] + rest[1:])
            return None
        block = (lpb + 1) * level
        if kind == "resnets":
            return ".".join([f"output_blocks.{block + j}.0"] + _resnet_rest(rest))
        if kind == "attentions":
            return ".".join([f"output_blocks.{block + j}.1"] + rest)
        if kind == "upsamplers":
            has_attention = "CrossAttn" in config["up_block_types"][level]
            return ".".join([f"output_blocks.{block + lpb}.{2 if has_attention else 1}"] + rest)
        return None
    if parts[0] == "mid_block" and len(parts) >= 3:
        kind, j, rest = parts[1], int(parts[2]), parts[3:]
        if kind == "resnets":
            return ".".join([f"middle_block.{2 * j}"] + _resnet_rest(rest))
        if kind == "attentions":
            return ".".join(["middle_block.1"] + rest)
    return None


def sgm_unet_names(config, paths) -> dict:
    """{diffusers path: SGM path} for every path that has an SGM name."""
    out = {}
    for path in paths:
        name = sgm_name(path, config)
        if name is not None:
            out[path] = name
    return out
