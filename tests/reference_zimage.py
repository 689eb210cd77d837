"""Independent reference: ai-toolkit's Z-Image previews written out by hand (never the pack's code).

Only torch, diffusers, transformers (and optimum-quanto for `quantize_like_aitk`). Each step follows ai-toolkit
0.12.26 (27a03a91) `extensions_built_in/diffusion_models/z_image/z_image.py:ZImageModel` as its code reads, with the
function relied on named in place. Renders return the 8-bit pixels of the pipeline's PIL output,
`round(np_output * 255)`, as uint8 `[H, W, 3]`.
"""
from __future__ import annotations

import os

import numpy as np
import torch

MAX_TOKENS = 512  # ZImagePipeline.encode_prompt default max_sequence_length, which get_prompt_embeds keeps
QUANT_EXCLUDE = ("t_embedder*", "cap_embedder*", "all_x_embedder*", "all_final_layer*", "siglip_embedder*")


def load_parts(folder: str, dtype=torch.float32, transformer_folder: str | None = None) -> dict:
    """`ZImageModel.load_model`: each part `from_pretrained(torch_dtype=dtype)`, moved to the dtype, frozen.
    `transformer_folder`: the De-Turbo preset takes the transformer from its own repo, the rest from the extras."""
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import AutoModel, AutoTokenizer

    kw = dict(torch_dtype=dtype, local_files_only=True)
    parts = {
        "transformer": ZImageTransformer2DModel.from_pretrained(os.path.join(transformer_folder or folder,
                                                                             "transformer"), **kw),
        "text_encoder": AutoModel.from_pretrained(os.path.join(folder, "text_encoder"), **kw),
        "tokenizer": AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer"), local_files_only=True),
        "vae": AutoencoderKL.from_pretrained(os.path.join(folder, "vae"), **kw),
    }
    for part in parts.values():
        if isinstance(part, torch.nn.Module):
            part.to(dtype=dtype)
            part.requires_grad_(False)
            part.eval()
    return parts


def encode(parts: dict, prompt: str) -> list:
    """`get_prompt_embeds` → `ZImagePipeline.encode_prompt(prompt, do_classifier_free_guidance=False)` by hand:
    chat template, 512 tokens with the template, `hidden_states[-2]`, the padding rows dropped; then
    `generate_images` casts the embeds to the transformer's dtype."""
    tok, te = parts["tokenizer"], parts["text_encoder"]
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True,
                                   enable_thinking=True)
    ids = tok([text], padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    mask = ids.attention_mask.bool()
    with torch.no_grad():
        hidden = te(input_ids=ids.input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
    return [hidden[0][mask[0]].to(parts["transformer"].dtype)]


def scheduler(shift: float = 3.0, dynamic: bool = False):
    from diffusers import FlowMatchEulerDiscreteScheduler

    # ZImageModel.get_train_scheduler: CustomFlowMatchEulerDiscreteScheduler(**scheduler_config), whose inference
    # methods are FlowMatchEulerDiscreteScheduler's
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, use_dynamic_shifting=dynamic, shift=shift)


def preview(parts: dict, prompt: str, negative: str, seed: int, steps: int, cfg: float, width: int, height: int,
            guidance: float | None = None, sched=None) -> np.ndarray:
    """`generate_images` + `generate_single_image`: sizes `max(64, x - x % 8)` then `// 16 * 16`, guidance
    `max(0, cfg - 1)` (or `guidance` as given: the stock meaning), the seeded CPU generator."""
    from diffusers import ZImagePipeline

    width, height = (max(64, x - x % 8) // 16 * 16 for x in (width, height))
    pipe = ZImagePipeline(scheduler=sched or scheduler(), vae=parts["vae"], text_encoder=parts["text_encoder"],
                          tokenizer=parts["tokenizer"], transformer=parts["transformer"])
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = pipe(prompt_embeds=encode(parts, prompt), negative_prompt_embeds=encode(parts, negative),
                   height=height, width=width, num_inference_steps=steps,
                   guidance_scale=max(0.0, cfg - 1.0) if guidance is None else guidance,
                   generator=torch.Generator().manual_seed(seed), output_type="np").images
    return (out[0] * 255).round().astype("uint8")


def _modules(state_dict: dict) -> list[str]:
    return sorted(k[len("diffusion_model."):-len(".lora_A.weight")] for k in state_dict if k.endswith(".lora_A.weight"))


def merge(parts: dict, state_dict: dict, multiplier: float = 1.0, lora_dtype=None) -> int:
    """`ToolkitModuleMixin.merge_in`: `(W.float() + m * (B.float() @ A.float()) * 1.0).to(W.dtype)` (peft: alpha =
    rank). `lora_dtype`: the LoRA weights are first held in that dtype (the training adapter: `force_to(device,
    dtype)`). Returns the number of modules merged."""
    transformer = parts["transformer"]
    names = _modules(state_dict)
    with torch.no_grad():
        for name in names:
            a, b = state_dict[f"diffusion_model.{name}.lora_A.weight"], state_dict[f"diffusion_model.{name}.lora_B.weight"]
            if lora_dtype is not None:
                a, b = a.to(lora_dtype), b.to(lora_dtype)
            layer = transformer.get_submodule(name)
            merged = layer.weight.float() + multiplier * (b.float() @ a.float()) * 1.0
            layer.weight.copy_(merged.to(layer.weight.dtype))
    return len(names)


def branch(parts: dict, state_dict: dict, multiplier: float, dtype=torch.float32) -> int:
    """`ToolkitModuleMixin.forward` unmerged: `out + ((up(down(x.to(d))) * scale) * multiplier).to(out.dtype)`, the
    network in `d` (a trained LoRA: fp32; the training adapter: the model dtype, scale and multiplier included).
    A forward hook per module; hooks added later wrap the earlier ones' result, as a later network's forward does."""
    transformer = parts["transformer"]
    names = _modules(state_dict)
    for name in names:
        a = state_dict[f"diffusion_model.{name}.lora_A.weight"]
        b = state_dict[f"diffusion_model.{name}.lora_B.weight"]
        down = torch.nn.Linear(a.shape[1], a.shape[0], bias=False).to(dtype)
        up = torch.nn.Linear(b.shape[1], b.shape[0], bias=False).to(dtype)
        with torch.no_grad():
            down.weight.copy_(a)
            up.weight.copy_(b)
        scale = torch.tensor(1.0, dtype=dtype)
        mult = torch.tensor([multiplier], dtype=dtype)

        def hook(_module, inputs, output, down=down, up=up, scale=scale, mult=mult):
            lora = up(down(inputs[0].to(dtype))) * scale
            return output + (lora * mult).to(output.dtype)
        transformer.get_submodule(name).register_forward_hook(hook)
    return len(names)


def quantize_like_aitk(parts: dict) -> None:
    """qfloat8 as ai-toolkit quantizes Z-Image: the transformer's `layers` one by one (`OstrisModelMixin.quantize_`,
    no exclusions), then every other module but `get_quantization_exclude_modules()`, skipping quantized ones; the
    whole text encoder (`quantize_te`). optimum-quanto's `quantize_module` + `freeze` on each."""
    from fnmatch import fnmatch

    from optimum import quanto

    def quantize(root, exclude=()):
        for name, module in list(root.named_modules()):
            if not name or isinstance(module, quanto.QModuleMixin) or any(fnmatch(name, p) for p in exclude):
                continue
            qmodule = quanto.quantize_module(module, weights=quanto.qfloat8)
            if qmodule is not None:
                parent, _, leaf = name.rpartition(".")
                setattr(root.get_submodule(parent), leaf, qmodule)
        quanto.freeze(root)

    transformer = parts["transformer"]
    for block in transformer.layers:
        quantize(block)
    quantize(transformer, QUANT_EXCLUDE)
    quantize(parts["text_encoder"])
