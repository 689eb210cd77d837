"""Independent reference: ai-toolkit's FLUX.1 / Flex.1 / Kontext / Flex.2 / Chroma previews written out by hand.

Nothing here imports the pack; only torch, diffusers, transformers (and optimum-quanto for `quantize_like_aitk`).
Each function follows ai-toolkit 0.12.26 (27a03a91) as its code reads; the function relied on is cited in place.
Renders return the 8-bit pixels of the pipeline's PIL output, `round(np_output * 255)`, as uint8 `[H, W, 3]`
(`diffusers.image_processor.numpy_to_pil`). Seeds: `BaseModel.generate_images` / `StableDiffusion.generate_images`
call `torch.manual_seed(seed)` and pass that global CPU generator; a fresh `torch.Generator().manual_seed(seed)`
gives the same stream without touching the caller's RNG.
"""
from __future__ import annotations

import os

import numpy as np
import torch

# toolkit/sampler.py:flux_config; flux_kontext.py / flex2.py / chroma_model.py `scheduler_config` (same values)
FLUX_SCHEDULER_CONFIG = {
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
}
T5_TOKENS = 512  # encode_prompts_flux(max_length=512); ChromaModel.get_prompt_embeds max_length = 512


def _freeze(parts, dtype):
    for part in parts.values():
        if isinstance(part, torch.nn.Module):
            part.to(dtype=dtype)
            part.requires_grad_(False)
            part.eval()
    return parts


def load_parts(folder: str, model_id: str, dtype: torch.dtype = torch.float32) -> dict:
    """Components as ai-toolkit loads them: `from_pretrained(torch_dtype=dtype)` per subfolder, `.to(dtype)`,
    frozen, eval (`StableDiffusion.load_model` flux branch for flux/flex1 — `ModelConfig` maps arch flex1 to flux;
    `FluxKontextModel.load_model`; `Flex2.load_model`; `ChromaModel.load_model` takes T5 + VAE from a Diffusers-layout
    folder and the transformer from a BFL file, here the Diffusers transformer/ of the tiny folder). The folder's
    scheduler is never used for previews (each preview builds a fresh one)."""
    from diffusers import AutoencoderKL, ChromaTransformer2DModel, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    sub = lambda name: os.path.join(folder, name)  # noqa: E731
    kw = dict(torch_dtype=dtype, local_files_only=True)
    parts = {"model_id": model_id, "vae": AutoencoderKL.from_pretrained(sub("vae"), **kw)}
    if model_id == "chroma":
        parts["transformer"] = ChromaTransformer2DModel.from_pretrained(sub("transformer"), **kw)
        parts["text_encoder"] = T5EncoderModel.from_pretrained(sub("text_encoder"), **kw)
        parts["tokenizer"] = T5TokenizerFast.from_pretrained(sub("tokenizer"), local_files_only=True)
    else:
        parts["transformer"] = FluxTransformer2DModel.from_pretrained(sub("transformer"), **kw)
        parts["text_encoder"] = CLIPTextModel.from_pretrained(sub("text_encoder"), **kw)
        parts["tokenizer"] = CLIPTokenizer.from_pretrained(sub("tokenizer"), local_files_only=True)
        parts["text_encoder_2"] = T5EncoderModel.from_pretrained(sub("text_encoder_2"), **kw)
        parts["tokenizer_2"] = T5TokenizerFast.from_pretrained(sub("tokenizer_2"), local_files_only=True)
    return _freeze(parts, dtype)


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # CustomFlowMatchEulerDiscreteScheduler overrides no inference method (set_timesteps / step inherited)
    return FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER_CONFIG)


def _floor8(x: int) -> int:
    return max(64, x - x % 8)  # toolkit/config_modules.py:GenerateImageConfig.__init__


def _to_uint8(np_images) -> np.ndarray:
    return (np_images[0] * 255).round().astype("uint8")  # diffusers numpy_to_pil


# ----------------------------------------------------------------------------- LoRA: merge and side branch
def _merge(module, a, b, multiplier, scale=1.0):
    # toolkit/network_mixins.py:ToolkitModuleMixin.merge_in: fp32 up/down, `weight + multiplier * (up @ down) * scale`,
    # written back in the weight's dtype (one rounding) with `org_module.load_state_dict`, which copies into the
    # existing parameter (its memory, and so its address alignment for CPU kernels, stays the loader's)
    weight = module.weight
    merged = weight.float() + multiplier * (b.float() @ a.float()) * scale
    with torch.no_grad():
        module.weight.copy_(merged.to(weight.dtype))


def _peft_modules(state_dict, prefix="transformer."):
    return sorted(k[len(prefix):-len(".lora_A.weight")] for k in state_dict
                  if k.startswith(prefix) and k.endswith(".lora_A.weight"))


def merge_peft(parts: dict, state_dict: dict, multiplier: float = 1.0) -> int:
    """Merges a `transformer.<diffusers path>.lora_A/B` file (peft format: alpha = rank, scale 1.0) into the
    transformer as ai-toolkit's merged preview does. Returns the number of modules merged."""
    transformer = parts["transformer"]
    paths = _peft_modules(state_dict)
    for path in paths:
        _merge(transformer.get_submodule(path), state_dict[f"transformer.{path}.lora_A.weight"],
               state_dict[f"transformer.{path}.lora_B.weight"], multiplier)
    return len(paths)


_BFL_DOUBLE = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn.proj": ("attn.to_out.0",),
    "img_mlp.0": ("ff.net.0.proj",), "img_mlp.2": ("ff.net.2",), "img_mod.lin": ("norm1.linear",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "txt_attn.proj": ("attn.to_add_out",),
    "txt_mlp.0": ("ff_context.net.0.proj",), "txt_mlp.2": ("ff_context.net.2",),
    "txt_mod.lin": ("norm1_context.linear",),
}
_BFL_SINGLE = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear2": ("proj_out",),
               "modulation.lin": ("norm.linear",)}


def merge_bfl(parts: dict, state_dict: dict, multiplier: float = 1.0) -> int:
    """Merges a `diffusion_model.<BFL name>.lora_A/B` file (ai-toolkit's Chroma layout, `ChromaModel.
    convert_lora_weights_before_save`; FLUX.1 in BFL names) into the split Diffusers modules: ai-toolkit merges the
    fused delta `B @ A` into its fused qkv / linear1 (`chroma/src/model.py` Chroma) — the same rows, cut here onto
    to_q/to_k/to_v(/proj_mlp). Double-block img/txt_mod.lin and single-block modulation.lin (FLUX.1 only) map to
    norm1(_context).linear / norm.linear unsplit (same chunk order). Returns the number of Diffusers modules merged."""
    transformer = parts["transformer"]
    merged = 0
    for base in _peft_modules(state_dict, "diffusion_model."):
        kind, index, name = base.split(".", 2)
        block, table = (("transformer_blocks", _BFL_DOUBLE) if kind == "double_blocks"
                        else ("single_transformer_blocks", _BFL_SINGLE))
        if kind not in ("double_blocks", "single_blocks") or name not in table:
            raise KeyError(f"merge_bfl: unsupported module {base}")
        modules = [transformer.get_submodule(f"{block}.{index}.{p}") for p in table[name]]
        a = state_dict[f"diffusion_model.{base}.lora_A.weight"].float()
        b = state_dict[f"diffusion_model.{base}.lora_B.weight"].float()
        delta = multiplier * (b @ a) * 1.0
        for module, rows in zip(modules, torch.split(delta, [m.out_features for m in modules], dim=0)):
            with torch.no_grad():  # load_state_dict semantics: into the existing parameter (see _merge)
                module.weight.copy_((module.weight.float() + rows).to(module.weight.dtype))
            merged += 1
    return merged


class _Branch(torch.nn.Module):
    """toolkit/network_mixins.py:ToolkitModuleMixin.forward + _call_forward, unmerged: `org = org_forward(x)`;
    `lx = lora_up(lora_down(x.to(float32)))`; `lx * _runtime_scale` (fp32 0-dim, alpha/rank = 1.0); times
    `torch_multiplier` (fp32 `[m]`, broadcast); `org + lx.to(org.dtype)`. The network weights are fp32 and
    trainable (requires_grad True) in ai-toolkit; sampling runs under no_grad."""

    def __init__(self, org_forward, a, b, multiplier):
        super().__init__()
        self.org_forward = org_forward
        self.lora_down = torch.nn.Linear(a.shape[1], a.shape[0], bias=False)
        self.lora_up = torch.nn.Linear(b.shape[1], b.shape[0], bias=False)
        with torch.no_grad():
            self.lora_down.weight.copy_(a.float())
            self.lora_up.weight.copy_(b.float())
        self.register_buffer("scale", torch.tensor(1.0, dtype=torch.float32))
        self.register_buffer("multiplier", torch.tensor((multiplier,), dtype=torch.float32))

    def forward(self, x, *args, **kwargs):
        org = self.org_forward(x, *args, **kwargs)
        lx = self.lora_up(self.lora_down(x.to(torch.float32))) * self.scale
        m = self.multiplier
        for _ in range(lx.dim() - m.dim()):  # network_mixins.broadcast_and_multiply
            m = m.unsqueeze(-1)
        return org + (lx * m).to(org.dtype)


def branch_peft(parts: dict, state_dict: dict, multiplier: float = 1.0) -> int:
    """Wraps each targeted (possibly quanto-quantized) Linear with ai-toolkit's unmerged fp32 side branch, as the
    preview runs on a quantized base (`BaseSDTrainProcess.run`: `network.can_merge_in = False` when quantized, so
    `generate_images` never merges). ai-toolkit replaces `org_module.forward` (`LoRAModule.apply_to`); so does
    this. Returns the number of modules wrapped."""
    transformer = parts["transformer"]
    paths = _peft_modules(state_dict)
    for path in paths:
        module = transformer.get_submodule(path)
        branch = _Branch(module.forward, state_dict[f"transformer.{path}.lora_A.weight"],
                         state_dict[f"transformer.{path}.lora_B.weight"], multiplier)
        module._aitk_branch = branch  # keeps it alive and inspectable
        module.forward = branch.forward
    return len(paths)


def quantize_like_aitk(module: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """qfloat8 weights as `StableDiffusion.load_model` (flux branch) / `Flex2.load_model` / `ChromaModel.load_model`
    do it for the transformer and (quantize_te) the T5: cast to the train dtype, then `toolkit/util/quantize.py:
    quantize(module, weights=get_qtype('qfloat8'))` — with no include/exclude the same module walk as
    `optimum.quanto.quantize` — then `optimum.quanto.freeze`. No exclude list on these legacy paths."""
    from optimum.quanto import freeze, qfloat8, quantize

    module.to(dtype=dtype)
    quantize(module, weights=qfloat8)
    freeze(module)
    return module


# ----------------------------------------------------------------------------- prompts
def encode_flux(parts: dict, prompt: str, attn_masking: bool = False):
    """toolkit/train_tools.py:encode_prompts_flux(max_length=512): CLIP padded to its model_max_length (77),
    pooler_output; T5 padded/truncated to 512, no attention mask; `attn_masking` (StableDiffusion only, default
    False) multiplies the pad embeddings by 0. `generate_images` then casts both to the transformer dtype."""
    clip_tok, t5_tok = parts["tokenizer"], parts["tokenizer_2"]
    clip_ids = clip_tok([prompt], padding="max_length", max_length=clip_tok.model_max_length, truncation=True,
                        return_overflowing_tokens=False, return_length=False, return_tensors="pt").input_ids
    t5_in = t5_tok([prompt], padding="max_length", max_length=T5_TOKENS, truncation=True, return_length=False,
                   return_overflowing_tokens=False, return_tensors="pt")
    with torch.no_grad():
        pooled = parts["text_encoder"](clip_ids, output_hidden_states=False).pooler_output
        pooled = pooled.to(dtype=parts["text_encoder"].dtype)
        embeds = parts["text_encoder_2"](t5_in.input_ids, output_hidden_states=False)[0]
        embeds = embeds.to(dtype=parts["text_encoder_2"].dtype)
        if attn_masking:
            mask = t5_in["attention_mask"].unsqueeze(-1).expand(embeds.shape)
            embeds = embeds * mask.to(dtype=embeds.dtype)
    dtype = parts["transformer"].dtype
    return embeds.to(dtype), pooled.to(dtype)


def encode_chroma(parts: dict, prompt: str):
    """`ChromaModel.get_prompt_embeds`: T5 on the 512 padded ids WITHOUT a mask (diffusers passes the mask into T5);
    the mask keeps the real tokens plus one pad (`src/model.py:modify_mask_to_attend_padding(mask, 512, 1)`) and is
    BOOL (`Chroma.forward` builds a bool outer product; diffusers' float mask would be added to the logits)."""
    t5_in = parts["tokenizer"]([prompt], padding="max_length", max_length=T5_TOKENS, truncation=True,
                               return_length=False, return_overflowing_tokens=False, return_tensors="pt")
    with torch.no_grad():
        embeds = parts["text_encoder"](t5_in.input_ids, output_hidden_states=False)[0]
    n_tokens = int(t5_in["attention_mask"].sum())
    mask = (torch.arange(T5_TOKENS) <= n_tokens).unsqueeze(0)
    return embeds.to(parts["text_encoder"].dtype).to(parts["transformer"].dtype), mask


def _flux_pipe(parts, cls):
    pipe = cls(scheduler=_scheduler(), vae=parts["vae"], text_encoder=parts["text_encoder"],
               tokenizer=parts["tokenizer"], text_encoder_2=parts["text_encoder_2"], tokenizer_2=parts["tokenizer_2"],
               transformer=parts["transformer"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------- previews
def preview_flux(parts: dict, prompt: str, seed: int, steps: int, guidance: float, width: int, height: int,
                 attn_masking: bool = False) -> np.ndarray:
    """FLUX.1-dev / Flex.1-alpha (`StableDiffusion.generate_images`, is_flux): FluxPipeline with a fresh flowmatch
    scheduler (`get_sampler('flowmatch', arch='flux')`), prompt embeds only (the negative is encoded but its
    arguments are commented out: no true CFG), guidance only in the embedding, 8-floored size (FluxPipeline floors
    to 16 itself), the latents-dtype callback (a no-op), the global-generator stream."""
    from diffusers import FluxPipeline

    embeds, pooled = encode_flux(parts, prompt, attn_masking)
    dtype = parts["transformer"].dtype

    def callback_on_step_end(pipe, i, t, callback_kwargs):
        return {"latents": callback_kwargs["latents"].to(dtype)}

    out = _flux_pipe(parts, FluxPipeline)(
        prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=_floor8(height), width=_floor8(width),
        num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
        callback_on_step_end=callback_on_step_end, output_type="np")
    return _to_uint8(out.images)


def preview_kontext(parts: dict, prompt: str, control_pil, seed: int, steps: int, guidance: float, width: int,
                    height: int) -> np.ndarray:
    """`FluxKontextModel.generate_single_image`: control `.convert("RGB")`, PIL BILINEAR resize to the 8-floored
    size only if it differs, width/height floored to 16, `FluxKontextPipeline(image=, max_area=w*h,
    _auto_resize=False)` with a fresh `CustomFlowMatchEulerDiscreteScheduler(**scheduler_config)`; no negative."""
    from diffusers import FluxKontextPipeline
    from PIL import Image

    width, height = _floor8(width), _floor8(height)
    control = control_pil.convert("RGB")
    if control.size != (width, height):
        control = control.resize((width, height), Image.BILINEAR)
    width, height = width // 16 * 16, height // 16 * 16
    embeds, pooled = encode_flux(parts, prompt)
    out = _flux_pipe(parts, FluxKontextPipeline)(
        image=control, prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=height, width=width,
        num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
        max_area=height * width, _auto_resize=False, output_type="np")
    return _to_uint8(out.images)


def _pack(latents):  # FluxPipeline._pack_latents
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def preview_flex2(parts: dict, prompt: str, seed: int, steps: int, guidance: float, width: int, height: int,
                  control_pil=None, ctrl_idx: int = 1) -> np.ndarray:
    """`Flex2.generate_single_image` -> `extensions_built_in/flex2/pipeline.py:Flex2Pipeline.__call__`, by hand.

    16 latent channels (hard-coded `128 // 8`); per step the transformer sees `cat([latents(64), inpaint(68),
    control(64)])` on packed tokens, inpaint = zero latent + a mask of ONES, control = zeros unless a control image
    is given. The control (`FluxControlPipeline.prepare_image` -> `VaeImageProcessor(vae_scale_factor=16)`) is
    LANCZOS-resized to the 16-floored size, /255, 2x-1, made contiguous (`repeat_interleave`), VAE-encoded with
    `latent_dist.sample(generator)` BEFORE the noise is drawn, `(z - shift) * scale`, packed. `ctrl_idx` (sample
    item / `--ctrl_idx`, ai-toolkit default 0) must be 1 for an RGB control: at 0 it would replace the 68-wide
    inpaint slot and the 196-input x_embedder would fail."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from diffusers.utils.torch_utils import randn_tensor
    from PIL import Image

    transformer, vae = parts["transformer"], parts["vae"]
    width, height = _floor8(width), _floor8(height)  # GenerateImageConfig; Flex2 passes it on unchanged
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    generator = torch.Generator().manual_seed(seed)
    embeds, pooled = encode_flux(parts, prompt)
    text_ids = torch.zeros(embeds.shape[1], 3).to(dtype=parts["text_encoder"].dtype)  # FluxPipeline.encode_prompt
    with torch.no_grad():
        control = None
        if control_pil is not None:
            w16, h16 = width // (vae_scale * 2) * vae_scale * 2, height // (vae_scale * 2) * vae_scale * 2
            img = control_pil.convert("RGB").resize((w16, h16), Image.LANCZOS)
            x = torch.from_numpy((np.array(img).astype(np.float32) / 255.0)[None].transpose(0, 3, 1, 2))
            x = (2.0 * x - 1.0).contiguous().to(dtype=vae.dtype)
            z = vae.encode(x).latent_dist.sample(generator=generator)
            control = _pack((z - vae.config.shift_factor) * vae.config.scaling_factor)
        lh, lw = 2 * (height // (vae_scale * 2)), 2 * (width // (vae_scale * 2))  # FluxPipeline.prepare_latents
        latents = _pack(randn_tensor((1, 16, lh, lw), generator=generator, dtype=embeds.dtype))
        img_ids = torch.zeros(lh // 2, lw // 2, 3)
        img_ids[..., 1] += torch.arange(lh // 2)[:, None]
        img_ids[..., 2] += torch.arange(lw // 2)[None, :]
        img_ids = img_ids.reshape(-1, 3).to(dtype=embeds.dtype)

        scheduler = _scheduler()
        mu = calculate_shift(latents.shape[1], 256, 4096, 0.5, 1.15)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        guidance_t = None
        if transformer.config.guidance_embeds:
            guidance_t = torch.full([1], guidance, dtype=torch.float32).expand(1)
        for t in scheduler.timesteps:
            slots = [torch.cat([torch.zeros_like(latents), torch.ones_like(latents[:, :, :4])], dim=2),
                     torch.zeros_like(latents)]
            if control is not None:
                slots[ctrl_idx] = control
            noise_pred = transformer(
                hidden_states=torch.cat([latents] + slots, dim=2), timestep=t.expand(1).to(latents.dtype) / 1000,
                guidance=guidance_t, pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                img_ids=img_ids, joint_attention_kwargs=None, return_dict=False)[0]
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        # FluxPipeline._unpack_latents, then VaeImageProcessor.postprocess (denormalize in the decode dtype)
        b, _, c = latents.shape
        latents = latents.view(b, lh // 2, lw // 2, c // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c // 4, lh, lw)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents, return_dict=False)[0]
        image = (image * 0.5 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    return _to_uint8(image)


def preview_chroma(parts: dict, prompt: str, negative: str, seed: int, steps: int, guidance: float, width: int,
                   height: int) -> np.ndarray:
    """`ChromaModel.generate_single_image` through Diffusers' ChromaPipeline (flow-families "Chroma", last recipe):
    the approximator RMSNorms get eps 1e-6 (`chroma/src/layers.py:RMSNorm`, diffusers uses finfo.eps); prompts
    encoded by `encode_chroma` (T5 unmasked, bool mask of real tokens + 1 pad); true CFG iff guidance > 1.00001
    (`chroma/pipeline.py:ChromaPipeline.__call__`; diffusers' own test is `> 1`), else guidance 1.0 (no negative
    pass); fresh flowmatch scheduler; 8-floored size (the pipeline floors to 16)."""
    from diffusers import ChromaPipeline

    for norm in parts["transformer"].distilled_guidance_layer.norms:
        norm.eps = 1e-6
    embeds, mask = encode_chroma(parts, prompt)
    kwargs = dict(prompt_embeds=embeds, prompt_attention_mask=mask)
    if guidance > 1.00001:
        neg_embeds, neg_mask = encode_chroma(parts, negative)
        kwargs.update(negative_prompt_embeds=neg_embeds, negative_prompt_attention_mask=neg_mask,
                      guidance_scale=guidance)
    else:
        kwargs["guidance_scale"] = 1.0
    pipe = ChromaPipeline(scheduler=_scheduler(), vae=parts["vae"], text_encoder=parts["text_encoder"],
                          tokenizer=parts["tokenizer"], transformer=parts["transformer"])
    pipe.set_progress_bar_config(disable=True)
    out = pipe(height=_floor8(height), width=_floor8(width), num_inference_steps=steps,
               generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs)
    return _to_uint8(out.images)
