"""The library's front door: load a base, chain LoRAs on immutable handles, render previews.

    handle = load("sdxl", base="default", dtype="auto", device="auto", roots=ModelRoots.from_env())
    handle = handle.with_lora("my_lora.safetensors", 1.0)        # a new handle; `handle` is unchanged
    images = render(handle, prompt="photo of [trigger]", trigger_word="ohwx", seed=42)  # uint8 [B, H, W, 3]

A handle names a cached base plus a LoRA chain. Rendering brings the shared base to exactly "pristine + this
chain" first, so handles never see each other's LoRAs, and a strength change or LoRA swap never reloads the base.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, replace

import numpy as np
import torch

from .cache import CACHE, LoadedBase
from .errors import InputError, LoraError, QuantizationError, RenderError
from .families import get_family
from .families.base import EXPERTS
from .lora import BoundLora, bind_lora
from .lora.merge import MODES as LORA_MODES
from .prompts import prepare
from .quantize import QTYPES, resolve_qtype
from .registry import floor_size, get_spec
from .request import Render, SampleRequest
from .sources import ModelRoots, resolve_base, resolve_file_option, resolve_lora
from .training_config import find_training_config

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MAX_SIDE = 8192
MAX_STEPS = 1000
MAX_FRAMES = 1025   # video frame counts (ai-toolkit presets use 41-121)
MAX_FPS = 240
MAX_SEED = 0xFFFFFFFFFFFFFFFF
# Far beyond any useful LoRA strength or guidance (the node widgets stop at 10 and 100); past these the picture is
# saturated noise or non-finite, so such a value is a typo (or a prompt flag gone wrong), not a preview setting.
MAX_STRENGTH = 100.0
MAX_GUIDANCE = 100.0


def check_number(label: str, value, lo: float, hi: float, hint: str = "") -> float:
    """`value` as a float within lo..hi, or an InputError naming the input (NaN and ±Inf are never accepted)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{label} must be a number, got {value!r}.{hint}") from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise InputError(f"{label} must be a finite number in {lo:g}..{hi:g}, got {value!r}.{hint}")
    return number


def check_int(label: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{label} must be a whole number, got {value!r}.")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())  # exact for seeds beyond 2**53 (float() would round them)
    try:
        number = float(value)
        if not number.is_integer():
            raise ValueError
        return int(number)
    except (ValueError, OverflowError):
        raise InputError(f"{label} must be a whole number, got {value!r}.") from None


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but this torch has no CUDA device; choose 'auto' or 'cpu'.")
    if device not in ("cuda", "cpu"):
        raise InputError(f"Unknown device {device!r}; choose auto, cuda or cpu.")
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` is what ai-toolkit samples with on that device: bf16 on CUDA, fp32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise InputError(f"Unknown dtype {dtype!r}; choose auto, bf16, fp16 or fp32.")
    return DTYPES[dtype]


MATCH_TRAINING = "match training"
NO_QUANTIZATION = "none"


@dataclass(frozen=True)
class LoraLink:
    bound: BoundLora
    strength: float
    expert: str = ""     # where the family's `lora_plan` sent it (e.g. "high-noise expert (transformer)")
    notes: tuple = ()    # the plan's notes (e.g. a missing file of an expert pair), on the first link it made

    def summary(self) -> str:
        """The report's text for this link: the file, what applied (and where), then the plan's notes."""
        lines = self.bound.report.summary().split("\n")
        if self.expert:
            lines[0] += f" -> {self.expert}"
        return "\n".join(lines + ["  note: " + n for n in self.notes])


@dataclass(frozen=True, eq=False)
class PipelineHandle:
    base: LoadedBase
    loras: tuple = ()   # LoraLink, in chain order
    options: tuple = ()  # (name, value) overrides of the model's family options
    quantization: str = MATCH_TRAINING   # as asked at load; "match training" may follow a LoRA's training config

    @property
    def spec(self):
        return self.base.spec

    def with_lora(self, path: str, strength: float = 1.0, expert: str = "auto") -> "PipelineHandle":
        """A new handle with one more LoRA. The file is read and matched now, so errors surface here.

        `expert` (`families.base.EXPERTS`) is for models with an expert pair: the family's `lora_plan` says which
        files this binds and where (auto: as ai-toolkit's loader, e.g. a Wan 2.2 `_high_noise` file brings its
        `_low_noise` sibling); each becomes a link at `strength`. A model without experts refuses other choices.

        With quantization "match training", the first LoRA whose training run left its `config.yaml` beside it
        decides the base's quantization (ai-toolkit's metadata does not record it): a base quantized otherwise is
        swapped for the matching one, and the report says so."""
        strength = check_number("LoRA strength", strength, -MAX_STRENGTH, MAX_STRENGTH,
                                " 1.0 renders the LoRA as trained.")
        if expert not in EXPERTS:
            raise InputError(f"Unknown expert {expert!r}; choose one of: {', '.join(EXPERTS)}.")
        base, chain = _live(self)
        plan = base.family.lora_plan(base.spec, path, expert)
        note = None
        if self.quantization == MATCH_TRAINING and not chain:
            base, note = _match_training_quantization(base, path)
        links = self.loras  # bound LoRAs hold their own tensors: they apply to a reloaded base as they are
        added = []
        for part in plan.parts:
            bound = bind(base, part.path, part.role)
            if note and note not in bound.report.notes:
                bound.report.notes.append(note)
            added.append(LoraLink(bound, strength, part.label, tuple(plan.notes) if not added else ()))
        return replace(self, base=base, loras=links + tuple(added))

    def reports(self) -> list:
        return [link.bound.report for link in self.loras]

    def added_since(self, earlier: "PipelineHandle") -> tuple:
        """The links this handle has beyond `earlier`'s chain (what one `with_lora` added)."""
        return self.loras[len(earlier.loras):]

    def with_options(self, roots: ModelRoots | None = None, **values) -> "PipelineHandle":
        """A new handle with family options overridden (e.g. FLUX.1's `attn_masking`); unknown names are refused.
        A file-valued option (field metadata `file`: the model folder kind) is resolved now, inside `roots`."""
        import dataclasses

        known = {f.name: f for f in dataclasses.fields(self.spec.options)} if self.spec.options else {}
        values = dict(values)
        for name, value in values.items():
            if name not in known:
                raise InputError(f"{self.spec.label} has no option {name!r}" + (
                    f"; it has: {', '.join(known)}." if known else " (it has no model options)."))
            if type(value) is not type(known[name].default):
                raise InputError(f"Option {name} must be a {type(known[name].default).__name__}, got {value!r}.")
            kind = known[name].metadata.get("file")
            if kind and value.strip():
                values[name] = resolve_file_option(f"Option {name}:", value, kind, roots or ModelRoots.from_env())
        merged = dict(self.options, **values)
        return replace(self, options=tuple(sorted(merged.items())))


_LAST_READ: dict = {}  # LoRA real path -> (path, mtime, size) when it was last read, for any base


def _match_training_quantization(base: LoadedBase, lora_path: str):
    """(base, note): the base quantized as the LoRA's training config says, when one is beside the file."""
    config = find_training_config(lora_path)
    if config is None or not base.spec.quant.components:
        return base, None
    qtype = config.quantization_for(base.spec.quant.flag)
    where = f"its training config ({os.path.basename(os.path.dirname(config.path))}/config.yaml)"
    if qtype == base.quantization:
        return base, f"quantization {qtype or 'none'}, as {where} says" + _te_caveat(base.spec, config, qtype)
    if qtype is not None:
        try:
            _check_offered(base.spec, qtype)
        except QuantizationError as exc:
            raise QuantizationError(f"{os.path.basename(lora_path)} was trained on a {qtype} base ({where}); "
                                    f"{exc} Choose quantization \"none\" or \"qfloat8\" on the loader to "
                                    "render anyway.") from None
    swapped = CACHE.get(base.spec, base.source, base.dtype, base.device, qtype)
    return swapped, (f"quantization {qtype or 'none'} instead of the preset's {base.quantization or 'none'}, "
                     f"as {where} says" + _te_caveat(base.spec, config, qtype))


def _te_caveat(spec, config, qtype) -> str:
    """What "match training" cannot follow: a `qtype_te`/`quantize_te` other than the UI's default (qfloat8, on)."""
    if not qtype or not spec.quant.te_components:
        return ""
    te = config.quantization_for("quantize_te")
    te = te and str(config.model.get("qtype_te") or "qfloat8")
    if te == "qfloat8":
        return ""
    return (f"; its text encoder was quantized with {te or 'none'}, rendered here with qfloat8 (only qfloat8 is "
            "reproduced there)")


def bind(base: LoadedBase, path: str, role: str | None = None) -> BoundLora:
    """The file bound to `base` for `role` (a `LoraPart.role`: e.g. which expert), read once per (file, mtime,
    size, role). When the file changed on disk since it was last bound here, it is read again and the report says
    so; handles bound earlier keep the content they read."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise LoraError(f"LoRA file {os.path.basename(path)} cannot be read ({exc.strerror or exc}).") from None
    real = os.path.realpath(path)
    read = (real, st.st_mtime_ns, st.st_size)
    key = read + ((role,) if role is not None else ())
    with base.lock:
        bound = base.bound.get(key)
        if bound is None:
            bound = bind_lora(path, base.spec, base.patcher.components, role=role)
            earlier = _LAST_READ.get(real)
            if earlier is not None and earlier != read:
                bound.report.notes.append("the file changed on disk since it was last applied: this is the new "
                                          "content (graphs that applied the old file keep rendering the old one)")
            base.bound[key] = bound
            _LAST_READ[real] = read
        return bound




def quantization_choices() -> list[str]:
    """The loader's `quantization` values: match training, none, and the qtypes the pack reproduces (qfloat8 for
    every quantized model, then those some models offer, in registry order)."""
    from .registry import REGISTRY

    extra = [q for spec in REGISTRY.values() for q in spec.quant.qtypes]
    return [MATCH_TRAINING, NO_QUANTIZATION, *QTYPES, *dict.fromkeys(q for q in extra if q not in QTYPES)]


def _check_offered(spec, qtype: str) -> None:
    """Refuses a qtype this model is not offered with (or whose package is missing)."""
    if not spec.quant.offers(qtype):
        offered = ", ".join(("qfloat8", *spec.quant.qtypes))
        resolve_qtype(qtype)  # a qtype the pack does not reproduce at all says so first
        raise QuantizationError(f"qtype {qtype!r} is not reproduced for {spec.label} (ai-toolkit's presets for it "
                                f"use other qtypes). For {spec.label}: {offered}.")
    resolve_qtype(qtype)


def pick_quantization(spec, quantization: str | None) -> str | None:
    """The ai-toolkit qtype to quantize with, or None. "match training" is the preset's (ai-toolkit writes no
    quantization into a LoRA's metadata, so the preset is all that is known)."""
    if quantization in (None, "", MATCH_TRAINING):
        return spec.quant.preset
    if quantization == NO_QUANTIZATION:
        return None
    if not spec.quant.components:
        raise QuantizationError(f"{spec.label} is never quantized by ai-toolkit; choose quantization "
                                f"\"{MATCH_TRAINING}\" or \"{NO_QUANTIZATION}\".")
    try:
        _check_offered(spec, quantization)  # refuses qtypes not reproduced (for this model), and missing packages
    except QuantizationError as exc:
        raise QuantizationError(f"quantization {quantization!r}: {exc} Choose one of: "
                                f"{', '.join(quantization_choices())}.") from None
    return quantization


def load(model: str, base: str = "default", dtype: str = "auto", device: str = "auto",
         roots: ModelRoots | None = None, quantization: str | None = MATCH_TRAINING) -> PipelineHandle:
    """A handle on the cached base. `quantization`: "match training" (the preset's qtype), "none", or a qtype."""
    spec = get_spec(model)
    device = pick_device(device)
    qtype = pick_quantization(spec, quantization)
    source = resolve_base(spec, base, roots or ModelRoots.from_env())
    return PipelineHandle(CACHE.get(spec, source, pick_dtype(dtype, device), device, qtype),
                          quantization=quantization or MATCH_TRAINING)


def apply_lora(handle: PipelineHandle, name: str, strength: float = 1.0,
               roots: ModelRoots | None = None, expert: str = "auto") -> PipelineHandle:
    return handle.with_lora(resolve_lora(name, roots or ModelRoots.from_env()), strength, expert)


def _default_if_negative(value, default):
    """The node's "-1 = model default" rule; anything that is not a number is left for the range check to name."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        return default
    return value


def build_request(spec, prompt: str, negative_prompt: str = "", trigger_word: str | None = None, width: int = 0,
                  height: int = 0, seed: int = 42, steps: int = 0, guidance_scale: float = -1.0,
                  guidance_rescale: float = 0.0, controls: tuple = (), num_frames: int = 0,
                  fps: int = 0) -> SampleRequest:
    """The node's values → the request ai-toolkit would render. 0 (size, steps, frames, fps) or a negative guidance
    means the model's default; flags in the prompt then override; finally the size is floored and the frame count
    snapped as ai-toolkit does (`SizeRule`, `MediaSpec.snap_frames`; image models always render 1 frame).
    `controls`: the control images (PIL RGB or None) in the order of the spec's control slots."""
    d = spec.defaults
    width, height, steps, seed = (check_int(label, v) for label, v in (("width", width or 0), ("height", height or 0),
                                                                       ("steps", steps or 0), ("seed", seed)))
    num_frames, fps = check_int("num_frames", num_frames or 0), check_int("fps", fps or 0)
    width, height = width or d.width, height or d.height
    for label, side in (("width", width), ("height", height)):
        if side < spec.size.minimum or side > MAX_SIDE:
            raise InputError(f"{label} {side} is outside {spec.size.minimum}..{MAX_SIDE} for {spec.id} "
                             f"(0 means the model default, {d.width}x{d.height}).")
    request = SampleRequest(prompt=prompt or "", negative_prompt=negative_prompt or "", width=int(width),
                            height=int(height), seed=int(seed), steps=int(steps or d.steps),
                            guidance_scale=_default_if_negative(guidance_scale, d.guidance_scale),
                            guidance_rescale=guidance_rescale, controls=tuple(controls),
                            num_frames=num_frames or spec.media.default_frames, fps=fps or spec.media.fps or 1)
    request = prepare(request, trigger_word if trigger_word else None)
    request = replace(request, guidance_scale=check_number(
        "guidance_scale (--cfg/--l)", request.guidance_scale, 0.0, MAX_GUIDANCE,
        " Use your training config's guidance_scale (-1 on the node = the model default)."),
        guidance_rescale=check_number("guidance_rescale (--gr)", request.guidance_rescale, 0.0, 1.0,
                                      " 0 = off, as ai-toolkit's default."))
    if request.network_multiplier is not None:
        check_number("--m (network_multiplier)", request.network_multiplier, -MAX_STRENGTH, MAX_STRENGTH,
                     " It sets the strength of every LoRA in the chain; 1.0 = as trained.")
    width, height = floor_size(spec, request.width, request.height)
    if max(width, height) > MAX_SIDE:
        raise InputError(f"Size {width}x{height} (from the prompt's --w/--h) is larger than {MAX_SIDE}. Write "
                         f"--w/--h of at most {MAX_SIDE} (ai-toolkit floors them to a multiple of "
                         f"{spec.size.divisor}), or remove the flags to use the node's width and height.")
    max_steps = min(MAX_STEPS, spec.scheduler.max_steps)
    if not 1 <= request.steps <= max_steps:
        raise InputError(f"steps must be 1..{max_steps} for {spec.id}, got {request.steps} "
                         "(0 means the model default).")
    for label, value, top in (("num_frames (--frames)", request.num_frames, MAX_FRAMES),
                              ("fps (--fps)", request.fps, MAX_FPS)):
        if not 1 <= value <= top:
            raise InputError(f"{label} must be 1..{top} for {spec.id}, got {value} (0 on the node means the model "
                             f"default, {spec.media.default_frames} frames at {spec.media.fps or 1} fps).")
    seed = request.seed
    if seed == -1:  # ai-toolkit: a random seed
        seed = random.randint(0, 2 ** 32 - 1)
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be 0..{MAX_SEED} (or -1 for random), got {seed}.")
    return replace(request, width=width, height=height, seed=seed,
                   num_frames=spec.media.snap_frames(request.num_frames))


def _live(handle: PipelineHandle) -> tuple:
    """(base, [(bound LoRA, strength)]) for a handle, reloading a base that memory management released."""
    base = handle.base
    if not base.released:
        return base, [(link.bound, link.strength) for link in handle.loras]
    base = CACHE.get(base.spec, base.source, base.dtype, base.device, base.quantization)
    # a bound LoRA names its targets by component and module path, and holds its own tensors: it applies to the
    # reloaded base as it is, with the content it was applied with (the file may have changed since)
    return base, [(link.bound, link.strength) for link in handle.loras]


def render(handle: PipelineHandle, request: SampleRequest, sampler: str | None = None, on_step=None,
           lora_mode: str = "merge") -> Render:
    """Render one request with the handle's LoRA chain applied (`lora_mode` "merge", ai-toolkit's default, or
    "branch": its unmerged fp32 path for sample events with mixed multipliers; a quantized base always runs the
    LoRA as that branch). Returns a `Render` (uint8 frames [T, H, W, 3], fps, audio).

    Never returns a black image for a broken render: non-finite latents (checked after every step) or pixels
    raise a RenderError that says where it broke and the likely cause."""
    if lora_mode not in LORA_MODES:
        raise InputError(f"Unknown lora_mode {lora_mode!r}; choose one of: {', '.join(LORA_MODES)}.")
    if handle.options:
        request = replace(request, options=handle.options)
    get_family(handle.spec).check_request(handle.spec, request)
    base, chain = _live(handle)
    base = base.family.base_for(base, request)
    multiplier = request.network_multiplier
    stack = [(bound, strength if multiplier is None else multiplier) for bound, strength in chain]
    # "match training" may depend on the LoRAs (e.g. the ai-toolkit version that made the preview): the family says
    sampler, sampler_note = base.family.sampler_for(base.spec, [bound.info for bound, _ in stack], sampler)
    with base.lock:
        base.patcher.set_stack(base.family.lora_stack(base, request, stack), lora_mode)
        out = base.family.generate(base.spec, base.pipe, request, sampler=sampler,
                                   on_step=_finite_steps(stack, base.dtype, on_step))
    if not isinstance(out, Render):
        out = Render(frames=out)
    notes = (sampler_note,) if sampler_note else ()
    if base.quantization:  # a preset may quantize only a part the LoRA does not touch (Lumina2: the text encoder)
        how = "LoRA as an fp32 branch" if base.patcher.quantized else "LoRA merged"
        notes += (f"quantized base: {base.quantization} on {', '.join(base.spec.quant.components)} ({how})",)
    fps = out.fps if out.fps is not None or not base.spec.media.is_video else float(request.fps)
    return replace(out, frames=to_uint8(out.frames, stack, base.dtype), fps=fps, notes=out.notes + notes)


def _likely_cause(stack, dtype) -> str:
    causes = []
    strengths = [abs(s) for _, s in stack]
    if strengths and max(strengths) > 2:
        causes.append(f"a LoRA strength far too high ({max(strengths):g}; 1.0 = as trained)")
    if dtype == torch.float16:
        causes.append("fp16 overflow (load the pipeline with dtype bf16 or fp32)")
    causes.append("a LoRA whose weights are extreme (try strength 1.0, or an earlier checkpoint)")
    return "; or ".join(causes)


def _finite_steps(stack, dtype, on_step):
    def check(step, total, latents):
        if latents is not None and not bool(torch.isfinite(latents).all()):
            raise RenderError(f"The latents became NaN/Inf at step {step} of {total}, so the image would be black. "
                              f"Likely cause: {_likely_cause(stack, dtype)}.")
        if on_step is not None:
            on_step(step, total, latents)
    return check


def to_uint8(pixels, stack=(), dtype=None) -> np.ndarray:
    """The pipeline's float pixels (0..1) as its PIL output holds them: `round(x * 255)` (Diffusers'
    `numpy_to_pil`), after checking that they are finite."""
    pixels = np.asarray(pixels)
    if not np.isfinite(pixels).all():
        cause = ("the VAE decode overflowed: the classic fp16 SDXL black image. Load the pipeline with dtype bf16 "
                 "or fp32" if dtype == torch.float16 else _likely_cause(stack, dtype))
        raise RenderError(f"The decoded image holds NaN/Inf pixels although the latents were finite. Likely cause: "
                          f"{cause}.")
    return (pixels * 255).round().astype(np.uint8)


def generate(handle: PipelineHandle, prompt: str, **values) -> np.ndarray:
    """`build_request` + `render` in one call (the CLI and simple scripts); returns the uint8 frames."""
    options = {k: values.pop(k) for k in ("sampler", "on_step", "lora_mode") if k in values}
    return render(handle, build_request(handle.spec, prompt, **values), **options).frames
