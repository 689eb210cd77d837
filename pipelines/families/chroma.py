"""Chroma (lodestones/Chroma1-Base): previews as ai-toolkit renders them, through Diffusers' `ChromaPipeline`.

What ai-toolkit 0.12.26 does (`extensions_built_in/diffusion_models/chroma/chroma_model.py:ChromaModel`, its own
`chroma/pipeline.py:ChromaPipeline` and `chroma/src/model.py:Chroma`), and so what this does:
- `load_model`: the transformer from a BFL-layout single file (`Chroma1-Base.safetensors` of the repo, or a local
  file), T5 (`text_encoder_2`), its tokenizer (`tokenizer_2`) and the VAE from `ostris/Flex.1-alpha`, every part
  cast to the train dtype; `quantize` + `freeze` of the transformer and (`quantize_te`) the T5;
- `get_prompt_embeds`: T5 on the ids padded to 512 WITHOUT an attention mask, `.to(te dtype)`, and the tokenizer's
  mask; `src/model.py:Chroma.forward` unmasks one pad token (`modify_mask_to_attend_padding(mask, 512, 1)`) and
  builds a BOOLEAN query×key mask. Diffusers' pipeline runs T5 with the mask and makes a float 0/1 mask, which SDPA
  adds to the logits (nothing masked): so the embeds and a bool mask `arange(512) <= n_tokens` are passed in;
- `pipeline.py:ChromaPipeline.__call__`: true CFG with the encoded negative iff `guidance_scale > 1.00001`
  (Diffusers tests `> 1`: below the threshold guidance 1.0 and no negative are passed), the distilled guidance input
  fixed at 0, FLUX.1's flow-match schedule (`scheduler_config` = `flux_config`, sigmas `linspace(1, 1/n, n)`, `mu`
  from the packed token count), noise from the seeded CPU generator in the embeds' dtype;
- `src/layers.py:RMSNorm` (the approximator's norms) has eps 1e-6; Diffusers' `nn.RMSNorm` defaults to
  `finfo(dtype).eps`, so the eps is set on the loaded model.
Everything else (modulation layout, RoPE, fused qkv/linear1 vs split linears, VAE decode) is bit-identical
(research: flow-families.md "Chroma").

LoRA names: ai-toolkit's Chroma files are `diffusion_model.<BFL name>.lora_A/B` on the double/single blocks
(`ChromaModel.convert_lora_weights_before_save`), the FLUX family's BFL names with the fused qkv/linear1 split by
rows; Diffusers paths (`transformer.…`) and kohya `lora_unet_…` names work as well.
"""
from __future__ import annotations

import os

import torch

from ..errors import ModelSourceError
from ..lora.aliases import Alias
from ..sources import CONFIG_ROOT, hub_snapshot
from .common import from_source, prepare_components, quantize_components, step_callback_kwargs
from .flux import T5_MAX_LENGTH, Flux

RMS_EPS = 1e-6  # chroma/src/layers.py:RMSNorm.forward -> F.rms_norm(eps=1e-6)
# chroma_model.py:ChromaModel.load_model: "schnell model is gated now, use flex instead"
EXTRAS_REPO = "ostris/Flex.1-alpha"
EXTRAS_PARTS = {"text_encoder": "text_encoder_2", "tokenizer": "tokenizer_2", "vae": "vae"}  # ours -> its subfolder
# the approximator's BFL names (chroma/src/layers.py:Approximator) -> Diffusers' ChromaApproximator paths
APPROXIMATOR = {"in_layer": "linear_1", "out_layer": "linear_2"}


def encode_chroma(pipe, prompt: str, dtype):
    """`ChromaModel.get_prompt_embeds` + the mask `Chroma.forward` builds: (embeds [1, 512, d] in `dtype`, bool mask
    [1, 512] of the real tokens and the first pad)."""
    tokens = pipe.tokenizer([prompt], padding="max_length", max_length=T5_MAX_LENGTH, truncation=True,
                            return_length=False, return_overflowing_tokens=False, return_tensors="pt")
    te = pipe.text_encoder
    embeds = te(tokens.input_ids.to(te.device), output_hidden_states=False)[0].to(dtype=te.dtype)
    n_tokens = int(tokens.attention_mask[0].sum())
    mask = (torch.arange(T5_MAX_LENGTH, device=te.device) <= n_tokens).unsqueeze(0)
    return embeds.to(dtype), mask


def _set_rms_eps(transformer) -> None:
    for norm in transformer.distilled_guidance_layer.norms:
        norm.eps = RMS_EPS


class Chroma(Flux):
    """Chroma1 (`ChromaPipeline`: T5 only, true CFG, no guidance embedding)."""
    lora_component_names = ("transformer",)
    pipeline_class = "ChromaPipeline"
    parts = ("vae", "text_encoder", "tokenizer", "transformer")

    # ---- loading -------------------------------------------------------------------------------------------
    def load(self, spec, source, dtype, device, quantization=None):
        if source.kind == "single_file":
            pipe = self._from_transformer_file(spec, source)
        else:
            pipe = from_source(self._pipeline_cls(), spec, source, scheduler=self.scheduler(spec))
        prepare_components(pipe, os.path.basename(source.location), spec, dtype, device)
        _set_rms_eps(pipe.transformer)
        quantize_components(pipe, spec, quantization, dtype)
        return pipe

    def _pipeline_cls(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class)

    def _from_transformer_file(self, spec, source):
        """ai-toolkit's layout: one BFL-layout transformer file; T5, tokenizer and VAE from elsewhere. With a
        Diffusers Chroma folder beside the file (`<name>/model_index.json` next to `<name>.safetensors`) its
        transformer config and parts are used; otherwise the transformer config of the registry's repo and the parts
        ai-toolkit takes (`ostris/Flex.1-alpha`: text_encoder_2, tokenizer_2, vae), both from the HF cache."""
        from diffusers import AutoencoderKL, ChromaTransformer2DModel
        from transformers import T5EncoderModel, T5TokenizerFast

        name = os.path.basename(source.location)
        sidecar = source.config_dir if _is_sidecar(source.config_dir) else None
        if sidecar and os.path.isfile(os.path.join(sidecar, "transformer", "config.json")):
            config = sidecar
        else:
            config = _cached(spec.base_repo, ("transformer/config.json",), name,
                             f'hf download {spec.base_repo} transformer/config.json')
        if sidecar and all(_has_weights(sidecar, sub) for sub in ("text_encoder", "vae")):
            extras, subfolders = sidecar, {k: k for k in EXTRAS_PARTS}
        else:  # a config-only sidecar, or none: the parts ai-toolkit itself loads
            extras = _cached(EXTRAS_REPO, [f"{sub}/" for sub in EXTRAS_PARTS.values()], name,
                             f'hf download {EXTRAS_REPO} --include "text_encoder_2/*" "tokenizer_2/*" "vae/*"')
            subfolders = EXTRAS_PARTS
        try:
            transformer = ChromaTransformer2DModel.from_single_file(
                source.location, config=config, subfolder="transformer", local_files_only=True)
            text_encoder = T5EncoderModel.from_pretrained(extras, subfolder=subfolders["text_encoder"],
                                                          local_files_only=True)
            tokenizer = T5TokenizerFast.from_pretrained(extras, subfolder=subfolders["tokenizer"],
                                                        local_files_only=True)
            vae = AutoencoderKL.from_pretrained(extras, subfolder=subfolders["vae"], local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - Diffusers/transformers raise many types for unreadable models
            raise ModelSourceError(
                f"Could not load {name} as a {spec.label} transformer file with T5/VAE from {extras} "
                f"({type(exc).__name__}: {exc}). Check that it is a {spec.label} checkpoint (ai-toolkit's BFL layout, "
                f"e.g. Chroma1-Base.safetensors).") from exc
        return self._pipeline_cls()(scheduler=self.scheduler(spec), vae=vae, text_encoder=text_encoder,
                                    tokenizer=tokenizer, transformer=transformer)

    def module_names(self, spec, component, module):
        names = super().module_names(spec, component, module)
        if component == "transformer":
            for i in range(len(getattr(getattr(module, "distilled_guidance_layer", None), "layers", ()))):
                for bfl, ours in APPROXIMATOR.items():
                    path = f"distilled_guidance_layer.layers.{i}.{ours}"
                    names.setdefault(f"distilled_guidance_layer.layers.{i}.{bfl}", (Alias(component, path),))
        return names

    # ---- sampling ------------------------------------------------------------------------------------------
    def generate(self, spec, pipe, request, sampler=None, on_step=None):
        sampling = self.sampling_pipeline(spec, pipe, sampler)
        width, height = self.pipeline_size(request)
        dtype = pipe.transformer.dtype  # BaseModel.generate_images casts the embeds to the model's dtype
        with torch.no_grad():
            embeds, mask = encode_chroma(pipe, request.prompt, dtype)
            kwargs = dict(prompt_embeds=embeds, prompt_attention_mask=mask, guidance_scale=1.0)
            if request.guidance_scale > spec.guidance.threshold:  # pipeline.py: true CFG iff > 1.00001
                neg_embeds, neg_mask = encode_chroma(pipe, request.negative_prompt or "", dtype)
                kwargs.update(negative_prompt_embeds=neg_embeds, negative_prompt_attention_mask=neg_mask,
                              guidance_scale=spec.guidance.pipeline_value(request.guidance_scale))
            kwargs.update(height=height, width=width, num_inference_steps=request.steps,
                          generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np",
                          **step_callback_kwargs(request.steps, on_step))
            return sampling(**kwargs).images


def _is_sidecar(config_dir) -> bool:
    """A Diffusers folder beside the checkpoint (not a config folder shipped with the pack)."""
    if not config_dir or not os.path.isfile(os.path.join(config_dir, "model_index.json")):
        return False
    return os.path.commonpath([os.path.abspath(config_dir), CONFIG_ROOT]) != CONFIG_ROOT


def _has_weights(folder: str, sub: str) -> bool:
    path = os.path.join(folder, sub)
    return os.path.isdir(path) and any(f.endswith(".safetensors") for f in os.listdir(path))


def _cached(repo: str, needed, checkpoint: str, command: str) -> str:
    """The local snapshot of `repo` holding every `needed` path (a folder when it ends in "/"), from the HF cache
    only (these are parts beside a local checkpoint: never a whole-repo download)."""
    try:
        folder = hub_snapshot(repo, allow_download=False)
    except ModelSourceError:
        folder = None
    missing = [p for p in needed if not folder or not os.path.exists(os.path.join(folder, p.rstrip("/")))]
    if missing:
        raise ModelSourceError(
            f"{checkpoint} is a Chroma transformer file: its {'config' if 'config' in missing[0] else 'T5 and VAE'} "
            f"come from {repo} (as ai-toolkit loads Chroma), which is not in the local Hugging Face cache "
            f"({', '.join(missing)} missing). Download it once with `{command}`, or put a Diffusers Chroma folder "
            f"with the same name beside the file ({os.path.splitext(checkpoint)[0]}/model_index.json).")
    return folder


VARIANTS = {"": Chroma}
