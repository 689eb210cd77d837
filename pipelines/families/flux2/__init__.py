"""FLUX.2-dev and FLUX.2-klein-base 4B / 9B: previews as ai-toolkit renders them, in our own BFL-layout model.

What ai-toolkit 0.12.26 (27a03a91) does (`extensions_built_in/diffusion_models/flux2/`: `flux2_model.py:Flux2Model`,
`flux2_klein_model.py:Flux2Klein4BModel/Flux2Klein9BModel`, `src/pipeline.py:Flux2Pipeline`, `src/model.py:Flux2`,
`src/autoencoder.py:AutoEncoder`, `src/sampling.py`), and so what this does:
- it loads the BFL single files into its own BFL-layout model and VAE and samples with its own pipeline (the
  Diffusers scheduler it builds is unused; `sample.sampler` is ignored). Diffusers' `Flux2Transformer2DModel` and
  `AutoencoderKLFlux2` give the same pixels in fp32 but not in bf16 (split q/k/v, other attention code), so this
  package runs its own modules in the BFL layout (`model.py`, `autoencoder.py`) and its own loop (`sampling.py`):
  a Diffusers folder's weights are renamed into that layout exactly (`convert.py`);
- `generate_single_image`: sizes (8-floored by `GenerateImageConfig`) floored to 16; klein (not guidance-distilled)
  passes the encoded negative for true CFG when guidance > 1; dev passes none and feeds guidance to the
  distilled guidance embedding; `ctrl_img_1..3` become reference images (optional, up to three);
- LoRA (`target_lora_modules = ["Flux2"]`, blocks `double_blocks`/`single_blocks`): files are `diffusion_model.` +
  the BFL names of the fused layers (`convert_lora_weights_before_save`), merged into those fused weights as
  `network_mixins.py:merge_in` does; on a quantized base the LoRA is an fp32 side branch (generic LoRA engine).
  Diffusers names (`transformer.transformer_blocks.N.attn.to_q` …) apply to their rows of the fused layers.
- quantization (`quantize_model`: the `double_blocks` and `single_blocks` one by one, then the rest, every
  Linear, no exclusions; `quantize_te` with `qtype_te` for klein, `qtype` for dev): the preset's qfloat8.
"""
from __future__ import annotations

import os

import torch

from ...errors import ModelSourceError
from ...lora.aliases import Alias
from ..base import Family
from ..common import prepare_components, quantize_components, source_folder
from . import loading, sampling
from .model import Flux2Params, Flux2Transformer  # noqa: F401  (re-exported)

# Diffusers Flux2Transformer2DModel paths → (BFL layer, which of its row blocks) for LoRA files in Diffusers names
_DOUBLE_SPLIT = {"attn.to_q": ("img_attn.qkv", 0, 3), "attn.to_k": ("img_attn.qkv", 1, 3),
                 "attn.to_v": ("img_attn.qkv", 2, 3), "attn.add_q_proj": ("txt_attn.qkv", 0, 3),
                 "attn.add_k_proj": ("txt_attn.qkv", 1, 3), "attn.add_v_proj": ("txt_attn.qkv", 2, 3)}
_DOUBLE_SAME = {"attn.to_out.0": "img_attn.proj", "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2",
                "attn.to_add_out": "txt_attn.proj", "ff_context.linear_in": "txt_mlp.0",
                "ff_context.linear_out": "txt_mlp.2"}
_SINGLE_SAME = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2"}


class Flux2Klein(Family):
    """FLUX.2-klein-base 4B / 9B (Qwen3 text encoder, true CFG with the negative)."""
    lora_component_names = ("transformer",)
    text_encoder_type = "qwen"
    guidance_distilled = False
    #: the parts ai-toolkit takes for a BFL transformer file (flux2_klein_model.py class attributes)
    vae_repo = "ai-toolkit/flux2_vae"
    te_repos = {"flux2_klein_4b": "Qwen/Qwen3-4B", "flux2_klein_9b": "Qwen/Qwen3-8B"}

    # ---- loading -------------------------------------------------------------------------------------------
    def load(self, spec, source, dtype, device, quantization=None):
        label = os.path.basename(source.location)
        if source.kind == "single_file":
            parts = loading.from_transformer_file(source.location, self.text_encoder_type, self._vae_repo(spec),
                                                  self.te_repos[spec.id], dtype)
        else:
            parts = loading.from_folder(source_folder(source), label, self.text_encoder_type, dtype)
        self._check_kind(spec, parts.transformer, label)
        prepare_components(parts, label, spec, dtype, device)
        quantize_components(parts, spec, quantization, dtype)
        return parts

    def _vae_repo(self, spec):
        return self.vae_repo

    def _check_kind(self, spec, transformer, label):
        if transformer.params.use_guidance_embed != self.guidance_distilled:
            other = "FLUX.2-dev (model flux2)" if transformer.params.use_guidance_embed else \
                "a FLUX.2-klein base (model flux2_klein_4b or flux2_klein_9b)"
            raise ModelSourceError(f"{label}: its transformer {'has' if transformer.params.use_guidance_embed else 'has no'}"
                                   f" guidance embedding, so it is {other}, not {spec.label}. Pick that model id.")

    # ---- LoRA names ----------------------------------------------------------------------------------------
    def module_names(self, spec, component, module):
        names = super().module_names(spec, component, module)  # the BFL names (ai-toolkit's files)
        if component != "transformer":
            return names
        dim = module.params.hidden_size
        for i in range(len(module.double_blocks)):
            for path, (bfl, block, n) in _DOUBLE_SPLIT.items():
                rows = slice(block * dim, (block + 1) * dim)
                names.setdefault(f"transformer_blocks.{i}.{path}",
                                 (Alias(component, f"double_blocks.{i}.{bfl}", into=rows),))
            for path, bfl in _DOUBLE_SAME.items():
                names.setdefault(f"transformer_blocks.{i}.{path}", (Alias(component, f"double_blocks.{i}.{bfl}"),))
        for i in range(len(module.single_blocks)):
            for path, bfl in _SINGLE_SAME.items():
                names.setdefault(f"single_transformer_blocks.{i}.{path}",
                                 (Alias(component, f"single_blocks.{i}.{bfl}"),))
        return names

    # ---- sampling ------------------------------------------------------------------------------------------
    def check_request(self, spec, request) -> None:
        super().check_request(spec, request)
        for index, image in enumerate(request.controls):
            if image is not None:
                sampling.prepare_reference(image, index)  # too small / too wide: refused before anything runs

    def generate(self, spec, pipe, request, sampler=None, on_step=None):
        self.scheduler(spec, sampler)  # refuses another sampler; ai-toolkit's FLUX.2 pipeline has its own Euler loop
        transformer = pipe.transformer
        dtype = transformer.dtype  # BaseModel.generate_images casts the embeds to the model's dtype
        width, height = request.width // 16 * 16, request.height // 16 * 16  # get_bucket_divisibility() 16
        guidance = float(spec.guidance.pipeline_value(request.guidance_scale))
        cfg = not self.guidance_distilled and guidance > spec.guidance.threshold
        refs = [c for c in request.controls if c is not None]
        with torch.no_grad():
            cond = sampling.encode_prompt(pipe, request.prompt, pipe.text_encoder_type, dtype)
            uncond = sampling.encode_prompt(pipe, request.negative_prompt or "", pipe.text_encoder_type, dtype) \
                if cfg else None
            return sampling.sample(transformer, pipe.vae, cond.to(transformer.device),
                                   None if uncond is None else uncond.to(transformer.device), width=width,
                                   height=height, steps=request.steps, guidance=guidance, seed=request.seed, cfg=cfg,
                                   references=refs, on_step=on_step)

    def preview_latents(self, spec, latents, request):
        """Packed tokens [1, h·w, 128] → [32, 2h, 2w] (the 2×2 patches unfolded; no batch-norm inverse)."""
        if latents is None or latents.ndim != 3 or request is None:
            return super().preview_latents(spec, latents, request)
        h, w = request.height // 16, request.width // 16
        if latents.shape[1] < h * w:
            return None
        z = sampling.unpack(latents[:1, : h * w], h, w)[0]
        c = z.shape[0] // 4
        return z.reshape(c, 2, 2, h, w).permute(0, 3, 1, 4, 2).reshape(c, h * 2, w * 2)


class Flux2Dev(Flux2Klein):
    """FLUX.2-dev (Mistral3 text encoder, guidance embedding, no negative)."""
    text_encoder_type = "mistral"
    guidance_distilled = True
    te_repos = {"flux2": "mistralai/Mistral-Small-3.1-24B-Instruct-2503"}

    def _vae_repo(self, spec):
        return spec.base_repo  # Flux2Model: flux2_vae_path None → ae.safetensors of the model's own repo


VARIANTS = {"klein": Flux2Klein, "dev": Flux2Dev}
