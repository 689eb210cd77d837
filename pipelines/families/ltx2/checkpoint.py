"""LTX-2 / LTX-2.3 single-file checkpoints (Lightricks' original layout, e.g. `ltx-2.3-22b-dev.safetensors`) → the
state dicts of the Diffusers parts: pure renames, no models.

The layout, as ai-toolkit 0.12.26 reads it (`extensions_built_in/diffusion_models/ltx2/convert_ltx2_to_diffusers.py`,
`LTX2Model.load_model`; the same tables as Diffusers' `scripts/convert_ltx2_to_diffusers.py`):
- one file, four prefixes: `model.diffusion_model.` (the transformer and the text connectors), `vae.`, `audio_vae.`,
  `vocoder.`; some files keep the connectors' `text_embedding_projection.*` at the top level;
- quantized files (ComfyUI's `comfy_quant` fp8/int8 tensorwise, or the older `scale_weight` scaled fp8) are first
  dequantized: `weight.float() * scale` (a scalar, or one per output row), then bf16 (`dequantize_state_dict`);
- the connectors are the diffusion-model keys under `video_embeddings_connector`, `audio_embeddings_connector`,
  `transformer_1d_blocks`, `text_embedding_projection`, `connectors.` …; the transformer is the rest;
- transformer names: `ORIGINAL_NAMES` (2.3 adds the prompt modulation pair) and `adaln_single.` → `time_embed.`,
  `audio_adaln_single.` → `audio_time_embed.`;
- video VAE: the original counts every resnet stage and every up/down sampler as one block (`down_blocks.0..8`,
  `up_blocks.0..6`, 2.3 `..8`): encoder block 2k is Diffusers' `down_blocks.k`, 2k+1 its downsampler, the last the
  mid block; decoder block 0 is the mid block, 2k+1 `up_blocks.k.upsamplers.0`, 2k+2 `up_blocks.k`;
  `res_blocks` → `resnets`, the per-channel statistics → `latents_mean` / `latents_std` (the other two dropped);
- audio VAE: the statistics only; vocoder: `resblocks`/`conv_pre`/`conv_post` (+2.0 `ups`, 2.3 `.ups.`, `act_post`,
  `downsample.lowpass`) renamed.
"""
from __future__ import annotations

import json
import re

import torch

from ...errors import ModelSourceError

DIT_PREFIX = "model.diffusion_model."
PREFIXES = {"vae": "vae.", "audio_vae": "audio_vae.", "vocoder": "vocoder."}
# a key only LTX-2.3 files have (the 2.3 transformer's prompt modulation), to tell the versions apart
V23_MARKER = DIT_PREFIX + "prompt_adaln_single."
CONNECTOR_PREFIXES = ("video_embeddings_connector", "audio_embeddings_connector", "transformer_1d_blocks",
                      "text_embedding_projection", "connectors.", "video_connector", "audio_connector", "text_proj_in")
CONNECTOR_NAMES = {"2.0": {"connectors.": "", "video_embeddings_connector": "video_connector",
                           "audio_embeddings_connector": "audio_connector",
                           "transformer_1d_blocks": "transformer_blocks",
                           "text_embedding_projection.aggregate_embed": "text_proj_in",
                           "q_norm": "norm_q", "k_norm": "norm_k"},
                   "2.3": {"connectors.": "", "video_embeddings_connector": "video_connector",
                           "audio_embeddings_connector": "audio_connector",
                           "transformer_1d_blocks": "transformer_blocks",
                           "text_embedding_projection.audio_aggregate_embed": "audio_text_proj_in",
                           "text_embedding_projection.video_aggregate_embed": "video_text_proj_in",
                           "q_norm": "norm_q", "k_norm": "norm_k"}}
VAE_STATISTICS = {"per_channel_statistics.mean-of-means": "latents_mean",
                  "per_channel_statistics.std-of-means": "latents_std"}
VAE_DROPPED = ("per_channel_statistics.channel", "per_channel_statistics.mean-of-stds")
VAE_NAMES = {"res_blocks": "resnets", "last_time_embedder": "time_embedder",
             "last_scale_shift_table": "scale_shift_table", **VAE_STATISTICS}
VOCODER_NAMES = {"2.0": {"ups": "upsamplers", "resblocks": "resnets", "conv_pre": "conv_in", "conv_post": "conv_out"},
                 "2.3": {".ups.": ".upsamplers.", "resblocks": "resnets", "conv_pre": "conv_in",
                         "conv_post": "conv_out", "act_post": "act_out", "downsample.lowpass": "downsample"}}
# the side tensors of quantized weights (ComfyUI's format, and the legacy scaled-fp8 names)
QUANT_SIDE_SUFFIXES = (".weight_scale", ".weight_scale_2", ".pre_quant_scale", ".input_scale", ".comfy_quant",
                       ".scale_weight", ".scale_input")
DEQUANTIZABLE = ("float8_e4m3fn", "float8_e5m2", "int8_tensorwise")


def _renamed(key: str, names: dict) -> str:
    for old, new in names.items():
        key = key.replace(old, new)
    return key


def _dequantized(weight, scale, label):
    w = weight.to(torch.float32)
    if scale is not None:
        scale = scale.to(torch.float32)
        if scale.numel() == 1:
            w = w * scale
        elif scale.numel() == w.shape[0]:
            w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
        else:
            raise ModelSourceError(f"{label}: a weight scale of shape {tuple(scale.shape)} for a weight of shape "
                                   f"{tuple(weight.shape)} is not a per-tensor or per-row scale; use a full-precision "
                                   "or fp8-scaled checkpoint.")
    return w.to(torch.bfloat16)


def dequantize(state: dict, label: str) -> dict:
    """ai-toolkit's `dequantize_state_dict`: scaled fp8/int8 weights → bf16, their side tensors dropped; other
    tensors as they are. ConvRot int8 and other formats are refused (ai-toolkit cannot train on them either)."""
    out = {}
    for key, tensor in state.items():
        if key.endswith(QUANT_SIDE_SUFFIXES) or key.rsplit(".", 1)[-1] == "scaled_fp8":
            continue
        if key.endswith(".weight"):
            stem = key[: -len(".weight")]
            scale = state.get(stem + ".weight_scale")
            if scale is None:
                scale = state.get(stem + ".scale_weight")
            marker = state.get(stem + ".comfy_quant")
            if marker is not None:
                conf = json.loads(bytes(marker.cpu().numpy().tobytes()))
                params = conf.get("params") if isinstance(conf.get("params"), dict) else {}
                fmt = conf.get("format")
                if fmt not in DEQUANTIZABLE or conf.get("convrot", params.get("convrot", False)):
                    raise ModelSourceError(
                        f"{label}: layer {stem} is quantized as {fmt}{' with ConvRot' if fmt in DEQUANTIZABLE else ''},"
                        " which cannot be dequantized (ai-toolkit reads fp8/int8 tensorwise files only). Use a "
                        "full-precision or fp8-scaled checkpoint.")
                out[key] = _dequantized(tensor, scale, label)
                continue
            if scale is not None:
                out[key] = _dequantized(tensor, scale, label)
                continue
        out[key] = tensor
    return out


def split(state: dict) -> dict:
    """{part: its original-layout state dict without the prefix} for transformer, connectors, vae, audio_vae,
    vocoder (`get_model_state_dict_from_combined_ckpt` + `split_transformer_and_connector_state_dict`)."""
    dit = {k[len(DIT_PREFIX):]: v for k, v in state.items() if k.startswith(DIT_PREFIX)}
    for key, value in state.items():
        if key.startswith("text_embedding_projection"):
            dit.setdefault(key, value)
    parts = {"transformer": {k: v for k, v in dit.items() if not k.startswith(CONNECTOR_PREFIXES)},
             "connectors": {k: v for k, v in dit.items() if k.startswith(CONNECTOR_PREFIXES)}}
    for part, prefix in PREFIXES.items():
        parts[part] = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return parts


def transformer_names(state: dict, original_names: dict) -> dict:
    out = {}
    for key, value in state.items():
        key = _renamed(key, original_names)
        if ".weight" in key or ".bias" in key:
            if key.startswith("adaln_single."):
                key = "time_embed." + key[len("adaln_single."):]
            elif key.startswith("audio_adaln_single."):
                key = "audio_time_embed." + key[len("audio_adaln_single."):]
        out[key] = value
    return out


def connector_names(state: dict, version: str) -> dict:
    return {_renamed(k, CONNECTOR_NAMES[version]): v for k, v in state.items()}


BLOCK = re.compile(r"^(?P<side>encoder|decoder)\.(?:down|up)_blocks\.(?P<index>\d+)\.")


def _vae_block(side: str, index: int, num_down: int) -> str:
    if side == "encoder":
        if index == 2 * num_down:
            return "encoder.mid_block."
        return f"encoder.down_blocks.{index // 2}." + ("downsamplers.0." if index % 2 else "")
    if index == 0:
        return "decoder.mid_block."
    return f"decoder.up_blocks.{(index - 1) // 2}.upsamplers.0." if index % 2 else \
        f"decoder.up_blocks.{(index - 2) // 2}."


def video_vae_names(state: dict, num_down: int) -> dict:
    """`num_down`: the encoder's down blocks (`len(down_block_types)`; its last original block is the mid block)."""
    out = {}
    for key, value in state.items():
        if any(dropped in key for dropped in VAE_DROPPED):
            continue
        match = BLOCK.match(key)
        if match:
            key = _vae_block(match["side"], int(match["index"]), num_down) + key[match.end():]
        out[_renamed(key, VAE_NAMES)] = value
    return out


def audio_vae_names(state: dict) -> dict:
    return {_renamed(k, VAE_STATISTICS): v for k, v in state.items()}


def vocoder_names(state: dict, version: str) -> dict:
    return {_renamed(k, VOCODER_NAMES[version]): v for k, v in state.items()}
