"""LoKr against ostris/ai-toolkit's own `LokrModule` (not a test: needs the ai-toolkit source, never committed).

Loads ai-toolkit's real `toolkit/network_mixins.py` and `toolkit/models/lokr.py` (their other toolkit imports and
torchao stubbed; optimum-quanto from the pack's test requirements) and checks, for Linear / 3x3 / 1x1 conv layers,
ai-toolkit's default full-rank LoKr and factorised ones (several dims and alphas), multipliers 1.0 and 0.7, fp32 and
bf16 layers:
- tests/fixtures/lokr_files.py writes exactly the state-dict keys, shapes and alpha a LokrModule saves;
- the pack's scale equals `LokrModule.scale`;
- `LokrModule.merge_in(m)` leaves the same weight bits as the pack's merge term `(W.float() + term).to(W.dtype)`;
- the unmerged forward (`LokrModule.forward` after `apply_to`) equals the pack's branch bit for bit.

Run from the pack root (git show the two files of a 27a03a91 checkout into DIR/toolkit/...):
  .venv/bin/python tools/aitk_lokr_check.py --aitk DIR
Exit status 0 when every configuration is bit-identical.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import itertools
import os
import sys
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _stub(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _load(name, path, replace=()):
    source = open(path).read()
    for old, new in replace:
        source = source.replace(old, new)
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def load_ai_toolkit(aitk: str):
    toolkit = _stub("toolkit")
    toolkit.__path__ = []
    _stub("toolkit.config_modules", NetworkConfig=object)
    _stub("toolkit.lorm", extract_conv=None, extract_linear=None, count_parameters=None)
    _stub("toolkit.metadata", add_model_hash_to_meta=None)
    _stub("toolkit.paths", KEYMAPS_ROOT="")
    _stub("toolkit.saving", get_lora_keymap_from_model_keymap=None)
    _stub("toolkit.util").__path__ = []
    _stub("toolkit.util.quantize", is_quantized_tensor=lambda t: False)
    _stub("toolkit.models").__path__ = []
    _load("toolkit.network_mixins", os.path.join(aitk, "toolkit", "network_mixins.py"))
    return _load("toolkit.models.lokr", os.path.join(aitk, "toolkit", "models", "lokr.py"),
                 replace=[("from torchao.dtypes import AffineQuantizedTensor",
                           "class AffineQuantizedTensor:  # stub: torchao is not needed here\n    pass")])


class _Network:
    """What a LokrModule reads of its LoRASpecialNetwork while sampling (one prompt at a time)."""
    is_lorm, is_active, is_merged_in, base_model_ref = False, True, False, None

    def __init__(self, multiplier):
        self._multiplier = multiplier
        self.torch_multiplier = torch.tensor((multiplier,)).to("cpu", dtype=torch.float32)


LAYERS = {"linear": (lambda: torch.nn.Linear(96, 64), lambda d: torch.randn(2, 5, 96, dtype=d)),
          "linear_wide": (lambda: torch.nn.Linear(32, 512), lambda d: torch.randn(2, 32, dtype=d)),
          "conv3x3": (lambda: torch.nn.Conv2d(64, 128, 3, padding=1), lambda d: torch.randn(2, 64, 8, 8, dtype=d)),
          "conv1x1": (lambda: torch.nn.Conv2d(128, 64, 1), lambda d: torch.randn(2, 128, 8, 8, dtype=d))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--aitk", required=True, help="ai-toolkit source folder (with toolkit/network_mixins.py and "
                                                  "toolkit/models/lokr.py)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from tests.fixtures.pack_import import import_pack
    import_pack()  # before the stubs: transformers probes for torchao
    from aitk_pack.pipelines.lora import lokr as pack_lokr
    from aitk_pack.pipelines.lora.parse import parse_tensors
    from tests.fixtures.lokr_files import AITK_FULL_RANK, factorization, lokr_tensors

    lk = load_ai_toolkit(args.aitk)
    assert all(lk.factorization(d, f) == factorization(d, f) for d in range(1, 600) for f in (-1, 2, 4, 8, 16))
    failures, checked = [], 0
    configs = [(AITK_FULL_RANK, AITK_FULL_RANK), (4, 2.0), (2, 1.0), (8, 8), (2, None), (3, 0)]
    for (layer, (make, inputs)), (dim, alpha), mult, dtype in itertools.product(
            LAYERS.items(), configs, (1.0, 0.7), (torch.float32, torch.bfloat16)):
        case = (layer, dim, alpha, mult, str(dtype))
        torch.manual_seed(0)
        org = make().to(dtype)
        network = _Network(mult)  # LokrModule keeps only a weakref
        module = lk.LokrModule("lora_unet_x", org, 1.0, dim, alpha, network=network, factor=-1)
        parts = lokr_tensors(org, dim, alpha, gen=torch.Generator().manual_seed(1))
        state = module.state_dict()
        if set(state) != set(parts) or any(state[k].shape != parts[k].shape for k in parts) or \
                float(state["alpha"].float()) != float(parts["alpha"].float()):
            failures.append((case, "layout", sorted(state), sorted(parts)))
            checked += 1
            continue
        module.load_state_dict(parts, strict=True)
        mod = next(iter(parse_tensors({f"lora_unet_x.{k}": v for k, v in parts.items()}).modules.values()))
        if mod.kind != "lokr" or mod.problem() or module.scale != pack_lokr.scale(parts):
            failures.append((case, "scale", module.scale, pack_lokr.scale(parts)))
        pristine = org.weight.detach().clone()
        merged = copy.deepcopy(org)
        module.org_module = [merged]
        module.merge_in(mult)
        if not torch.equal(merged.weight.detach(),
                           (pristine.float() + mod.weight_term(mult, "cpu", pristine.shape)).to(dtype)):
            failures.append((case, "merge_in"))
        hooked, ours = copy.deepcopy(org), copy.deepcopy(org)
        module.org_module = [hooked]
        module.apply_to()
        x = inputs(dtype)
        with torch.no_grad():
            want = hooked(x)
            term = mod.branch(ours, mult)
            if getattr(term, "replaces_forward", False):
                got = pack_lokr.conv_forward(ours, x, [term])
            else:
                out = ours(x)
                got = out + term(x, out.dtype)
        if want.dtype != got.dtype or not torch.equal(want, got):
            failures.append((case, "forward", float((want.float() - got.float()).abs().max())))
        checked += 1
    for failure in failures:
        print("DIFFERS", *failure)
    print(f"{checked - len({f[0] for f in failures})}/{checked} configurations bit-identical to ai-toolkit's LokrModule "
          "(layout, scale, merge_in, forward)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
