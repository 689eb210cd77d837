"""Independent reference: ai-toolkit's Qwen-Image / -2512 / -Edit / -Edit-2509 / -Edit-2511 previews, by hand.

Nothing here imports the pack; only torch, diffusers (the scheduler, the VAE, `VaeImageProcessor`), transformers
(the text encoder, tokenizer, processor) and optimum-quanto (qfloat8). Prompt encoding, control-image preparation,
the denoise loop and the decode are written out from ai-toolkit 0.12.26 (27a03a91,
`extensions_built_in/diffusion_models/qwen_image/`) and the Diffusers 0.42.1 code it calls; the function relied on is
cited in place. Renders return the 8-bit pixels `round(np_output * 255)` as uint8 [H, W, 3].

The control-image areas are module constants here (`VL_AREA_EDIT`, `VL_AREA_PLUS`, `VAE_AREA`): tests that shrink
them for speed set the pack's constants of the same names to the same values.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

# qwen_image.py:scheduler_config
SCHEDULER_CONFIG = {
    "base_image_seq_len": 256, "base_shift": 0.5, "invert_sigmas": False, "max_image_seq_len": 8192,
    "max_shift": 0.9, "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.02,
    "stochastic_sampling": False, "time_shift_type": "exponential", "use_beta_sigmas": False,
    "use_dynamic_shifting": True, "use_exponential_sigmas": False, "use_karras_sigmas": False,
}
# Diffusers' QwenImagePipeline / QwenImageEditPipeline / QwenImageEditPlusPipeline templates and start indices
_SYSTEM_T2I = ("Describe the image by detailing the color, shape, size, texture, quantity, text, spatial "
               "relationships of the objects and background:")
_SYSTEM_EDIT = ("Describe the key features of the input image (color, shape, size, texture, objects, background), "
                "then explain how the user's text instruction should alter or modify the image. Generate a new "
                "image that meets the user's requirements while maintaining consistency with the original input "
                "where appropriate.")
_VISION = "<|vision_start|><|image_pad|><|vision_end|>"
T2I_DROP, EDIT_DROP = 34, 64
VL_AREA_EDIT = 1024 * 1024   # QwenImageEditModel.get_prompt_embeds (target_area)
VL_AREA_PLUS = 384 * 384     # diffusers CONDITION_IMAGE_SIZE, used by QwenImageEditPlusModel.get_prompt_embeds
VAE_AREA = 1024 * 1024       # diffusers VAE_IMAGE_SIZE / QwenImageEditPipeline's calculate_dimensions(1024 * 1024)


def _template(system: str, user: str) -> str:
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def load_parts(folder: str, dtype: torch.dtype, edit: bool) -> dict:
    """`QwenImageModel.load_model` on a full folder: per subfolder `from_pretrained(torch_dtype=dtype)`, the text
    encoder's vision tower set to None unless it is an edit model (which also loads `processor/`), frozen, eval."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLProcessor

    sub = lambda name: os.path.join(folder, name)  # noqa: E731
    kw = dict(torch_dtype=dtype, local_files_only=True)
    parts = dict(transformer=QwenImageTransformer2DModel.from_pretrained(sub("transformer"), **kw),
                 text_encoder=Qwen2_5_VLForConditionalGeneration.from_pretrained(sub("text_encoder"), **kw),
                 tokenizer=Qwen2Tokenizer.from_pretrained(sub("tokenizer"), local_files_only=True),
                 vae=AutoencoderKLQwenImage.from_pretrained(sub("vae"), **kw))
    if edit:
        parts["processor"] = Qwen2VLProcessor.from_pretrained(sub("processor"), local_files_only=True)
    else:
        parts["text_encoder"].model.visual = None
    for part in parts.values():
        if isinstance(part, torch.nn.Module):
            part.to(dtype=dtype)
            part.requires_grad_(False)
            part.eval()
    return parts


# ----------------------------------------------------------------------------- LoRA
def _lora_paths(state_dict):
    return sorted(k[len("diffusion_model."):-len(".lora_A.weight")] for k in state_dict if k.endswith(".lora_A.weight"))


def merge_lora(parts: dict, state_dict: dict, multiplier: float = 1.0) -> int:
    """ai-toolkit's merged preview (`ToolkitModuleMixin.merge_in`, peft format: scale 1):
    `W' = (W.float() + m * (B.float() @ A.float())).to(W.dtype)`, copied into the parameter. Returns the count."""
    paths = _lora_paths(state_dict)
    for path in paths:
        module = parts["transformer"].get_submodule(path)
        a, b = state_dict[f"diffusion_model.{path}.lora_A.weight"], state_dict[f"diffusion_model.{path}.lora_B.weight"]
        merged = module.weight.float() + multiplier * (b.float() @ a.float()) * 1.0
        with torch.no_grad():
            module.weight.copy_(merged.to(module.weight.dtype))
    return len(paths)


def branch_lora(parts: dict, state_dict: dict, multiplier: float = 1.0) -> int:
    """The unmerged fp32 side branch ai-toolkit runs on a quantized base (`ToolkitModuleMixin.forward`):
    `org(x) + (up(down(x.float())) * 1.0 * [m]).to(org dtype)`, with trainable fp32 `nn.Linear` up/down as ai-toolkit
    holds them (tests/reference_flux.py `_Branch`, written from the same code)."""
    from tests.reference_flux import _Branch

    paths = _lora_paths(state_dict)
    for path in paths:
        module = parts["transformer"].get_submodule(path)
        branch = _Branch(module.forward, state_dict[f"diffusion_model.{path}.lora_A.weight"],
                         state_dict[f"diffusion_model.{path}.lora_B.weight"], multiplier)
        module._aitk_branch = branch
        module.forward = branch.forward
    return len(paths)


def _quantize(model, qtype) -> None:
    """`toolkit/util/quantize.py:quantize` with no include/exclude: every `named_modules()` entry that is not
    already a quanto module goes through `optimum.quanto.quantize._quantize_submodule`; then `freeze`."""
    from optimum.quanto import QModuleMixin, freeze
    from optimum.quanto.quantize import _quantize_submodule

    for name, module in list(model.named_modules()):
        if name and not isinstance(module, QModuleMixin):
            _quantize_submodule(model, name, module, weights=qtype, activations=None, optimizer=None)
    freeze(model)


def quantize_qfloat8(parts: dict, dtype: torch.dtype) -> None:
    """`quantize_model` (QwenImageModel: each of `transformer_blocks`, then the whole transformer, no exclusions)
    and `quantize(text_encoder, weights=qfloat8)` + `freeze` (load_model, `quantize_te`), after the cast."""
    from optimum.quanto import qfloat8

    transformer = parts["transformer"].to(dtype=dtype)
    for block in transformer.transformer_blocks:
        _quantize(block, qfloat8)
    _quantize(transformer, qfloat8)
    _quantize(parts["text_encoder"].to(dtype=dtype), qfloat8)


# ----------------------------------------------------------------------------- prompts
def _hidden(parts, inputs, drop: int):
    te = parts["text_encoder"]
    with torch.no_grad():
        out = te(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                 pixel_values=inputs.get("pixel_values"), image_grid_thw=inputs.get("image_grid_thw"),
                 output_hidden_states=True)
    hidden = out.hidden_states[-1][0][inputs["attention_mask"][0].bool()][drop:]
    return hidden.unsqueeze(0).to(te.dtype)


def encode_t2i(parts, prompt: str) -> torch.Tensor:
    """`QwenImagePipeline._get_qwen_prompt_embeds`: template, tokens up to 1024 + 34, last hidden state, the 34
    template tokens dropped; `encode_prompt` keeps 1024, `__call__` 512; cast to the transformer dtype."""
    tokens = parts["tokenizer"]([_template(_SYSTEM_T2I, prompt)], max_length=1024 + T2I_DROP, padding=True,
                                truncation=True, return_tensors="pt")
    embeds = _hidden(parts, tokens, T2I_DROP)[:, :1024][:, :512]
    return embeds.to(parts["transformer"].dtype)


def _to_tensor(pil, dtype):
    """torchvision `TF.to_tensor(pil).unsqueeze(0).to(dtype)` (BaseModel.generate_images), written out."""
    array = np.asarray(pil.convert("RGB"), dtype=np.uint8)
    return (torch.tensor(array).permute(2, 0, 1).float() / 255.0).unsqueeze(0).to(dtype)


def _vl_resize(tensor, area):
    ratio = tensor.shape[2] / tensor.shape[3]
    h = math.sqrt(area * ratio)
    w = h / ratio
    return F.interpolate(tensor, size=(round(h / 32) * 32, round(w / 32) * 32), mode="bilinear")


def encode_edit(parts, prompt: str, image) -> torch.Tensor:
    """`QwenImageEditPipeline._get_qwen_prompt_embeds` with one image tensor, 64 tokens dropped."""
    inputs = parts["processor"](text=[_template(_SYSTEM_EDIT, _VISION + prompt)], images=image, padding=True,
                                return_tensors="pt")
    return _hidden(parts, inputs, EDIT_DROP).to(parts["transformer"].dtype)


def encode_plus(parts, prompt: str, images: list) -> torch.Tensor:
    """`QwenImageEditPlusPipeline._get_qwen_prompt_embeds`: "Picture i: <vision>" per image, 64 tokens dropped."""
    user = "".join(f"Picture {i + 1}: {_VISION}" for i in range(len(images))) + prompt
    inputs = parts["processor"](text=[_template(_SYSTEM_EDIT, user)], images=images, padding=True,
                                return_tensors="pt")
    return _hidden(parts, inputs, EDIT_DROP).to(parts["transformer"].dtype)


# ----------------------------------------------------------------------------- sampling
def _dims(area, ratio):  # diffusers calculate_dimensions (ratio = W/H) -> (w, h)
    w = math.sqrt(area * ratio)
    h = w / ratio
    return round(w / 32) * 32, round(h / 32) * 32


def _pack(z):  # [1, 16, 1, h, w] -> [1, h/2 * w/2, 64]
    b, c, _, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _vae_tokens(parts, pixels, dtype):
    """`_encode_vae_image`: `vae.encode(x).latent_dist.mode()` (argmax), `(z - mean) / std`, packed."""
    vae = parts["vae"]
    with torch.no_grad():
        z = vae.encode(pixels.unsqueeze(2).to(dtype)).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1).to(z.dtype)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1).to(z.dtype)
    return _pack((z - mean) / std)


def _denoise(parts, embeds, neg, seed, steps, guidance, width, height, controls=(), norm=True):
    """The shared loop of QwenImagePipeline / QwenImageEditPipeline / QwenImageEditPlusCustomPipeline `__call__`:
    noise in the embeds' dtype from a CPU generator, flowmatch with sigmas linspace(1, 1/n, n) and mu from the output
    tokens, true CFG iff guidance > 1 (with the norm rescale when `norm`), decode. `controls`: [(packed tokens,
    (lat_h/2, lat_w/2))]."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.image_processor import VaeImageProcessor

    transformer, vae = parts["transformer"], parts["vae"]
    dtype = embeds.dtype
    lh, lw = height // 8, width // 8
    noise = torch.randn((1, 1, 16, lh, lw), generator=torch.Generator().manual_seed(seed), dtype=dtype)
    latents = _pack(noise.permute(0, 2, 1, 3, 4))
    img_shapes = [[(1, lh // 2, lw // 2), *[shape for _, shape in controls]]]
    cond = torch.cat([t for t, _ in controls], dim=1) if controls else None
    c = SCHEDULER_CONFIG
    m = (c["max_shift"] - c["base_shift"]) / (c["max_image_seq_len"] - c["base_image_seq_len"])
    mu = latents.shape[1] * m + (c["base_shift"] - m * c["base_image_seq_len"])
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    scheduler.set_begin_index(0)
    n = latents.shape[1]
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = latents if cond is None else torch.cat([latents, cond], dim=1)
            ts = t.expand(1).to(dtype) / 1000
            pos = transformer(hidden_states=x, timestep=ts, guidance=None, encoder_hidden_states_mask=None,
                              encoder_hidden_states=embeds, img_shapes=img_shapes, attention_kwargs={},
                              return_dict=False)[0][:, :n]
            if guidance > 1:
                negp = transformer(hidden_states=x, timestep=ts, guidance=None, encoder_hidden_states_mask=None,
                                   encoder_hidden_states=neg, img_shapes=img_shapes, attention_kwargs={},
                                   return_dict=False)[0][:, :n]
                comb = negp + guidance * (pos - negp)
                if norm:
                    comb = comb * (torch.norm(pos, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
                pos = comb
            latents = scheduler.step(pos, t, latents, return_dict=False)[0]
        z = latents.view(1, lh // 2, lw // 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, 1, lh, lw)
        z = z.to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1).to(z.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1).to(z.dtype)
        image = vae.decode(z / inv_std + mean, return_dict=False)[0][:, :, 0]
    out = VaeImageProcessor(vae_scale_factor=16).postprocess(image, output_type="np")
    return (out[0] * 255).round().astype("uint8")


def _size(width, height):
    """`GenerateImageConfig` 8-floor (min 64), then `generate_single_image`'s floor to 32."""
    return max(64, width - width % 8) // 32 * 32, max(64, height - height % 8) // 32 * 32


def preview_t2i(parts, prompt, negative, seed, steps, guidance, width, height):
    """QwenImageModel.generate_single_image: stock QwenImagePipeline maths (norm rescale always)."""
    width, height = _size(width, height)
    embeds = encode_t2i(parts, prompt)
    neg = encode_t2i(parts, negative)
    return _denoise(parts, embeds, neg, seed, steps, guidance, width, height, norm=True)


def preview_edit(parts, prompt, negative, control, seed, steps, guidance, width, height):
    """QwenImageEditModel: VL side bilinear 1024² area of the raw control (same tensor for the negative); VAE side
    the control BILINEAR-resized to the output size, then LANCZOS to the 1024² area of that ratio; norm rescale."""
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image

    width, height = _size(width, height)
    dtype = parts["transformer"].dtype
    tensor = _vl_resize(_to_tensor(control, dtype), VL_AREA_EDIT)
    embeds, neg = encode_edit(parts, prompt, tensor), encode_edit(parts, negative, tensor)
    image = control.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    vw, vh = _dims(VAE_AREA, width / height)
    processor = VaeImageProcessor(vae_scale_factor=16)
    pixels = processor.preprocess(processor.resize(image, vh, vw), vh, vw)
    controls = [(_vae_tokens(parts, pixels, embeds.dtype), (1, vh // 16, vw // 16))]
    return _denoise(parts, embeds, neg, seed, steps, guidance, width, height, controls, norm=True)


def preview_plus(parts, prompt, negative, controls, seed, steps, guidance, width, height, do_cfg_norm=False,
                 legacy_ctrl_img=False):
    """QwenImageEditPlusModel + QwenImageEditPlusCustomPipeline: VL side bilinear 384² area per image (the negative
    re-resizes the resized tensors), VAE side LANCZOS 1024² area per image at its own ratio; no norm rescale unless
    do_cfg_norm. `legacy_ctrl_img`: the sample names its first image `ctrl_img`, so `generate_images` lists it as
    ctrl_img and as the ctrl_img_1 copied from it for the VL encoder; `generate_single_image` once for the VAE."""
    from diffusers.image_processor import VaeImageProcessor

    width, height = _size(width, height)
    dtype = parts["transformer"].dtype
    vl_controls = [controls[0], *controls] if legacy_ctrl_img else controls
    tensors = [_vl_resize(_to_tensor(c, dtype), VL_AREA_PLUS) for c in vl_controls]
    embeds = encode_plus(parts, prompt, list(tensors))
    neg = encode_plus(parts, negative, [_vl_resize(t, VL_AREA_PLUS) for t in tensors])
    processor = VaeImageProcessor(vae_scale_factor=16)
    tokens = []
    for c in controls:
        vw, vh = _dims(VAE_AREA, c.size[0] / c.size[1])
        tokens.append((_vae_tokens(parts, processor.preprocess(c.convert("RGB"), vh, vw), embeds.dtype),
                       (1, vh // 16, vw // 16)))
    return _denoise(parts, embeds, neg, seed, steps, guidance, width, height, tokens, norm=do_cfg_norm)
