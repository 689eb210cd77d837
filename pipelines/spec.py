"""The typed parts of a registry entry: each holds one kind of fact about how ai-toolkit previews a model.

A `ModelSpec` (the last class here; entries in `pipelines/models/`) is assembled from these; generic code reads only these parts, never a model id or a
family name, so a family is added by data plus its family module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

GUIDANCE_KINDS = ("cfg", "true_cfg", "embedded", "none")


@dataclass(frozen=True)
class SampleDefaults:
    """ai-toolkit's own sample defaults for the model's UI preset (what "model default" means in the nodes)."""
    steps: int
    guidance_scale: float
    width: int
    height: int


@dataclass(frozen=True)
class SizeRule:
    """How ai-toolkit turns a requested size into the rendered one.

    `GenerateImageConfig` floors to `divisor` with `minimum` (`max(minimum, x - x % divisor)`); some pipelines then
    floor again to `pipeline_divisor` (FLUX: `2 * (x // 16)`), so the image really comes out at that size."""
    divisor: int = 8
    minimum: int = 64
    pipeline_divisor: int = 0

    def config_floor(self, width: int, height: int) -> tuple[int, int]:
        """The size `GenerateImageConfig` holds (what the family receives in the request)."""
        return max(self.minimum, width - width % self.divisor), max(self.minimum, height - height % self.divisor)

    def floor(self, width: int, height: int) -> tuple[int, int]:
        """The size of the rendered image."""
        sides = self.config_floor(width, height)
        if self.pipeline_divisor:
            return tuple(side - side % self.pipeline_divisor for side in sides)
        return sides


@dataclass(frozen=True)
class GuidanceSpec:
    """What the config's `guidance_scale` means for this model.

    kind: "cfg" (classic CFG with the encoded negative, active above `threshold`), "true_cfg" (the same with a
    separately encoded negative pass; FLUX-style pipelines), "embedded" (a distilled guidance embedding: one pass, no
    negative), "none". `rescale`: the pipeline honours ai-toolkit's `guidance_rescale` (`--gr`).
    `offset`/`floor`: the value the pipeline receives is `max(floor, g + offset)` (Z-Image: `max(0, g - 1)`)."""
    kind: str = "cfg"
    threshold: float = 1.0
    rescale: bool = False
    offset: float = 0.0
    floor: float | None = None

    def __post_init__(self):
        if self.kind not in GUIDANCE_KINDS:
            raise ValueError(f"guidance kind {self.kind!r} is not one of {GUIDANCE_KINDS}")

    @property
    def uses_negative(self) -> bool:
        return self.kind in ("cfg", "true_cfg")

    def pipeline_value(self, guidance: float) -> float:
        value = guidance + self.offset
        return value if self.floor is None else max(self.floor, value)


@dataclass(frozen=True)
class MediaSpec:
    """What the model renders: "image", "video" or "video+audio".

    Video: `default_frames` and `fps` are the UI preset's `sample.num_frames` / `sample.fps`; frame counts are
    `frame_step * k + 1`, and a count that is not is snapped as ai-toolkit's pipeline snaps it (`snap_frames`):
    `k = (frames - snap_offset) // frame_step`. `snap_offset` 0 is Wan's rounding (`frames // 4 * 4 + 1`, which
    rounds 8 up to 9), 1 is LTX-2's (`(frames - 1) // 8 * 8 + 1`, always down: 16 -> 9)."""
    kind: str = "image"
    frame_step: int = 0
    default_frames: int = 1
    fps: int = 0
    snap_offset: int = 0

    @property
    def is_video(self) -> bool:
        return self.kind.startswith("video")

    @property
    def has_audio(self) -> bool:
        return self.kind.endswith("+audio")

    def snap_frames(self, frames: int) -> int:
        """The frame count the pipeline renders for a requested one: 1 for image models; else, when
        `frames % frame_step != 1`, `(frames - snap_offset) // frame_step * frame_step + 1`, at least 1. Offset 0:
        Diffusers' WanPipeline and ai-toolkit's Wan22Pipeline, step 4: 6 -> 5, 7 -> 5, 8 -> 9, 42 -> 41. Offset 1:
        ai-toolkit's `LTX2Model.generate_single_image`, step 8: 12 -> 9, 16 -> 9, 20 -> 17 (1 stays 1); Wan 2.2 5B's
        `generate_single_image`, step 4: 8 -> 5."""
        if not self.is_video:
            return 1
        step = self.frame_step
        if step > 1 and frames % step != 1:
            frames = (frames - self.snap_offset) // step * step + 1
        return max(int(frames), 1)


@dataclass(frozen=True)
class ControlSlot:
    """One control/reference image input: its node input name (CONTRACT.md), whether the model needs it, and what
    the model does with it (for tooltips and errors)."""
    name: str
    required: bool
    purpose: str


@dataclass(frozen=True)
class QuantSpec:
    """How ai-toolkit quantizes this model when training with `quantize: true`.

    `preset`: the qtype the UI preset trains with (None: the preset is unquantized), which "match training" uses.
    `components`: the components quantized, in order (ai-toolkit: the transformer, then the text encoder
    `quantize_te`). `rules`: per component, the `quantize.QuantizeRule` (absent = every module, no exclusions).
    `flag`: the training config's `model:` key that turns these components' quantization on ("quantize"; Lumina2's
    preset quantizes only the text encoder, so "quantize_te"), which "match training" reads from a LoRA's config.
    `qtypes`: the qtypes other than qfloat8 the pack reproduces for this model (its presets' "N bit with ARA"
    strings, uintN, float8), offered on the loader. `te_components`: the components ai-toolkit quantizes with
    `qtype_te` (always qfloat8 in its UI) instead of `qtype`."""
    preset: str | None = None
    components: tuple[str, ...] = ()
    rules: Mapping[str, object] = field(default_factory=dict)
    flag: str = "quantize"
    qtypes: tuple[str, ...] = ()
    te_components: tuple[str, ...] = ()

    def offers(self, qtype: str) -> bool:
        """Whether `qtype` is one this model can be quantized with here."""
        return bool(self.components) and (qtype == "qfloat8" or qtype in self.qtypes)

    def qtype_for(self, component: str, qtype: str) -> str:
        """The qtype `component` is quantized with when the model's qtype is `qtype` (a `qtype_te` component: the
        UI's default qtype_te, qfloat8; "match training" notes a run that chose another)."""
        return "qfloat8" if component in self.te_components else qtype


@dataclass(frozen=True)
class SchedulerSpec:
    """The sampler ai-toolkit previews this model with, and the scheduler config its pipeline ends up using.

    `config` is the *effective* config: e.g. Diffusers' StableDiffusionPipeline constructor rewrites ai-toolkit's
    `steps_offset: 0` to 1, so SD1.5 previews really sample with 1 while SDXL keeps 0. `arch` selects the sampler
    table in `samplers.py` that user overrides are taken from."""
    default_sampler: str
    config: Mapping[str, object]
    arch: str = "sd"

    @property
    def max_steps(self) -> int:
        """The most steps the scheduler can take (DDPM-style tables run out at num_train_timesteps - offset)."""
        return int(self.config.get("num_train_timesteps", 1000)) - int(self.config.get("steps_offset", 0))


@dataclass(frozen=True)
class LoraLayout:
    """The key prefixes of ai-toolkit's LoRA files for this model: kohya prefix (`lora_unet`, `lora_te1` …) or peft
    prefix (`unet`, `transformer`, `diffusion_model` …) → the pipeline component it targets. Module names below the
    prefix are the family's business (its alias provider)."""
    kohya_prefixes: Mapping[str, str] = field(default_factory=dict)
    peft_prefixes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LatentPreview:
    """ComfyUI-style linear latent → RGB factors for live previews (no VAE decode)."""
    rgb_factors: tuple[tuple[float, ...], ...] = ()
    rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides one model's preview, in typed parts (`spec.py`). `family` names the module under
    `pipelines/families/`; `variant` picks one of its `VARIANTS` (a Family subclass); `options` is that family's own
    options dataclass (what only it needs)."""
    id: str
    label: str
    family: str
    base_repo: str                   # Hugging Face repo id of the base ai-toolkit's UI preset trains on
    pipeline_class: str              # Diffusers pipeline class name (a base folder's model_index.json must match)
    defaults: SampleDefaults
    scheduler: SchedulerSpec
    lora: LoraLayout
    variant: str = ""
    compatible_pipelines: tuple[str, ...] = ()  # other model_index classes whose folders hold the same parts
    size: SizeRule = SizeRule()
    guidance: GuidanceSpec = GuidanceSpec()
    media: MediaSpec = MediaSpec()
    controls: tuple[ControlSlot, ...] = ()
    quant: QuantSpec = QuantSpec()
    base_versions: tuple[str, ...] = ()  # `ss_base_model_version` values ai-toolkit writes for this model
    single_file_config: str | None = None  # folder under pipelines/configs/ for single-file checkpoints
    checkpoint_marker: str | None = None   # a key prefix only this model's single-file checkpoints have
    preview: LatentPreview = LatentPreview()
    options: object = None
    workflow: str = ""               # the example workflow's file name under example_workflows/ (without .json)
    notes: str = ""
