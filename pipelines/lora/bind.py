"""Bind a LoRA file to a loaded base: every module matched to a live weight, every key accounted for.

The result is a `BoundLora` (what to merge where) and a `MatchReport` (applied / not applied by component, unknown
keys). A file where nothing applies is an error that names the file and the likely cause; a file made for another
model family (by its `ss_base_model_version` metadata or its key names) is refused before anything is touched.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from ..errors import LoraError
from .files import LoraInfo, info_from, read_lora
from .parse import LoraModule, parse_tensors

# `ss_base_model_version` values of families this pack has no registry entry for yet -> a name for messages (the
# registry's own entries name theirs in `ModelSpec.base_versions`; `known_base_versions` joins both).
OTHER_BASE_VERSIONS = {
    "sd_2.1": "SD 2.1", "sd_v2": "SD 2.x", "ssd": "SSD-1B", "vega": "Vega", "sd_3": "SD3",
    "pixart": "PixArt", "auraflow": "AuraFlow",
    "wan_2.2_14b": "Wan 2.2", "wan_2.2_5b": "Wan 2.2 5B", "hidream_i1": "HiDream",
    "omnigen2": "OmniGen2", "ltx2": "LTX-2",
}
# Below this fraction of a file's modules applying (the rest matching no layer by name or by shape), the file is
# refused as made for another model. An ai-toolkit file applies 100 % on its own base; the measured figures for
# real SD 1.5 / SDXL structures are in bench/wrong_family.py.
MIN_APPLIED_FRACTION = 0.5
# Key fragments that give away a family when nothing matched.
KEY_HINTS = (
    ("double_blocks", "FLUX.1/Chroma/FLUX.2 (BFL layout)"), ("single_transformer_blocks", "FLUX.1 (Diffusers layout)"),
    ("transformer_blocks.0.attn.add_q_proj", "FLUX.1/Qwen-Image"), ("img_mlp", "Qwen-Image"),
    ("double_stream_blocks", "HiDream"), ("diffusion_model.layers.", "Z-Image/Lumina2"),
    ("self_attn.q.", "Wan"), ("blocks.0.cross_attn", "Wan"), ("lora_unet_input_blocks", "SDXL (SGM names) or SD 1.5"),
    ("lora_te2_", "SDXL"), ("lora_te1_", "SDXL"),
)


@dataclass
class Target:
    """One file module applied to one layer: all of its delta, or a slice (see `aliases.Alias`)."""
    component: str
    path: str
    module: LoraModule
    rows: slice | None = None
    into: slice | None = None


@dataclass
class MatchReport:
    file: str
    total_keys: int = 0
    applied: dict = field(default_factory=dict)           # component -> modules applied
    applied_keys: int = 0
    zero_modules: int = 0                                   # matched but all-zero (nothing to merge)
    shape_mismatch: list = field(default_factory=list)     # module names
    unsupported: list = field(default_factory=list)        # (module name, reason)
    unmatched: list = field(default_factory=list)          # module names with no target in this model
    leftovers: list = field(default_factory=list)          # keys that are not LoRA module tensors
    notes: list = field(default_factory=list)              # things the user should know (e.g. the file changed)

    @property
    def applied_modules(self) -> int:
        return sum(self.applied.values())

    @property
    def not_applied_keys(self) -> int:
        return self.total_keys - self.applied_keys

    def warnings(self) -> list[str]:
        out = []
        if self.unmatched:
            out.append(f"{len(self.unmatched)} modules match no layer of this model: {_first(self.unmatched)}")
        if self.shape_mismatch:
            out.append(f"{len(self.shape_mismatch)} modules have the wrong shape: {_first(self.shape_mismatch)}")
        for reason in sorted({r for _, r in self.unsupported}):
            names = [n for n, r in self.unsupported if r == reason]
            out.append(f"{len(names)} modules not applied ({reason}): {_first(names)}")
        if self.leftovers:
            out.append(f"{len(self.leftovers)} keys are not LoRA weights and were ignored: {_first(self.leftovers)}")
        return out

    def summary(self) -> str:
        parts = ", ".join(f"{c} {n}" for c, n in sorted(self.applied.items())) or "nothing"
        head = (f"{self.file}: applied {self.applied_keys}/{self.total_keys} keys "
                f"({self.applied_modules} modules: {parts})")
        if self.zero_modules:
            head += f", {self.zero_modules} of them all-zero"
        return "\n".join([head] + ["  note: " + n for n in self.notes] + ["  warning: " + w for w in self.warnings()])

    def as_dict(self) -> dict:
        return {"file": self.file, "total_keys": self.total_keys, "applied_keys": self.applied_keys,
                "applied": dict(self.applied), "zero_modules": self.zero_modules,
                "shape_mismatch": list(self.shape_mismatch), "unsupported": [list(u) for u in self.unsupported],
                "unmatched": list(self.unmatched), "leftovers": list(self.leftovers), "notes": list(self.notes)}


def _first(names, n=3) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" … (+{len(names) - n})" if len(names) > n else "")


_tokens = itertools.count(1)


@dataclass
class BoundLora:
    path: str
    targets: list
    report: MatchReport
    info: LoraInfo
    token: int = field(default_factory=lambda: next(_tokens))  # identity for merge signatures (ids get reused)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def known_base_versions() -> dict:
    """Every `ss_base_model_version` value the pack can name → the model's label."""
    from ..registry import REGISTRY  # here: the registry imports the families, which import this package

    own: dict = {}
    for spec in REGISTRY.values():
        for version in spec.base_versions:
            own.setdefault(version.lower(), spec.label)  # a version several entries share: the first entry's label
    return {**OTHER_BASE_VERSIONS, **own}


def _foreign_family(spec, info: LoraInfo) -> str | None:
    version = (info.base_model_version or "").strip().lower()
    if not version or version in {v.lower() for v in spec.base_versions}:
        return None
    return known_base_versions().get(version)


def _guess_from_keys(keys) -> str | None:
    for fragment, family in KEY_HINTS:
        if any(fragment in k for k in keys):
            return family
    return None


def _check_tensors(name: str, parsed) -> None:
    """Damaged modules and NaN/Inf values are refused at Apply, naming the module or key (never a torch error or a
    black image at Sample)."""
    broken = [(n, why) for n, why in ((n, m.problem()) for n, m in parsed.modules.items()) if why]
    if broken:
        first, why = broken[0]
        more = f" ({len(broken) - 1} more modules like it)" if len(broken) > 1 else ""
        raise LoraError(f"LoRA file {name} is damaged: module {first}: {why}{more}. Re-save the LoRA from "
                        "ai-toolkit (or copy the file again).")
    for mod in parsed.modules.values():
        bad = mod.first_non_finite()
        if bad:
            raise LoraError(f"LoRA file {name} holds NaN or Inf values (first in {bad}): the training run diverged "
                            "at or before this checkpoint, and it would render a black image. Use an earlier "
                            "checkpoint of the run (and a lower learning rate for the next one).")


INCOMPLETE = ("its modules have no lora_up/lora_B tensors (only lora_down or alpha): the file is incomplete (or "
              "damaged). Re-save it from ai-toolkit")


def _no_match_cause(report, parsed, tensors) -> str:
    kinds = {m.kind for m in parsed.modules.values()}
    if kinds == {"incomplete"} or (kinds == {"fullrank"} and report.shape_mismatch and any(
            ".alpha" in k for k in tensors)):  # rank-sized lora_down + alpha without lora_up: not a full-rank file
        return INCOMPLETE
    if report.shape_mismatch and not report.unmatched:
        return ("every module has the wrong shape: it was trained on another model with the same layer names "
                "(e.g. an SD 1.5 LoRA on SDXL or the other way round)")
    guess = _guess_from_keys(tensors) if not report.shape_mismatch else None
    if guess:
        return f"this looks like a {guess} LoRA"
    if not parsed.modules:
        return "it holds no LoRA weights (is it a checkpoint or an embedding?)"
    if kinds == {"unsupported"}:
        return "all of its modules are of a kind this pack does not apply yet: " + parsed.modules[
            next(iter(parsed.modules))].unsupported_reason
    return "none of its layer names exist in this model"


def _sliced_shape(shape, rows: slice | None):
    if shape is None or rows is None:
        return shape
    return (len(range(*rows.indices(shape[0]))),) + tuple(shape[1:])


def _fits(components, alias, mod) -> bool:
    weight = components[alias.component].get_submodule(alias.path).weight
    want = _sliced_shape(mod.expected_shape(), alias.rows)
    have = tuple(weight.shape) if alias.into is None else _sliced_shape(tuple(weight.shape), alias.into)
    return want is None or tuple(have) == tuple(want)


def _rows_cover(aliases, mod) -> bool:
    """A fused file module split by rows must hand out exactly all of its rows."""
    split = [a.rows for a in aliases if a.rows is not None]
    shape = mod.expected_shape()
    if not split or shape is None:
        return True
    return sum(len(range(*r.indices(shape[0]))) for r in split) == shape[0]


def bind_lora(path: str, spec, components: dict, index: dict | None = None, role: str | None = None) -> BoundLora:
    """Read `path` and match it against the live `components` of a `spec` pipeline. Touches no weights.

    `index` (file module name → aliases) defaults to the family's (`Family.lora_index` for `role`: where a
    multi-expert family's `lora_plan` sends this file)."""
    name = os.path.basename(path)
    snapshot = read_lora(path)  # one read: header, metadata and tensors agree, in memory of their own
    info = info_from(name, snapshot.entries, snapshot.metadata)
    foreign = _foreign_family(spec, info)
    if foreign:
        raise LoraError(f"{name} is a {foreign} LoRA (its metadata says ss_base_model_version="
                        f"{info.base_model_version!r}); the pipeline is {spec.label}. Load the matching model "
                        "in LoadAIToolkitPipeline.")
    tensors = snapshot.tensors
    parsed = parse_tensors(tensors)
    _check_tensors(name, parsed)
    if index is None:
        from ..families import get_family

        index = get_family(spec).lora_index(spec, components, role)
    report = MatchReport(file=name, total_keys=len(tensors), leftovers=list(parsed.leftovers))
    targets = []
    for mod_name, mod in parsed.modules.items():
        kind = mod.kind
        if kind in ("unsupported", "incomplete"):
            report.unsupported.append((mod_name, mod.unsupported_reason))
            continue
        aliases = index.get(mod_name)
        if aliases is None:
            report.unmatched.append(mod_name)
            continue
        if not all(_fits(components, alias, mod) for alias in aliases) or not _rows_cover(aliases, mod):
            report.shape_mismatch.append(mod_name)
            continue
        comp = aliases[0].component
        report.applied[comp] = report.applied.get(comp, 0) + 1
        report.applied_keys += len(mod.keys)
        report.zero_modules += int(mod.is_zero())
        targets.extend(Target(a.component, a.path, mod, a.rows, a.into) for a in aliases)
    if not targets:
        raise LoraError(f"No key of {name} applies to {spec.label} ({len(tensors)} keys): "
                        f"{_no_match_cause(report, parsed, tensors)}. Use a LoRA trained for this model, or load "
                        "the model it was trained on.")
    _check_mostly_applies(name, spec, report, tensors)
    return BoundLora(path, targets, report, info)


def _check_mostly_applies(name, spec, report, tensors) -> None:
    """A file whose modules mostly find no target (by name or by shape) was made for another model."""
    missed = len(report.unmatched) + len(report.shape_mismatch)
    matchable = report.applied_modules + missed
    if report.applied_modules >= MIN_APPLIED_FRACTION * matchable:
        return
    guess = _guess_from_keys(tensors)
    likely = f"it looks like a {guess} LoRA" if guess else "it was trained on another model"
    raise LoraError(f"{name} does not fit {spec.label}: only {report.applied_modules} of its {matchable} modules "
                    f"apply ({len(report.unmatched)} match no layer, {len(report.shape_mismatch)} have the wrong "
                    f"shape), so {likely} (e.g. SD 1.5 against SDXL). A LoRA in ai-toolkit's layout applies in full "
                    "on the model it was trained on: load that model in LoadAIToolkitPipeline.")
