"""Quantized bases built the way ai-toolkit builds them: optimum-quanto weight-only quantization, after the cast to
the sampling dtype, frozen.

What ai-toolkit 0.12.26 (27a03a91) does, and so what `quantize_component` does:
- `toolkit/util/quantize.py:quantize` (its copy of quanto's `quantize`, which in optimum-quanto 0.2.4 still turns a
  list of `include` patterns into the `exclude` list) walks `named_modules()`, drops names failing the fnmatch
  `include` allowlist or matching an `exclude` pattern, skips modules that are already quantized, and hands the
  rest to quanto (`_quantize_submodule`: a registered type is replaced by its Q-module in its parent; only
  `nn.Linear` and `nn.Conv2d` quantize weights, `nn.LayerNorm` needs activation quantization, so stays). A module
  quanto fails on is printed and left as it is. Then `optimum.quanto.freeze` turns the float weights into
  quantized tensors (per output row: `scale = absmax(row) / 448` in the weight dtype, fp8 e4m3 data).
- The cast comes first: FLUX.1, Kontext, Chroma (and Flex.1, which is FLUX.1) do
  `.to(quantize_device, dtype=dtype)` → `quantize(model, weights=get_qtype(qtype), **quantize_kwargs)` →
  `freeze(model)`, for the transformer and the T5 alike, with no include/exclude (`quantize_kwargs` = `{}`).
  Newer families go through `quantize_model`: each block of `get_transformer_block_names()` is cast, quantized
  with the family's `get_quantization_exclude_modules()` patterns matched against block-relative names, and frozen;
  then the whole model with the same patterns (absolute names), already-quantized modules skipped.
- Finally every component is set `requires_grad_(False)` (`StableDiffusion.load_model`).

Which modules, which exclusions and which block lists are family data: pass them as a `QuantizeRule`. optimum-quanto
is optional: it is imported only here, inside functions, and its absence is a `QuantizationError` saying what to
install. Nothing else in the pack imports it.

The other backends ai-toolkit's `get_qtype` resolves, through the same passes: `uint2`..`uint7` (ai-toolkit's own
UIntX quantizer: uintx.py), `uintN|org/repo/file.safetensors` (uintN with an accuracy-recovery adapter: ara.py) and
`float8` (torchao's Float8WeightOnlyConfig: torchao.py, optional like optimum-quanto). Which of them a model offers
is registry data (`QuantSpec.qtypes`); the text encoders a preset quantizes with `qtype_te` (`QuantSpec.
te_components`) always get ai-toolkit's default `qtype_te`, qfloat8 (`QuantSpec.qtype_for`).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from fnmatch import fnmatch

import torch

from ..errors import QuantizationError
from . import torchao as ao
from . import uintx

PACKAGE = "optimum-quanto"
INSTALL = "pip install \"optimum-quanto>=0.2.4\""  # 0.2.4 is what ai-toolkit's requirements pin

# ai-toolkit qtype names (`model.qtype`, the UI's Quantization menu) that it quantizes with optimum-quanto ->
# the optimum-quanto qtype name (`toolkit/util/quantize.py:get_qtype` falls through to `optimum.quanto.qtypes`).
QTYPES = {"qfloat8": "qfloat8"}

# Reproduced here with other backends (see the module docstring).
REPRODUCED = (*uintx.BITS, *ao.QTYPES)

# The UI's other choices go to other backends (`get_qtype`): torchao, or ai-toolkit's own quantizers.
OTHER_BACKENDS = {
    **{name: "ai-toolkit's convrot quantizer" for name in ("convrot8", "convrot4", "convrotint7", "convrotint6",
                                                           "convrotint5", "convrotint4", "convrotint3", "convrotint2",
                                                           "convrotbitnet")},
    "nvfp4": "ai-toolkit's nvfp4 quantizer",
    "int8": "torchao Int8WeightOnlyConfig",
}


@dataclass(frozen=True)
class QuantizeRule:
    """Which modules of one component ai-toolkit quantizes (fnmatch patterns on `named_modules()` names).

    `blocks`: dotted paths of block lists (e.g. "transformer_blocks") that `quantize_model` handles first, one block
    at a time, with `exclude` matched against names relative to the block; empty for the legacy `quantize` call."""
    include: tuple | None = None
    exclude: tuple = ()
    blocks: tuple = ()


@dataclass
class QuantizeReport:
    qtype: str
    quantized: list = field(default_factory=list)   # module names (from the component root) now quantized
    failed: dict = field(default_factory=dict)      # module name -> error, left unquantized as ai-toolkit does
    adapted: list = field(default_factory=list)     # module names carrying an accuracy-recovery adapter


def require_quanto():
    """The optimum.quanto module, or a QuantizationError naming the package and the install command."""
    try:
        import optimum.quanto as quanto
    except ImportError as exc:
        raise QuantizationError(
            f"Quantized bases need the {PACKAGE} package (ai-toolkit quantizes with it), which is not importable "
            f"here ({exc}). Install it into ComfyUI's Python with `{INSTALL}`, or load the base with "
            "quantization off.") from exc
    return quanto


def split_qtype(name: str) -> tuple[str, str | None]:
    """(qtype, accuracy-recovery adapter or None): ai-toolkit's `ModelConfig` splits `qtype` at "|"."""
    base, _, adapter = name.partition("|")
    return base, (adapter or None)


def resolve_qtype(name: str):
    """The optimum-quanto qtype for an ai-toolkit qtype name; for the other reproduced backends, the name itself
    (after checking that torchao is importable for float8). Refuses what the pack does not reproduce."""
    base, adapter = split_qtype(name)
    if adapter is not None and base not in uintx.BITS:
        raise QuantizationError(f"qtype {name!r} is not supported: ai-toolkit pairs accuracy-recovery adapters with "
                                f"uint2..uint7 only. Supported: {', '.join((*QTYPES, *REPRODUCED))}.")
    if adapter is None and base in QTYPES:
        return require_quanto().qtypes[QTYPES[base]]
    if base in uintx.BITS:
        return name
    if base in ao.QTYPES:
        ao.require_torchao()
        return name
    why = (f"ai-toolkit quantizes it with {OTHER_BACKENDS[base]}, which is not reproduced yet"
           if base in OTHER_BACKENDS else "ai-toolkit does not offer it")
    raise QuantizationError(f"qtype {name!r} is not supported: {why}. Supported: "
                            f"{', '.join((*QTYPES, *REPRODUCED))}.")


def is_quantized(module: torch.nn.Module) -> bool:
    """Whether `module` is a quantized layer (optimum-quanto, uintX, torchao) or carries an accuracy-recovery
    adapter. Never imports quanto or torchao: nothing is quantized with them without it."""
    if isinstance(module, uintx.AdaptedLinear) or ao.is_quantized(module):
        return True
    quanto = sys.modules.get("optimum.quanto")
    return quanto is not None and isinstance(module, quanto.QModuleMixin)


def _selected(name: str, include, exclude) -> bool:
    if include is not None and not any(fnmatch(name, pattern) for pattern in include):
        return False
    return not any(fnmatch(name, pattern) for pattern in exclude)


def _quantize_pass(quanto, root, qtype, include, exclude, prefix: str, report: QuantizeReport) -> None:
    # A snapshot of named_modules() visits what ai-toolkit's live generator visits: replacing a child keeps the
    # parent's dict size, and the replaced module was already yielded.
    for name, module in list(root.named_modules()):
        if not name or not _selected(name, include, exclude) or is_quantized(module):
            continue
        try:
            qmodule = quanto.quantize_module(module, weights=qtype)
        except Exception as exc:  # ai-toolkit prints "Failed to quantize" and keeps the float module
            report.failed[prefix + name] = f"{type(exc).__name__}: {exc}"
            continue
        if qmodule is None:
            continue
        parent_name, _, leaf = name.rpartition(".")
        setattr(root.get_submodule(parent_name), leaf, qmodule)
        qmodule.name = name
        report.quantized.append(prefix + name)


def _convert_pass(root, convert, include, exclude, prefix: str, report: QuantizeReport) -> None:
    """ai-toolkit's `quantize` loop for the ostris (uintX) and torchao backends: every selected `nn.Linear`."""
    for name, module in list(root.named_modules()):
        if not name or not _selected(name, include, exclude) or not isinstance(module, torch.nn.Linear):
            continue
        if convert(module):
            report.quantized.append(prefix + name)


def quantize_component(module: torch.nn.Module, qtype: str = "qfloat8", dtype: torch.dtype | None = None,
                       rule: QuantizeRule = QuantizeRule()) -> QuantizeReport:
    """Quantize `module` in place as ai-toolkit does: cast to `dtype` (the sampling dtype) first, quantize the
    modules `rule` selects with the qtype's backend, freeze, `requires_grad_(False)`. The root itself is never
    replaced: pass a container (a model), not a bare layer."""
    base, adapter = split_qtype(qtype)
    weights = resolve_qtype(qtype)
    quanto = require_quanto() if base in QTYPES else None
    if dtype is not None:
        module.to(dtype=dtype)
    report = QuantizeReport(qtype)
    with torch.no_grad():
        if adapter is not None:
            from .ara import apply_adapter

            apply_adapter(module, adapter, uintx.BITS[base], dtype, report)
        elif quanto is None:
            if base in uintx.BITS:
                def convert(m):
                    return uintx.quantize_linear(m, uintx.BITS[base])
            else:
                if not rule.blocks:
                    raise QuantizationError(f"qtype {qtype}: ai-toolkit's torchao path is reproduced for models it "
                                            "quantizes block by block (quantize_model) only.")
                cfg = ao.config(base)

                def convert(m):
                    return ao.quantize_linear(m, cfg)
            for path in rule.blocks:
                for index, block in enumerate(module.get_submodule(path)):
                    _convert_pass(block, convert, None, rule.exclude, f"{path}.{index}.", report)
            _convert_pass(module, convert, rule.include, rule.exclude, "", report)
        else:
            for path in rule.blocks:
                for index, block in enumerate(module.get_submodule(path)):
                    _quantize_pass(quanto, block, weights, None, rule.exclude, f"{path}.{index}.", report)
                    quanto.freeze(block)
            _quantize_pass(quanto, module, weights, rule.include, rule.exclude, "", report)
            quanto.freeze(module)
    module.requires_grad_(False)
    return report
