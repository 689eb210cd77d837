"""Merging LoRA stacks into a cached base the way ai-toolkit samples with them, and restoring it exactly.

ai-toolkit merges the fp32 LoRA into the weights before sampling when every prompt shares one multiplier
(`merge_in`): `W_new = (W.float() + m * product * scale).to(W.dtype)`, one rounding. Its `merge_out` subtracts
again, which drifts the base; here the touched weights are instead kept pristine (a CPU copy taken the first time a
weight is touched) and copied back, which is exact and cheaper. Several LoRAs of one chain are summed in fp32 in
chain order and rounded once.

When the prompts of one ai-toolkit sample event use different multipliers (`--m`), ai-toolkit does not merge: each
LoRA runs as an fp32 side branch added to the module's output in its dtype. `mode="branch"` reproduces that by
wrapping each target's `forward` as ai-toolkit does (LoRA/LoCon and LoKr modules; full-delta modules are merged either
way; a LoKr Conv2d replaces the forward, as ai-toolkit's does: see lokr.py).

On a quantized base ai-toolkit never merges (`BaseSDTrainProcess` sets `network.can_merge_in = False` when
`model.quantize` is set, for every module of the network, quantized layer or not): `mode="quantized"` runs every
LoRA, full-rank and LoKr module as that branch over the (quanto) layer, whose weights are never written, and a
patcher built over components holding quantized layers uses it whatever mode is asked for. Full deltas cannot be
added to quantized weights and are refused there.

`WeightPatcher.set_stack(stack, mode)` brings the base to "pristine + stack"; calling it with the stack already in
place does nothing. Any failure restores every touched weight before the error propagates.

A stack item is `(bound, multiplier)` or a `StackEntry`, which also says how that LoRA is applied: its `stage`
(stages are merged in ascending order, each rounded into the weights before the next stage reads them, as when
ai-toolkit merges an adapter at load and the user's LoRA later onto those merged weights; plain pairs are stage 0)
and `branch_dtype` (always an unmerged branch computed in that dtype, whatever the mode: a network ai-toolkit keeps
in the model dtype, not fp32), or `merged` (always merged, whatever the mode: an adapter ai-toolkit merged at load).
Branches of a later stage wrap those of an earlier one.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import LoraError
from ..quantize import is_quantized
from . import lokr

MODES = ("merge", "branch", "quantized")
# ai-toolkit runs LoKr unmerged in both cases too (`LokrModule._call_forward`); see lokr.py.
BRANCHED_KINDS = {"merge": (), "branch": ("lora", "lokr"), "quantized": ("lora", "fullrank", "lokr")}


@contextmanager
def _exact_matmul():
    """fp32 matmuls without TF32 (torch's default, which ai-toolkit keeps); other nodes may have flipped it."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@dataclass(frozen=True)
class StackEntry:
    """One LoRA of a stack and how it is applied (see the module docstring)."""
    bound: object
    multiplier: float
    stage: int = 0
    branch_dtype: torch.dtype | None = None
    merged: bool = False


def stack_entries(stack) -> list:
    return [item if isinstance(item, StackEntry) else StackEntry(*item) for item in stack]


class _Unpatch:
    """Undo an instance-level `forward` wrapper."""

    def __init__(self, module):
        self.module = module

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


class WeightPatcher:
    """Owns the LoRA state of one cached base (its components dict: name -> nn.Module)."""

    def __init__(self, components: dict, quantized: bool | None = None):
        self.components = components
        # None: quantized when any component holds a quantized layer (the base was loaded with quantization on).
        if quantized is None:
            quantized = any(is_quantized(m) for comp in components.values() for m in comp.modules())
        self.quantized = quantized
        self.pristine: dict = {}   # (component, module path, "weight"|"bias") -> CPU tensor
        self.signature: tuple = ()
        self.branches: list = []
        self.lock = threading.RLock()

    def _param(self, key):
        comp, path, attr = key
        return getattr(self.components[comp].get_submodule(path), attr)

    def restore(self) -> None:
        """Remove side branches and copy every touched weight back from its pristine copy."""
        with self.lock, torch.no_grad():
            for branch in self.branches:
                branch.remove()
            self.branches = []
            for key, saved in self.pristine.items():
                param = self._param(key)
                param.data.copy_(saved.to(param.device), non_blocking=False)
            self.signature = ()

    def set_stack(self, stack, mode: str = "merge") -> None:
        """stack: sequence of (BoundLora, multiplier). Brings the base to pristine + the stack (merged once, or as
        fp32 side branches with mode="branch"; on a quantized base always mode="quantized")."""
        if mode not in MODES:
            raise ValueError(f"unknown LoRA mode {mode!r}")
        if self.quantized:
            mode = "quantized"
        entries = stack_entries(stack)
        signature = (mode,) + tuple((e.bound.token, float(e.multiplier), e.stage, str(e.branch_dtype), e.merged)
                                    for e in entries)
        with self.lock:
            if signature == self.signature:
                return
            try:
                self.restore()
                for stage in sorted({e.stage for e in entries}):
                    self._merge([e for e in entries if e.stage == stage], BRANCHED_KINDS[mode])
                self.signature = signature
            except BaseException:
                self.restore()
                raise

    def _merge(self, stack, branched_kinds=()) -> None:
        """Merge (or branch) one stage of the stack."""
        grouped: dict = {}
        for entry in stack_entries(stack):
            for target in entry.bound.targets:
                if target.module.is_zero():
                    continue  # ai-toolkit skips all-zero modules: the weight is not rewritten at all
                dt = entry.branch_dtype
                item = (target, float(entry.multiplier), dt, dt is not None or (
                    not entry.merged and target.module.kind in branched_kinds))
                grouped.setdefault((target.component, target.path), []).append(item)
        with torch.no_grad(), _exact_matmul():
            for (comp, path), items in grouped.items():
                module = self.components[comp].get_submodule(path)
                branched = [(t, mult, dt) for t, mult, dt, as_branch in items if as_branch]
                if branched:
                    self._add_branches(module, branched)
                entries = [(t, mult) for t, mult, dt, as_branch in items if not as_branch]
                if not entries:
                    continue
                if is_quantized(module):
                    lora_module = entries[0][0].module
                    raise LoraError(f"{lora_module.name} ({lora_module.kind}) cannot be merged into {comp}.{path}: "
                                    "that layer is quantized. Full-weight deltas are not supported on quantized "
                                    "bases; load the base without quantization.")
                shape = tuple(module.weight.shape)  # a LoKr delta is reshaped to it (never for a row slice)
                self._merge_param(comp, path, module, "weight", entries,
                                  lambda t, mult, dev: t.module.weight_term(mult, dev, None if t.rows else shape))
                if any("diff_b" in t.module.tensors for t, _ in entries) and getattr(module, "bias", None) is not None:
                    self._merge_param(comp, path, module, "bias", entries,
                                      lambda t, mult, dev: t.module.bias_term(mult, dev))

    def _add_branches(self, module, entries) -> None:
        """Wrap the module's forward as ai-toolkit's `apply_to` does (an instance `forward`, removed on restore).
        A sliced target adds its rows of the branch output (the full product is computed, then sliced, as the
        fused layer would compute it) into its rows of the output."""
        terms = [(t.module.branch(module, mult) if dt is None else t.module.branch(module, mult, dt), t.rows, t.into)
                 for t, mult, dt in entries]
        # a LoKr Conv2d replaces the layer's forward (conv with W + delta) instead of adding to its output
        replacing = [term for term, _, _ in terms if getattr(term, "replaces_forward", False)]
        terms = [entry for entry in terms if not getattr(entry[0], "replaces_forward", False)]
        original = module.forward
        channel_dim = 1 if isinstance(module, torch.nn.Conv2d) or getattr(module, "weight", None) is not None and \
            module.weight.ndim == 4 else -1

        def forward(x, *args, **kwargs):
            output = lokr.conv_forward(module, x, replacing) if replacing else original(x, *args, **kwargs)
            for term, rows, into in terms:
                add = term(x, output.dtype)
                if rows is not None:
                    add = add.narrow(channel_dim, rows.start, rows.stop - rows.start)
                if into is None:
                    output = output + add
                else:
                    output = output.clone()
                    part = output.narrow(channel_dim, into.start, into.stop - into.start)
                    part.copy_(part + add)
            return output
        module.forward = forward
        self.branches.append(_Unpatch(module))

    def _merge_param(self, comp, path, module, attr, entries, term) -> None:
        param = getattr(module, attr)
        key = (comp, path, attr)
        if key not in self.pristine:
            self.pristine[key] = param.detach().to("cpu", copy=True)
        acc = param.detach().float()
        for target, multiplier in entries:
            add = term(target, multiplier, param.device)
            if add is None:
                continue
            if target.rows is not None:
                add = add[target.rows]
            if target.into is None:
                acc = acc + add
            else:
                acc = acc.clone()
                acc[target.into] = acc[target.into] + add
        param.data.copy_(acc.to(param.dtype))
