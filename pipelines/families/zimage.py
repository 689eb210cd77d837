"""Z-Image (Turbo, base, De-Turbo): previews as ai-toolkit renders them, through Diffusers' `ZImagePipeline`.

What ai-toolkit 0.12.26 does (`extensions_built_in/diffusion_models/z_image/z_image.py:ZImageModel`; the UI's three
presets `zimage:turbo`, `zimage`, `zimage:deturbo` are one class, `ModelConfig` strips the `:tag`), and so what this
does:
- `get_generation_pipeline`: a fresh `ZImagePipeline` over the loaded parts with a fresh training scheduler,
  `CustomFlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, use_dynamic_shifting=False, shift=3.0)`: the
  pipeline passes sigmas `linspace(1, 1/N, N)` and a `mu` that static shifting ignores, so σ' = 3σ / (1 + 2σ);
- `get_prompt_embeds` → `ZImagePipeline.encode_prompt(prompt, do_classifier_free_guidance=False)`: the Qwen3 chat
  template (user message, generation prompt, `enable_thinking=True`), 512 tokens including the template,
  `hidden_states[-2]`, padding dropped; `BaseModel.generate_images` encodes the positive and the negative in
  separate calls and casts both to the transformer's dtype;
- `generate_single_image`: the 8-floored size (`GenerateImageConfig`, minimum 64) floored again to 16, and
  `guidance_scale = max(0, cfg - 1)`: the pipeline runs CFG (`pos + g·(pos − neg)`) only for g > 0, so cfg ≤ 1 (the
  Turbo preset) never uses the negative; `cfg_normalization`/`cfg_truncation` stay at the pipeline's defaults;
- noise: the pipeline draws the latents in float32 from the seeded CPU generator (`torch.manual_seed(seed)`) and
  keeps them in float32 through the scheduler (cast to the transformer's dtype per step);
- `load_model`: transformer, Qwen3 text encoder, tokenizer and VAE in the train dtype; De-Turbo takes the
  transformer from `ostris/Z-Image-De-Turbo` and the rest from `extras_name_or_path` Tongyi-MAI/Z-Image-Turbo (a
  local full folder is used whole); `quantize` (qfloat8): blocks `layers` one at a time, then the rest without
  `get_quantization_exclude_modules()` (embedders, final layer); `quantize_te`: the whole text encoder.

The Turbo training adapter (`ZImageModel.load_training_adapter`, preset `assistant_lora_path`): ai-toolkit merges it
into the base at +1 at load (weights in the model dtype: `network.force_to(device, dtype)`), and while sampling
switches it on as an unmerged branch at multiplier −1, computed in the model dtype; the user's LoRA is merged into
the same adapter-merged weights (or branched over them). The option `training_adapter` reproduces that through the
LoRA engine's stack (`lora_stack`: stage −1 = the adapter merged at +1 and its −1 branch, stage 0 = the chain), so the
cached base is restored exactly after every render. ai-toolkit's adapter network is built without `base_model`, so
it wraps every Linear of the transformer (no block filter): every module of the file is applied.
With quantize on, ai-toolkit merges the adapter before quantizing, and with torchao float8 where the preset says
qfloat8 (`load_model`); a quantized base cannot take that merge afterwards, so `base_for` renders such a request on
a base loaded that way (`load` with `"<qtype>" + PREMERGED + "<path>@<mtime>"`: merge, then quantize; cached under
that key), and `lora_stack` then adds only the adapter's −1 branch under the chain's branches.

LoRA names: `diffusion_model.<module path>.lora_A/B` (peft, alpha = rank: scale 1), `transformer.<path>` too.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch

from ..errors import LoraError, ModelSourceError, QuantizationError
from ..lora.merge import StackEntry
from ..request import Render
from .base import Family
from .common import from_source, prepare_components, quantize_components, source_folder, step_callback_kwargs

BUCKET_DIVISOR = 16  # ZImageModel.get_bucket_divisibility: 8 (VAE) * 2 (patch)
PARTS = ("vae", "text_encoder", "tokenizer", "transformer")
TURBO_EXTRAS = "Tongyi-MAI/Z-Image-Turbo"  # z_image.py SINGLE_FILE_EXTRAS_REPO; the De-Turbo preset's extras


@dataclass(frozen=True)
class ZImageOptions:
    """Z-Image-only settings from the training config (`model:` section)."""
    training_adapter: str = field(default="", metadata={"help": (
        "ai-toolkit's model.assistant_lora_path (the Z-Image Turbo preset sets "
        "ostris/zimage_turbo_training_adapter/zimage_turbo_training_adapter_v2.safetensors): the training adapter "
        "is merged into the base and switched off again while sampling, as ai-toolkit's previews do. A file in the "
        "loras folder, an absolute path, or that repo/file path when the file is in the Hugging Face cache. Empty: "
        "no adapter (the preview then differs by a small residue)."), "file": "loras"})


# The base of a quantized render with the training adapter: "<qtype>" + PREMERGED + "<adapter path>@<mtime ns>"
# (the cache key, and what `load` is given). `load_model` turns the preset's qfloat8 into torchao float8 then.
PREMERGED = "+training adapter merged first:"
AFTER_MERGE = {"qfloat8": "float8"}


def split_premerged(quantization):
    """(qtype, adapter path merged before quantizing or None)."""
    if not quantization or PREMERGED not in quantization:
        return quantization, None
    qtype, _, rest = quantization.partition(PREMERGED)
    return qtype, rest.rpartition("@")[0]


def _in_dtype(bound, dtype):
    """A copy of a bound LoRA whose tensors are rounded to `dtype`, as ai-toolkit's `force_to(device, dtype)` +
    `load_weights` hold the adapter (its merge then reads them `.float()`)."""
    modules = {}
    for target in bound.targets:
        m = target.module
        if id(m) not in modules:
            modules[id(m)] = dataclasses.replace(m, tensors={k: v.to(dtype) for k, v in m.tensors.items()})
    targets = [dataclasses.replace(t, module=modules[id(t.module)]) for t in bound.targets]
    return dataclasses.replace(bound, targets=targets)


class ZImage(Family):
    """Z-Image-Turbo and Z-Image (`ZImagePipeline`)."""
    lora_component_names = ("transformer",)
    pipeline_class = "ZImagePipeline"
    extras_repo: str | None = None  # where the parts other than the transformer come from for base "default"

    # ---- loading -------------------------------------------------------------------------------------------
    def load(self, spec, source, dtype, device, quantization=None):
        if source.kind == "single_file":
            raise ModelSourceError(f"{spec.label}: single-file checkpoints are not supported yet; use a Diffusers "
                                   "folder or base \"default\".")
        pipe = self._from_folders(spec, source)
        prepare_components(pipe, os.path.basename(source.location), spec, dtype, device)
        qtype, adapter = split_premerged(quantization)
        if adapter is not None:
            self._merge_adapter(spec, pipe, adapter, dtype)
        quantize_components(pipe, spec, qtype, dtype)
        return pipe

    def _merge_adapter(self, spec, pipe, path, dtype) -> None:
        """`load_training_adapter` before `quantize_model`: the adapter (in the model dtype) merged at +1 into the
        full-precision weights, `(W.float() + B.float() @ A.float()).to(W.dtype)`; kept (never restored)."""
        from ..lora import WeightPatcher, bind_lora

        components = self.lora_components(pipe)
        bound = _in_dtype(self._checked(bind_lora(path, spec, components), path, spec), dtype)
        WeightPatcher(components, quantized=False).set_stack([StackEntry(bound, 1.0, merged=True)])

    def _from_folders(self, spec, source):
        from diffusers import ZImagePipeline

        if self.extras_repo is None or source.kind != "hub":
            return from_source(ZImagePipeline, spec, source, scheduler=self.scheduler(spec))
        folder = source_folder(source)
        if os.path.isdir(os.path.join(folder, "text_encoder")) and os.path.isfile(
                os.path.join(folder, "model_index.json")):
            return from_source(ZImagePipeline, spec, source, scheduler=self.scheduler(spec))
        return self._with_extras(spec, folder)

    def _with_extras(self, spec, folder):
        """ai-toolkit's De-Turbo preset: the transformer of the repo, the text encoder, tokenizer and VAE of
        `extras_name_or_path` (Tongyi-MAI/Z-Image-Turbo)."""
        from diffusers import AutoencoderKL, ZImagePipeline, ZImageTransformer2DModel
        from transformers import AutoModel, AutoTokenizer

        from ..sources import hub_snapshot

        extras = hub_snapshot(self.extras_repo)
        try:
            transformer = ZImageTransformer2DModel.from_pretrained(folder, subfolder="transformer",
                                                                   local_files_only=True)
            text_encoder = AutoModel.from_pretrained(extras, subfolder="text_encoder", local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(extras, subfolder="tokenizer", local_files_only=True)
            vae = AutoencoderKL.from_pretrained(extras, subfolder="vae", local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - Diffusers/transformers raise many types for unreadable models
            raise ModelSourceError(f"Could not load {spec.label} (transformer from {spec.base_repo}, text encoder, "
                                   f"tokenizer and VAE from {self.extras_repo}): {type(exc).__name__}: {exc}") from exc
        return ZImagePipeline(scheduler=self.scheduler(spec), vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer, transformer=transformer)

    # ---- the training adapter ------------------------------------------------------------------------------
    def base_for(self, base, request):
        """A quantized base with the training adapter: ai-toolkit merges the adapter into the full-precision weights
        and quantizes after that, with torchao float8 where the preset says qfloat8 (`load_model`): that base, cached
        under its own key (the adapter's path and mtime in it)."""
        name = self._adapter_name(base.spec, request)
        if not name or not base.quantization or split_premerged(base.quantization)[1] is not None:
            return base
        from ..cache import CACHE
        from ..quantize import resolve_qtype

        qtype = AFTER_MERGE.get(base.quantization, base.quantization)
        resolve_qtype(qtype)  # a missing torchao is named before anything is loaded
        key = f"{qtype}{PREMERGED}{name}@{os.stat(name).st_mtime_ns}" if os.path.isfile(name) else None
        if key is None:
            raise LoraError(f"Training adapter {name} is no longer there. Put the file back, or set the option again.")
        return CACHE.get(base.spec, base.source, base.dtype, base.device, key)

    def _adapter_name(self, spec, request) -> str:
        return (getattr(self.options(spec, request), "training_adapter", "") or "").strip()

    def lora_stack(self, base, request, stack):
        name = self._adapter_name(base.spec, request)
        if not name:
            return stack
        premerged = split_premerged(base.quantization)[1]
        if base.quantization and premerged is None:
            raise QuantizationError(f"{base.spec.label}: the training adapter on a quantized base must be merged "
                                    "before quantizing (render through engine.render, which loads that base).")
        if not os.path.isfile(name):  # a path, resolved by PipelineHandle.with_options; since removed?
            raise LoraError(f"Training adapter {name} is no longer there. Put the file back, or set the option again.")
        adapter = self.adapter(base, name)
        unmerge = StackEntry(adapter, -1.0, stage=-1, branch_dtype=base.dtype)
        if premerged is not None:  # merged before quantizing (load): only the -1 branch is left to run
            return [unmerge, *(StackEntry(bound, multiplier) for bound, multiplier in stack)]
        return [StackEntry(adapter, 1.0, stage=-1, merged=True),  # merged at load, whatever the LoRA mode
                unmerge, *(StackEntry(bound, multiplier) for bound, multiplier in stack)]

    @staticmethod
    def _checked(bound, path, spec):
        report = bound.report
        if report.applied_keys != report.total_keys:
            raise LoraError(f"Training adapter {os.path.basename(path)}: only {report.applied_keys} of its "
                            f"{report.total_keys} keys apply to {spec.label}.\n{report.summary()}")
        return bound

    def adapter(self, base, path: str):
        """The adapter bound to `base` in the model dtype, read once per (file, mtime, size); every key applies."""
        from ..lora import bind_lora

        st = os.stat(path)
        key = ("training_adapter", os.path.realpath(path), st.st_mtime_ns, st.st_size)
        with base.lock:
            bound = base.bound.get(key)
            if bound is None:
                bound = self._checked(bind_lora(path, base.spec, base.patcher.components), path, base.spec)
                bound = base.bound[key] = _in_dtype(bound, base.dtype)
            return bound

    # ---- sampling ------------------------------------------------------------------------------------------
    def sampling_pipeline(self, spec, pipe, sampler):
        from diffusers import ZImagePipeline

        sampling = ZImagePipeline(**{n: getattr(pipe, n) for n in PARTS}, scheduler=self.scheduler(spec, sampler))
        sampling.set_progress_bar_config(disable=True)
        return sampling

    def encode(self, pipe, prompt: str, dtype):
        """`ZImageModel.get_prompt_embeds` for one prompt, cast to `dtype`: a list of one [tokens, d] tensor."""
        embeds, _ = pipe.encode_prompt(prompt, device=pipe.text_encoder.device, do_classifier_free_guidance=False)
        return [e.to(dtype) for e in embeds]

    def generate(self, spec, pipe, request, sampler=None, on_step=None):
        sampling = self.sampling_pipeline(spec, pipe, sampler)
        width = request.width - request.width % BUCKET_DIVISOR
        height = request.height - request.height % BUCKET_DIVISOR
        dtype = pipe.transformer.dtype
        with torch.no_grad():
            positive = self.encode(pipe, request.prompt, dtype)
            negative = self.encode(pipe, request.negative_prompt or "", dtype)
            images = sampling(prompt_embeds=positive, negative_prompt_embeds=negative, height=height, width=width,
                              num_inference_steps=request.steps,
                              guidance_scale=spec.guidance.pipeline_value(request.guidance_scale),
                              generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np",
                              **step_callback_kwargs(request.steps, on_step)).images
        adapter = (getattr(self.options(spec, request), "training_adapter", "") or "").strip()
        notes = (f"training adapter {os.path.basename(adapter)}: merged at +1, sampled at -1",) if adapter else ()
        return Render(frames=images, notes=notes)


class DeTurbo(ZImage):
    """ostris/Z-Image-De-Turbo: the transformer of its repo, the other parts of Z-Image-Turbo."""
    extras_repo = TURBO_EXTRAS


VARIANTS = {"": ZImage, "deturbo": DeTurbo}
