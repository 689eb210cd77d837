"""Benchmark (not a test): Lumina-Image 2.0 node path against a bare Diffusers call, from one process.

- node path (LoadAIToolkitPipeline → ApplyAIToolkitLoRA → AIToolkitSample, "match training" = qfloat8 Gemma2, LoRA
  merged) against a bare `Lumina2Pipeline(prompt=…, negative_prompt=…)` call over the same components (same
  scheduler, seed, size, steps, guidance; the same work: two text encodings and two transformer passes a step):
  median of N, ratio; plus how far the bare call's picture is from the preview (it encodes the negative without
  the system prompt);
- a strength change over a render, with the number of base loads (1 = no reload); peak memory.
On a shared, loaded CPU the medians are noisy: compare the fastest runs too.

    python bench/bench_lumina2.py [--size 256] [--steps 10] [--repeats 3] [--device cpu] [--dtype fp32]

Runs on the tiny random model built locally (no weights needed).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sd import import_pack, timed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--quantization", default="match training")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pack = import_pack()
    from safetensors.torch import save_file

    from aitk_pack.pipelines.cache import CACHE
    from aitk_pack.pipelines.families import get_family
    from tests.fixtures import tiny_lumina2

    models = tempfile.mkdtemp(prefix="aitk_bench_lumina2_")
    os.environ["AITK_MODELS_DIR"] = models
    os.makedirs(os.path.join(models, "loras"))
    pipe = tiny_lumina2.save(os.path.join(models, "diffusers", "tiny-lumina2"))
    sd, meta = tiny_lumina2.lumina2_lora(pipe.transformer, seed=0)
    save_file(sd, os.path.join(models, "loras", "bench_lumina2.safetensors"), metadata=meta)
    del pipe

    load, apply, sample = (pack.NODE_CLASS_MAPPINGS[n]() for n in
                           ("LoadAIToolkitPipeline", "ApplyAIToolkitLoRA", "AIToolkitSample"))
    inputs = dict(prompt="photo of a red fox in the snow", negative_prompt="blurry", trigger_word="",
                  width=args.size, height=args.size, seed=42, steps=args.steps, guidance_scale=4.0)
    cold, (handle,) = timed(lambda: load.load(model="lumina2", base="tiny-lumina2", dtype=args.dtype,
                                              device=args.device, quantization=args.quantization))
    with_lora = apply.apply(pipeline=handle, lora_name="bench_lumina2.safetensors", strength=1.0)["result"][0]
    node_out = sample.sample(pipeline=with_lora, **inputs)  # warm-up, LoRA merged
    node_out = node_out["result"][0] if isinstance(node_out, dict) else node_out[0]
    spec, base = with_lora.spec, with_lora.base
    family = get_family(spec)

    def bare():  # the stock call over the same (merged) components and ai-toolkit's effective scheduler
        from diffusers import Lumina2Pipeline

        p = Lumina2Pipeline(**{n: getattr(base.pipe, n) for n in family.parts}, scheduler=family.scheduler(spec))
        p.set_progress_bar_config(disable=True)
        with torch.no_grad():
            return p(prompt=inputs["prompt"], negative_prompt=inputs["negative_prompt"], height=args.size,
                     width=args.size, num_inference_steps=args.steps, guidance_scale=4.0, output_type="np",
                     generator=torch.Generator("cpu").manual_seed(42)).images

    bare_out = bare()
    node_t, bare_t = [], []
    for _ in range(args.repeats):
        node_t.append(timed(lambda: sample.sample(pipeline=with_lora, **inputs))[0])
        bare_t.append(timed(bare)[0])
    node_m, bare_m = statistics.median(node_t), statistics.median(bare_t)
    strength = apply.apply(pipeline=handle, lora_name="bench_lumina2.safetensors", strength=0.6)["result"][0]
    strength_t = min(timed(lambda: sample.sample(pipeline=h, **inputs))[0]
                     for h in [strength, with_lora] * args.repeats) - min(node_t)  # alternating: re-merge each time
    preview = np.asarray(node_out[0].cpu().numpy() * 255).round().astype(int)
    stock = (bare_out[0] * 255).round().astype(int)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"model lumina2 (tiny), {args.size}x{args.size}, {args.steps} steps, {args.dtype} on {args.device}, "
          f"quantization {base.quantization or 'none'}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"node path  median {node_m:.3f}s  (runs: {', '.join(f'{t:.3f}' for t in node_t)})")
    print(f"bare call  median {bare_m:.3f}s  (runs: {', '.join(f'{t:.3f}' for t in bare_t)})")
    print(f"ratio node/bare {node_m / bare_m:.3f} (median), {min(node_t) / min(bare_t):.3f} (fastest runs)")
    print(f"cold base load {cold:.3f}s; strength change {strength_t:+.3f}s over the fastest render (alternating "
          f"strengths, re-merged each time); base loads: {CACHE.loads}")
    print(f"bare call's picture vs the preview: max {int(np.abs(preview - stock).max())} levels (negative encoded "
          "without the system prompt)")
    print(f"peak RSS {rss_mb:.0f} MB" + (f"; CUDA peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MB"
                                          if torch.cuda.is_available() else ""))


if __name__ == "__main__":
    main()
