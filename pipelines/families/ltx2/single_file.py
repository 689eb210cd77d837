"""An LTX-2 / LTX-2.3 `LTX2Pipeline` from one original-layout checkpoint, as ai-toolkit's `LTX2Model.load_model`
builds it from a `.safetensors` `name_or_path` (the LTX-2.3 preset: `Lightricks/LTX-2.3/ltx-2.3-22b-dev.safetensors`).

- The file is read, dequantized and split into its five parts (`checkpoint.py`); each part is built empty from its
  Diffusers config and takes the renamed tensors with a strict `load_state_dict(assign=True)` (a missing or extra
  tensor is an error naming it). The configs are ai-toolkit's (`get_ltx2_*_config`, full-size models), shipped in
  `pipelines/configs/ltx2*/`, or those of a Diffusers config folder beside the file with the same name
  (`sources.single_file_config_dir`: `<name>/model_index.json` next to `<name>.safetensors`).
- The Gemma 3 text encoder and its tokenizer are not in the file: ai-toolkit's LTX-2.3 reads them from
  `Lightricks/gemma-3-12b-it-qat-q4_0-unquantized` (`ltx_te_path`, `GemmaTokenizerFast` +
  `Gemma3ForConditionalGeneration`); here the sidecar folder's `text_encoder/` + `tokenizer/` come first when it has
  them, then that repo from the Hugging Face cache (LTX-2.0: the `Lightricks/LTX-2` repo's folders).
"""
from __future__ import annotations

import os

from ...errors import ModelSourceError
from ...sources import MODEL_REPO_ALLOW, hub_snapshot
from . import checkpoint

PARTS = ("transformer", "connectors", "vae", "audio_vae", "vocoder")
OTHER_PARTS = tuple(f"{part}/*" for part in PARTS)  # of LTX-2.0's combined repo, when only its Gemma is wanted
SHOWN = 4  # tensor names shown in a mismatch error


def read_checkpoint(path: str, label: str) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ModelSourceError(f"{label} cannot be read as safetensors ({type(exc).__name__}: {exc}). Download or "
                               "copy the file again.") from None


def _classes(vocoder_class: str) -> dict:
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors, vocoder

    return {"transformer": LTX2VideoTransformer3DModel, "connectors": LTX2TextConnectors,
            "vae": AutoencoderKLLTX2Video, "audio_vae": AutoencoderKLLTX2Audio,
            "vocoder": getattr(vocoder, vocoder_class)}


def _renamed_parts(state: dict, config_dir: str, version: str, original_names: dict, classes: dict) -> dict:
    parts = checkpoint.split(state)
    vae_config = classes["vae"].load_config(os.path.join(config_dir, "vae"))
    return {"transformer": checkpoint.transformer_names(parts["transformer"], original_names),
            "connectors": checkpoint.connector_names(parts["connectors"], version),
            "vae": checkpoint.video_vae_names(parts["vae"], len(vae_config["down_block_types"])),
            "audio_vae": checkpoint.audio_vae_names(parts["audio_vae"]),
            "vocoder": checkpoint.vocoder_names(parts["vocoder"], version)}


def _built(cls, folder: str, part: str, tensors: dict, label: str, model_label: str):
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = cls.from_config(cls.load_config(folder))
    expected = set(module.state_dict())
    computed = {name for name, _ in module.named_buffers()} - expected  # non-persistent: the module makes them
    tensors = {k: v for k, v in tensors.items() if k not in computed}
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        what = "; ".join(f"{kind} {', '.join(names[:SHOWN])}{' …' if len(names) > SHOWN else ''} ({len(names)})"
                         for kind, names in (("missing", missing), ("unexpected", extra)) if names)
        raise ModelSourceError(
            f"{label}: its {part} does not fit {model_label}'s {part} config ({what}). Pick the checkpoint of this "
            f"model (Lightricks' original layout), or put a Diffusers config folder named like the file beside it.")
    module.load_state_dict(tensors, strict=True, assign=True)
    return module


def load_parts(path: str, config_dir: str, version: str, original_names: dict, vocoder_class: str,
               model_label: str) -> dict:
    """{part: module} of the five parts in the file (file dtypes; the caller casts them)."""
    label = os.path.basename(path)
    state = checkpoint.dequantize(read_checkpoint(path, label), label)
    is_23 = any(k.startswith(checkpoint.V23_MARKER) for k in state)
    if is_23 != (version == "2.3"):
        right = "an LTX-2.3 checkpoint (model ltx2.3)" if is_23 else "an LTX-2.0 checkpoint (model ltx2)"
        raise ModelSourceError(f"{label} is {right}, not {model_label}: pick that model id for it.")
    classes = _classes(vocoder_class)
    tensors = _renamed_parts(state, config_dir, version, original_names, classes)
    del state
    return {part: _built(classes[part], os.path.join(config_dir, part), part, tensors.pop(part), label, model_label)
            for part in PARTS}


def _has_text_parts(folder: str | None) -> bool:
    return bool(folder) and all(os.path.isdir(os.path.join(folder, sub)) for sub in ("text_encoder", "tokenizer"))


def load_text_parts(config_dir: str, te_repo: str, te_subfolders: bool, label: str) -> tuple:
    """(text_encoder, tokenizer): the sidecar folder's, else `te_repo`'s from the HF cache (`te_subfolders`: in its
    text_encoder/ and tokenizer/ folders, as LTX-2.0's combined repo; else at its root, as a transformers repo)."""
    from transformers import Gemma3ForConditionalGeneration, GemmaTokenizerFast

    if _has_text_parts(config_dir):
        folder, where, subfolders = config_dir, config_dir, True
    else:
        try:
            folder = hub_snapshot(te_repo, skip=OTHER_PARTS) if te_subfolders else \
                hub_snapshot(te_repo, allow=MODEL_REPO_ALLOW)
        except ModelSourceError as exc:
            raise ModelSourceError(f"{label} holds no text encoder: ai-toolkit reads {te_repo}'s Gemma 3 for it. "
                                   f"{exc}") from exc
        where, subfolders = te_repo, te_subfolders
    te_sub, tok_sub = ("text_encoder", "tokenizer") if subfolders else ("", "")
    try:
        tokenizer = GemmaTokenizerFast.from_pretrained(folder, subfolder=tok_sub, local_files_only=True)
        text_encoder = Gemma3ForConditionalGeneration.from_pretrained(folder, subfolder=te_sub,
                                                                      local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for unreadable models
        raise ModelSourceError(f"Could not load the Gemma 3 text encoder and tokenizer for {label} from {where} "
                               f"({type(exc).__name__}: {exc}).") from exc
    return text_encoder, tokenizer
