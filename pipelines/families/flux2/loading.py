"""Loading FLUX.2 parts as ai-toolkit does, from a Diffusers folder / Hub snapshot or from BFL single files.

ai-toolkit (`flux2_model.py:Flux2Model.load_model`, `flux2_klein_model.py`): the transformer from the BFL file
(`flux2-dev.safetensors`, `flux-2-klein-base-4b.safetensors`, `flux-2-klein-base-9b.safetensors`) via `load_file`,
every tensor `.to(dtype)`, `load_state_dict(assign=True)`; the VAE from `ae.safetensors` (`<name_or_path>/ae.safetensors`,
else `model.vae_path`, else klein's `ai-toolkit/flux2_vae`, dev's own repo); the text encoder and tokenizer from
fixed repos: klein 4B `Qwen/Qwen3-4B`, klein 9B `Qwen/Qwen3-8B` (`Qwen3ForCausalLM`, `Qwen2Tokenizer`), dev
`mistralai/Mistral-Small-3.1-24B-Instruct-2503` (`Mistral3ForConditionalGeneration`, `AutoProcessor`).

Here: a Diffusers folder (or the registry repo's snapshot) gives every part — its transformer/ and vae/ weights are
read with safetensors and renamed into the BFL layout (`convert.py`, exact), text_encoder/ and tokenizer/ load with
transformers. A BFL transformer file under checkpoints/ takes the rest from a folder beside it with the same name
(a Diffusers folder: vae/ or `ae.safetensors`, text_encoder/, tokenizer/), else from the Hugging Face cache: the
VAE and text-encoder repos above (never downloaded for a local file).
"""
from __future__ import annotations

import json
import os

import torch

from ...errors import ModelSourceError
from ...sources import hub_snapshot
from . import convert
from .autoencoder import Flux2AutoEncoder
from .model import Flux2Transformer

AE_FILE = "ae.safetensors"


class Flux2Parts:
    """The loaded parts (what the engine caches): `transformer`, `vae` (BFL layout), `text_encoder`, `tokenizer`."""

    def __init__(self, transformer, vae, text_encoder, tokenizer, text_encoder_type: str):
        self.transformer, self.vae = transformer, vae
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.text_encoder_type = text_encoder_type

    @property
    def components(self) -> dict:
        return {"transformer": self.transformer, "vae": self.vae, "text_encoder": self.text_encoder,
                "tokenizer": self.tokenizer}


def _read_safetensors(folder: str, stem: str) -> dict:
    """All tensors of `<folder>/<stem>.safetensors` or its shards (`<stem>.safetensors.index.json`)."""
    from safetensors.torch import load_file

    index = os.path.join(folder, stem + ".safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = [stem + ".safetensors"]
    sd = {}
    for name in files:
        sd.update(load_file(os.path.join(folder, name), device="cpu"))
    return sd


def _config(folder: str) -> dict:
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def _module(cls, params, sd: dict, dtype, what: str):
    with torch.device("meta"):
        module = cls(params)
    try:
        module.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelSourceError(f"{what}: the weights do not fit a FLUX.2 model of the sizes they imply ({exc})."
                               ) from exc
    return module


def transformer_from_folder(folder: str, dtype) -> Flux2Transformer:
    params = convert.params_from_config(_config(folder))
    sd = convert.transformer_to_bfl(_read_safetensors(folder, "diffusion_pytorch_model"))
    return _module(Flux2Transformer, params, sd, dtype, folder)


def transformer_from_file(path: str, dtype) -> Flux2Transformer:
    from safetensors.torch import load_file

    sd = load_file(path, device="cpu")
    sd = {k[len("model.diffusion_model."):] if k.startswith("model.diffusion_model.") else k: v for k, v in sd.items()}
    if "img_in.weight" not in sd or "single_stream_modulation.lin.weight" not in sd:
        raise ModelSourceError(f"{os.path.basename(path)} is not a FLUX.2 transformer file in the BFL layout "
                               f"(no img_in / single_stream_modulation weights).")
    return _module(Flux2Transformer, convert.params_from_bfl(sd), sd, dtype, os.path.basename(path))


def vae_from_folder(folder: str, dtype) -> Flux2AutoEncoder:
    config = _config(folder)
    params = convert.vae_params_from_config(config)
    sd = convert.vae_to_bfl(_read_safetensors(folder, "diffusion_pytorch_model"), len(params.ch_mult))
    return _module(Flux2AutoEncoder, params, sd, dtype, folder)


def vae_from_file(path: str, dtype) -> Flux2AutoEncoder:
    from safetensors.torch import load_file

    sd = load_file(path, device="cpu")
    return _module(Flux2AutoEncoder, convert.vae_params_from_bfl(sd), sd, dtype, path)


def text_parts(folder: str, te_sub: str | None, tok_sub: str | None, kind: str, dtype):
    """(text encoder, tokenizer/processor) from `folder` (subfolders or the repo root)."""
    sub = {} if te_sub is None else {"subfolder": te_sub}
    tsub = {} if tok_sub is None else {"subfolder": tok_sub}
    if kind == "qwen":
        from transformers import AutoTokenizer, Qwen3ForCausalLM

        te = Qwen3ForCausalLM.from_pretrained(folder, torch_dtype=dtype, local_files_only=True, **sub)
        return te, AutoTokenizer.from_pretrained(folder, local_files_only=True, **tsub)
    from transformers import AutoProcessor, AutoTokenizer, Mistral3ForConditionalGeneration

    te = Mistral3ForConditionalGeneration.from_pretrained(folder, torch_dtype=dtype, local_files_only=True, **sub)
    try:  # ai-toolkit: AutoProcessor (PixtralProcessor); a text-only chat template renders the same ids
        tok = AutoProcessor.from_pretrained(folder, local_files_only=True, **tsub)
    except Exception:  # noqa: BLE001 - the processor needs torchvision; the tokenizer alone encodes text
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, **tsub)
    return te, tok


def from_folder(folder: str, label: str, kind: str, dtype) -> Flux2Parts:
    try:
        transformer = transformer_from_folder(os.path.join(folder, "transformer"), dtype)
        vae = vae_from_folder(os.path.join(folder, "vae"), dtype)
        te, tok = text_parts(folder, "text_encoder", "tokenizer", kind, dtype)
    except ModelSourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors/transformers raise many types for wrong folders
        raise ModelSourceError(
            f"Could not load {label} as a FLUX.2 Diffusers folder ({type(exc).__name__}: {exc}). It needs "
            f"transformer/, vae/, text_encoder/ and tokenizer/ (as black-forest-labs' FLUX.2 repos have).") from exc
    return Flux2Parts(transformer, vae, te, tok, kind)


def _cached(repo: str, needed: list, checkpoint: str, command: str) -> str:
    try:
        folder = hub_snapshot(repo, allow_download=False)
    except ModelSourceError:
        folder = None
    missing = [p for p in needed if not folder or not os.path.exists(os.path.join(folder, p))]
    if missing:
        raise ModelSourceError(
            f"{checkpoint} is a FLUX.2 transformer file: ai-toolkit takes its other parts from {repo}, which is not "
            f"in the local Hugging Face cache ({', '.join(missing)} missing). Download it once with `{command}`, or "
            f"put a Diffusers FLUX.2 folder with the same name beside the file "
            f"({os.path.splitext(checkpoint)[0]}/ with vae/ or {AE_FILE}, text_encoder/, tokenizer/).")
    return folder


def from_transformer_file(path: str, kind: str, vae_repo: str, te_repo: str, dtype) -> Flux2Parts:
    name = os.path.basename(path)
    transformer = transformer_from_file(path, dtype)
    side = os.path.splitext(path)[0]
    side = side if os.path.isdir(side) else None
    try:
        if side and os.path.isfile(os.path.join(side, AE_FILE)):
            vae = vae_from_file(os.path.join(side, AE_FILE), dtype)
        elif side and os.path.isfile(os.path.join(side, "vae", "config.json")):
            vae = vae_from_folder(os.path.join(side, "vae"), dtype)
        else:
            folder = _cached(vae_repo, [AE_FILE], name, f"hf download {vae_repo} {AE_FILE}")
            vae = vae_from_file(os.path.join(folder, AE_FILE), dtype)
        if side and os.path.isdir(os.path.join(side, "text_encoder")):
            te, tok = text_parts(side, "text_encoder", "tokenizer", kind, dtype)
        else:
            folder = _cached(te_repo, ["config.json"], name, f"hf download {te_repo}")
            te, tok = text_parts(folder, None, None, kind, dtype)
    except ModelSourceError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelSourceError(f"Could not load the VAE / text encoder for {name} ({type(exc).__name__}: {exc}).") \
            from exc
    return Flux2Parts(transformer, vae, te, tok, kind)
