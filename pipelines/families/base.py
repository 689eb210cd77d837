"""The `Family` interface: what a model family module provides to the generic library (engine, LoRA engine, cache).

A family module (`pipelines/families/<name>.py`) defines one `Family` subclass per variant and exports them as
`VARIANTS = {variant name: class}`; a registry entry picks one with `family` + `variant` (after ComfyUI's
`comfy/supported_models.py`: data in the entry, small hooks here, variants as subclasses). Generic code never asks
which family it holds.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ControlImageError, LoraError
from ..lora.aliases import Alias, prefixed_index
from ..samplers import MATCH_TRAINING, make_scheduler

#: ApplyAIToolkitLoRA's `expert` choices (CONTRACT.md): which expert of a multi-transformer model a file goes to
EXPERTS = ("auto", "high", "low", "both")


@dataclass(frozen=True)
class LoraPart:
    """One file bound for one LoRA application: `role` picks the family's name index (`Family.lora_index`; None:
    the family's plain one), `label` says where it goes in the report ("" when there is nothing to say)."""
    path: str
    role: str | None = None
    label: str = ""


@dataclass(frozen=True)
class LoraPlan:
    """What one ApplyAIToolkitLoRA does: the parts it binds (in chain order, all at the node's strength) and the
    notes its report shows (e.g. the missing file of an expert pair)."""
    parts: tuple
    notes: tuple = ()


class Family:
    """Defaults fit a Diffusers pipeline whose LoRA targets are named by their module paths."""

    #: component names the LoRA engine may patch, in the order reports list them
    lora_component_names: tuple[str, ...] = ()

    # ---- loading -------------------------------------------------------------------------------------------
    def load(self, spec, source, dtype, device, quantization: str | None = None):
        """A pipeline with every component complete, in `dtype` on `device`, frozen; quantized with the ai-toolkit
        qtype `quantization` (None: unquantized)."""
        raise NotImplementedError

    def lora_components(self, pipe) -> dict:
        return {n: getattr(pipe, n) for n in self.lora_component_names if getattr(pipe, n, None) is not None}

    # ---- LoRA names ----------------------------------------------------------------------------------------
    def module_names(self, spec, component: str, module) -> dict[str, tuple[Alias, ...]]:
        """Names a LoRA file may give this component's layers (without the file's prefix) → where each applies.
        Default: every module with a weight, by its own path."""
        from ..lora.aliases import weighted_paths

        return {path: (Alias(component, path),) for path in weighted_paths(module)}

    def lora_index(self, spec, components: dict, role: str | None = None) -> dict[str, tuple[Alias, ...]]:
        """Full file module name (with kohya or peft prefix) → the targets it patches. `role`: a `LoraPart.role`
        of this family's `lora_plan` (None for the plain index)."""
        names = {comp: self.module_names(spec, comp, module) for comp, module in components.items()}
        return prefixed_index(names, spec.lora)

    def lora_plan(self, spec, path: str, expert: str = "auto") -> LoraPlan:
        """Which files one LoRA application binds, and to what (`LoraPart.role`), for the node's `expert` choice.
        Default (one transformer, no expert pair): the file itself with the plain index; any other choice than
        "auto" is refused, since there is no expert to choose (a multi-expert family overrides this)."""
        if expert != "auto":
            raise LoraError(f"expert {expert!r} was chosen, but {spec.label} has a single transformer, not a "
                            "high/low-noise expert pair: set expert to auto.")
        return LoraPlan((LoraPart(path),))

    def base_for(self, base, request):
        """The `cache.LoadedBase` this request renders on: `base`, unless the request needs the base loaded another
        way (e.g. an adapter ai-toolkit merges into the full-precision weights before quantizing them: a quantized
        base cannot take it afterwards). Default: `base`."""
        return base

    def lora_stack(self, base, request, stack) -> list:
        """What the patcher applies for this request: the handle's chain `[(BoundLora, multiplier)]`, plus any LoRA
        the family adds around it as `lora.merge.StackEntry`s (e.g. an adapter ai-toolkit merges into the base at
        load and switches on while sampling). `base` is the `cache.LoadedBase`. Default: the chain as it is."""
        return stack

    # ---- options -------------------------------------------------------------------------------------------
    def options(self, spec, request=None):
        """The entry's options dataclass with the request's overrides applied (None when the family has none)."""
        import dataclasses

        if spec.options is None:
            return None
        return dataclasses.replace(spec.options, **dict(getattr(request, "options", ()) or ()))

    # ---- sampling ------------------------------------------------------------------------------------------
    def scheduler(self, spec, sampler: str | None = None):
        return make_scheduler(spec, sampler)

    def sampler_for(self, spec, loras, sampler: str | None = None) -> tuple[str | None, str | None]:
        """(sampler name, note for the render's notes) for one render. `loras`: the `LoraInfo` of the applied chain
        (what each file says about itself: `software_version` …); `sampler`: the user's choice, None or "match
        training" for the one ai-toolkit previewed with. Default: the user's choice (with a note saying so), else the
        entry's sampler, no note. A family whose preview sampler changed across ai-toolkit versions picks it from the
        LoRAs here."""
        if sampler in (None, "", MATCH_TRAINING):
            return sampler, None
        return sampler, (f"sampler {sampler}: chosen on the node (ai-toolkit previews {spec.label} with "
                         f"{spec.scheduler.default_sampler})")

    def check_request(self, spec, request) -> None:
        """Refuse a request the model cannot render (a required control image missing …) before anything runs."""
        for index, slot in enumerate(spec.controls):
            given = index < len(request.controls) and request.controls[index] is not None
            if slot.required and not given:
                raise ControlImageError(f"{spec.label} needs a control image: connect an IMAGE to {slot.name} "
                                        f"({slot.purpose}).")

    def generate(self, spec, pipe, request, sampler=None, on_step=None):
        """Render one request; returns float pixels [T, H, W, 3] in 0..1 (the pipeline's `output_type="np"`), or a
        `request.Render` whose frames are such pixels (video models add fps and audio). `on_step(step, total,
        latents)` runs after each step; the engine checks the latents and rounds the pixels to 8 bits."""
        raise NotImplementedError

    def preview_latents(self, spec, latents, request):
        """The latents of the first image as [C, h, w] for the live preview, or None. Video latents
        [B, C, F, h, w]: the middle latent frame of the first video."""
        if latents is not None and latents.ndim == 5:
            return latents[0, :, latents.shape[2] // 2]
        if latents is None or latents.ndim != 4:
            return None
        return latents[0]
