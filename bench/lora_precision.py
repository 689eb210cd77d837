"""Measures (prints) how far a LoRA saved in bf16/fp16 lands from the fp32 preview, on tiny random models.

ai-toolkit samples with the fp32 LoRA weights in memory; the saved file may hold bf16 (UI default) or fp16 (YAML
default) copies. This renders the same LoRA from an fp32 file and from rounded files and prints the pixel difference.

    python bench/lora_precision.py [--size 128] [--steps 20]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sd import import_pack  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import_pack()
    from aitk_pack.pipelines import engine
    from tests.fixtures import tiny_sd as tiny
    from safetensors.torch import save_file

    root = tempfile.mkdtemp(prefix="aitk_prec_")
    print(f"tiny models, {args.size}x{args.size}, {args.steps} steps, LoRA rank 4 (linear + conv), seed 42")
    print("model  sampling  file   pixels differing   max level diff   mean |diff|")
    for model in ("sd15", "sdxl"):
        folder = tiny.save_tiny(model, os.path.join(root, "diffusers", f"tiny-{model}"))
        pipe = tiny.BUILDERS[model]()
        paths = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
            paths[name] = os.path.join(root, f"{model}_{name}.safetensors")
            save_file(tiny.make_lora(pipe, model, conv=True, dtype=dtype), paths[name])
        for sampling in ("fp32", "bf16"):
            base = engine.load(model, base=os.path.basename(folder), dtype=sampling, device="cpu",
                               roots=engine.ModelRoots(diffusers=(os.path.join(root, "diffusers"),)))
            shots = {n: engine.generate(base.with_lora(p, 1.0), "photo of a red fox", width=args.size,
                                        height=args.size, steps=args.steps, seed=42).astype(int)
                     for n, p in paths.items()}
            for name in ("bf16", "fp16"):
                diff = np.abs(shots[name] - shots["fp32"])
                print(f"{model:5s}  {sampling:8s}  {name:5s}  {int((diff.max(-1) > 0).sum()):6d} / {diff.shape[1] * diff.shape[2]:6d}"
                      f"   {int(diff.max()):14d}   {diff.mean():.3f}")


if __name__ == "__main__":
    main()
