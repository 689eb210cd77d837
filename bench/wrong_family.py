"""Measures (prints) how much of a real-size ai-toolkit SD 1.5 / SDXL LoRA binds to its own and to the other family.

Question: at what applied fraction does "most of this LoRA's modules find no target" mean "trained on another family"
(an error) rather than a legitimate partial match? No real LoRA files are needed: the real Diffusers configs under
`pipelines/configs/{sd15,sdxl}` are built at full size on the meta device (no weights), and for each variant the
file's module names and shapes (rank 4) are generated from that structure the way ai-toolkit's LoRASpecialNetwork
writes them (docs: /work/shared/research/ai-toolkit-sampling.md §3.1, §4.2):

- UNet: every Linear and 1x1 Conv2d inside each `Transformer2DModel`; with `conv`, also every Linear/Conv2d inside
  `ResnetBlock2D`, `Downsample2D`, `Upsample2D` (conv1/conv2/conv_shortcut/time_emb_proj, sampler convs). Keys are
  `lora_unet_<diffusers path, . -> _>`, or for SDXL files of 2023-09 … 2024-07 the SGM/LDM path (`sgm_names.py`).
- Text encoders (train_text_encoder): the Linears of `CLIPAttention`/`CLIPMLP`, named with `text_model.` (ai-toolkit's
  pinned transformers) under `lora_te_` (SD 1.5) or `lora_te1_`/`lora_te2_` (SDXL).

Each file is matched with the engine's real `build_index` and the shape rule of `bind.py` (a module applies when its
name is in the index and `lora_up @ lora_down` has the live weight's shape; otherwise it is `unmatched` or
`shape_mismatch`). The generated names are cross-checked against `tiny.lora_targets` (what the test fixtures use).
With `--bind`, each file is also written (bf16 zeros) and passed to the real `bind_lora`, and its verdict today
(applies / raises) is printed in a last column.

    .venv/bin/python bench/wrong_family.py [--bind]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from types import SimpleNamespace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.fixtures.pack_import import import_pack  # noqa: E402  (the pack as `aitk_pack`, as the tests import it)

RANK = 4

UNET_BLOCKS = ("Transformer2DModel",)
CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TE_BLOCKS = ("CLIPAttention", "CLIPMLP")
TE_PREFIX = {"sd15": {"text_encoder": "lora_te"}, "sdxl": {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}}


def build_meta(model_id: str) -> dict:
    """The real-size UNet and text encoders of `model_id` on the meta device, from the pack's bundled configs."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = os.path.join(ROOT, "pipelines", "configs", model_id)
    with torch.device("meta"):
        comps = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(os.path.join(cfg, "unet"))),
                 "text_encoder": CLIPTextModel(CLIPTextConfig.from_json_file(
                     os.path.join(cfg, "text_encoder", "config.json")))}
        if model_id == "sdxl":
            comps["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig.from_json_file(
                os.path.join(cfg, "text_encoder_2", "config.json")))
    return comps


def aitk_targets(comps: dict, conv: bool, unet: bool = True, text: bool = False) -> list:
    """[(component, module path, module)] ai-toolkit's LoRASpecialNetwork wraps (independent of tiny.lora_targets)."""
    out = []
    if unet:
        blocks = UNET_BLOCKS + (CONV_BLOCKS if conv else ())
        seen = set()
        for name, block in comps["unet"].named_modules():
            if type(block).__name__ not in blocks:
                continue
            for sub, m in block.named_modules():
                path = f"{name}.{sub}" if sub else name
                if path in seen or not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                    continue
                if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1) and not conv:
                    continue  # a 3x3 conv inside a transformer block (none in SD) is a conv-rank target only
                seen.add(path)
                out.append(("unet", path, m))
    if text:
        for comp in ("text_encoder", "text_encoder_2"):
            te = comps.get(comp)
            if te is None:
                continue
            for name, block in te.named_modules():
                if type(block).__name__ in TE_BLOCKS:
                    for sub, m in block.named_modules():
                        if isinstance(m, torch.nn.Linear):
                            out.append((comp, f"{name}.{sub}", m))
    return out


def file_modules(model_id: str, comps: dict, targets: list, naming: str) -> dict:
    """{file module name: expected weight shape (what lora_up @ lora_down gives)} for a rank-4 file."""
    from aitk_pack.pipelines.families.sd.sgm_names import sgm_name

    out = {}
    for comp, path, m in targets:
        if comp == "unet":
            name = sgm_name(path, comps["unet"].config) if naming == "sgm" else path
            if name is None:
                raise RuntimeError(f"no SGM name for {path}")
            key = "lora_unet_" + name.replace(".", "_")
        else:
            name = path if path.startswith("text_model.") else "text_model." + path
            key = TE_PREFIX[model_id][comp] + "_" + name.replace(".", "_")
        if key in out:
            raise RuntimeError(f"duplicate key {key}")
        # linear (out, in); conv (out, in, kh, kw) = up (out, r, 1, 1) applied to down (r, in, kh, kw)
        out[key] = tuple(m.weight.shape)
    return out


def factor_tensors(modules: dict, dtype=torch.bfloat16) -> dict:
    """The file's tensors (zeros; ai-toolkit layout: .lora_down.weight, .lora_up.weight, .alpha)."""
    sd = {}
    for key, shape in modules.items():
        if len(shape) == 2:
            down, up = (RANK, shape[1]), (shape[0], RANK)
        else:
            down, up = (RANK, shape[1], *shape[2:]), (shape[0], RANK, 1, 1)
        sd[f"{key}.lora_down.weight"] = torch.zeros(down, dtype=dtype)
        sd[f"{key}.lora_up.weight"] = torch.zeros(up, dtype=dtype)
        sd[f"{key}.alpha"] = torch.tensor(float(RANK), dtype=dtype)
    return sd


def match(modules: dict, comps: dict, spec) -> dict:
    """bind.py's rule on (name, shape) pairs: applied / unmatched / shape_mismatch, by component for `applied`."""
    from aitk_pack.pipelines.families import get_family

    index = get_family(spec).lora_index(spec, comps)
    res = {"applied": 0, "unmatched": 0, "shape_mismatch": 0, "by_comp": {}, "blocks": {}}
    for name, shape in modules.items():
        hit = index.get(name)
        if hit is None:
            res["unmatched"] += 1
            continue
        comp, mpath = hit[0].component, hit[0].path
        if tuple(comps[comp].get_submodule(mpath).weight.shape) != shape:
            res["shape_mismatch"] += 1
            continue
        res["applied"] += 1
        res["by_comp"][comp] = res["by_comp"].get(comp, 0) + 1
        block = mpath.split(".transformer_blocks.")[0].split(".resnets.")[0].split(".downsamplers.")[0]
        block = block.split(".upsamplers.")[0]
        key = block if comp == "unet" else f"{comp}:{block}"
        res["blocks"][key] = res["blocks"].get(key, 0) + 1
    return res


def check_parse_rule(modules: dict):
    """The shapes above are what parse.LoraModule.expected_shape derives from the factor tensors (a few modules)."""
    from aitk_pack.pipelines.lora.parse import parse_tensors

    sample = dict(list(modules.items())[:40] + list(modules.items())[-40:])
    with torch.device("meta"):
        parsed = parse_tensors(factor_tensors(sample))
    for name, mod in parsed.modules.items():
        assert tuple(mod.expected_shape()) == sample[name], (name, mod.expected_shape(), sample[name])


VARIANTS = (
    # name, unet, conv, text, naming
    ("unet-linear", True, False, False, "diffusers"),
    ("unet+conv", True, True, False, "diffusers"),
    ("unet-linear+te", True, False, True, "diffusers"),
    ("unet+conv+te", True, True, True, "diffusers"),
    ("te-only", False, False, True, "diffusers"),
)
SGM_VARIANTS = (
    ("sgm unet-linear", True, False, False, "sgm"),
    ("sgm unet+conv", True, True, False, "sgm"),
    ("sgm unet+conv+te", True, True, True, "sgm"),
)


def bind_verdict(modules: dict, spec, comps: dict, folder: str, label: str) -> str:
    from safetensors.torch import save_file

    from aitk_pack.pipelines.errors import LoraError
    from aitk_pack.pipelines.lora.bind import bind_lora

    path = os.path.join(folder, label.replace(" ", "_").replace("+", "_") + ".safetensors")
    if not os.path.exists(path):
        save_file(factor_tensors(modules), path)
    try:
        bound = bind_lora(path, spec, comps)
        return f"binds ({bound.report.applied_modules})"
    except LoraError as e:
        return "raises: " + str(e).split(": ", 1)[1][:60]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bind", action="store_true", help="also write each file and run the real bind_lora on it")
    ap.add_argument("--detail", action="store_true", help="list where a wrong-family file's applied modules land")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import_pack()
    from tests.fixtures import tiny_sd as tiny
    from aitk_pack.pipelines.registry import REGISTRY

    models = {m: build_meta(m) for m in ("sd15", "sdxl")}
    files = []
    for model_id, comps in models.items():
        variants = VARIANTS + (SGM_VARIANTS if model_id == "sdxl" else ())
        for label, unet, conv, text, naming in variants:
            targets = aitk_targets(comps, conv=conv, unet=unet, text=text)
            if unet:  # cross-check against the fixtures' generator (it always includes the UNet)
                ref = [(c, p) for c, p, _ in tiny.lora_targets(SimpleNamespace(**comps), conv=conv, text=text)]
                assert ref == [(c, p) for c, p, _ in targets], f"{model_id} {label}: differs from tiny.lora_targets"
            modules = file_modules(model_id, comps, targets, naming)
            check_parse_rule(modules)
            files.append((f"{model_id} {label}", model_id, modules))

    tmpdir = tempfile.TemporaryDirectory(prefix="aitk_wrongfam_") if args.bind else None
    tmp = tmpdir.name if tmpdir else None
    head = (f"{'file variant':<22} {'target':<6} {'modules':>7} {'applied':>7} {'unmatched':>9} {'shape_mm':>8} "
            f"{'applied%':>8}")
    print(f"real-size Diffusers structures (meta device), rank {RANK}; shape rule of bind.py\n")
    print(head + ("  bind_lora today" if args.bind else "") + "  applied by component")
    print("-" * (len(head) + 40))
    own_min, foreign_max = (None, 1.0), (None, 0.0)
    for label, fam, modules in files:
        for target, comps in models.items():
            r = match(modules, comps, REGISTRY[target])
            n = len(modules)
            frac = r["applied"] / n
            by = ", ".join(f"{c} {k}" for c, k in sorted(r["by_comp"].items())) or "-"
            line = (f"{label:<22} {target:<6} {n:>7} {r['applied']:>7} {r['unmatched']:>9} "
                    f"{r['shape_mismatch']:>8} {100 * frac:>7.1f}%")
            if args.bind:
                line += "  " + bind_verdict(modules, REGISTRY[target], comps, tmp, label)
            print(line + "  " + by)
            if args.detail and target != fam and r["blocks"]:
                print("    applied in: " + ", ".join(f"{b} ({k})" for b, k in sorted(r["blocks"].items())))
            if target == fam and frac <= own_min[1]:
                own_min = (f"{label} on {target}", frac)
            if target != fam and frac > foreign_max[1]:
                foreign_max = (f"{label} on {target}", frac)
        print()
    print(f"smallest applied fraction, own family:     {100 * own_min[1]:.1f}%  ({own_min[0]})")
    print(f"largest applied fraction, wrong family:    {100 * foreign_max[1]:.1f}%  ({foreign_max[0]})")
    if tmpdir:
        tmpdir.cleanup()


if __name__ == "__main__":
    main()
