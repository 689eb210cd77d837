"""Loading and component preparation shared by the families: read a base as ai-toolkit loads it.

- `from_source`: a Diffusers pipeline class from a Hub snapshot, a Diffusers folder or a single file, offline,
  with any loader failure turned into a ModelSourceError naming the base;
- `prepare_components`: every module complete (nothing left on meta), cast to the sampling dtype on the device,
  owning its memory, `requires_grad_(False)`, eval (ai-toolkit: `.to(device, dtype)` then `requires_grad_(False)`);
- `quantize_components`: ai-toolkit's quantization of the spec's `QuantSpec` components after that cast.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from ..errors import ModelSourceError
from ..sources import hub_snapshot


def from_source(cls, spec, source, hub_skip: tuple = (), **kwargs):
    """`cls.from_pretrained` / `from_single_file` for a resolved `BaseSource`, offline. `hub_skip`: file patterns of
    a Hub base never to download (the parts passed in `kwargs` from elsewhere)."""
    try:
        if source.kind == "single_file":
            return cls.from_single_file(source.location, config=source.config_dir, local_files_only=True, **kwargs)
        folder = hub_snapshot(source.location, skip=hub_skip) if source.kind == "hub" else source.location
        return cls.from_pretrained(folder, local_files_only=True, **kwargs)
    except ModelSourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - Diffusers raises many types for unreadable or wrong models
        raise ModelSourceError(
            f"Could not load {os.path.basename(source.location)} as {spec.label} ({type(exc).__name__}: {exc}). "
            f"Check that it is a {spec.label} model (Diffusers folder or single-file checkpoint).") from exc


def source_folder(source) -> str:
    """The local folder of a Hub or Diffusers-folder source."""
    return hub_snapshot(source.location) if source.kind == "hub" else source.location


@contextmanager
def quiet_casts():
    """`.to(dtype)` on Diffusers models warns about keep-in-fp32 lists that are empty here: silence it."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def prepare_components(pipe, label, spec, dtype, device) -> None:
    """Every module complete (nothing left on meta), in `dtype` on `device`, frozen, in eval mode."""
    with quiet_casts():
        for name, module in pipe.components.items():
            if not isinstance(module, torch.nn.Module):
                continue
            prepare_module(module, name, label, spec, dtype, device)


def prepare_module(module, name, label, spec, dtype, device) -> None:
    meta = [n for n, p in module.named_parameters() if p.device.type == "meta"]
    if meta:
        raise ModelSourceError(f"{label}: {name} has weights missing from the file ({meta[0]} …). It does "
                               f"not look like a complete {spec.label} model.")
    before = {t.data_ptr() for t in _tensors(module)}
    module.to(device=device, dtype=dtype)
    _own_memory(module, before)
    module.requires_grad_(False)
    module.eval()


def _tensors(module):
    return [t for t in (*module.parameters(), *module.buffers()) if t.numel()]


# CPU kernels pick code paths by the address alignment of their operands, and their rounding can differ between
# paths: a weight at a file's (memory-mapped) offset and the same weight in a fresh allocation can give results one
# ulp apart (measured: 1 level on a tiny FLUX.1 in fp32). The copy keeps the loaded address modulo a page.
ALIGNMENT = 4096


def _copy_keeping_alignment(tensor: torch.Tensor) -> torch.Tensor:
    if not tensor.is_contiguous():
        return tensor.clone()
    nbytes = tensor.numel() * tensor.element_size()
    raw = torch.empty(nbytes + ALIGNMENT, dtype=torch.uint8, device=tensor.device)
    shift = (tensor.data_ptr() - raw.data_ptr()) % ALIGNMENT
    if shift % tensor.element_size():
        return tensor.clone()
    copy = raw[shift:shift + nbytes].view(tensor.dtype).view(tensor.shape)
    copy.copy_(tensor)
    return copy


def _own_memory(module, loaded_ptrs: set) -> None:
    """Copy every tensor that `.to()` left where the loader put it (CPU in the file's dtype): it may be a view of
    the memory-mapped weights file, which would follow the file if it is overwritten (or SIGBUS if truncated). The
    copy sits at the same address alignment, so CPU kernels compute exactly as on the loaded weights (as ai-toolkit
    does, which keeps them where the loader put them)."""
    with torch.no_grad():
        for tensor in _tensors(module):
            if tensor.data_ptr() in loaded_ptrs:
                tensor.data = _copy_keeping_alignment(tensor.data)


def quantize_components(pipe, spec, qtype: str | None, dtype) -> list:
    """Quantize the spec's `QuantSpec.components` with ai-toolkit's `qtype` (after the cast, as ai-toolkit does);
    returns the reports. None: nothing is quantized."""
    if not qtype:
        return []
    from ..quantize import QuantizeRule, quantize_component

    reports = []
    with quiet_casts():
        for name in spec.quant.components:
            module = getattr(pipe, name, None)
            if module is None:
                continue
            reports.append(quantize_component(module, spec.quant.qtype_for(name, qtype), dtype,
                                              spec.quant.rules.get(name, QuantizeRule())))
    return reports


def step_callback_kwargs(steps: int, on_step) -> dict:
    """A Diffusers pipeline's `callback_on_step_end` arguments that call `on_step(step, total, latents)` after each
    step (nothing when `on_step` is None)."""
    if on_step is None:
        return {}

    def callback(_pipe, i, _t, tensors):
        on_step(i + 1, steps, tensors.get("latents"))
        return tensors
    return dict(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"])
