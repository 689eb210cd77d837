"""Benchmark (not a test): prints figures for the README, from one process.

- node path (LoadAIToolkitPipeline → ApplyAIToolkitLoRA → AIToolkitSample) against a bare hand-written Diffusers call
  for the same generation (same components, DDPM, seed, LoRA merged by hand beforehand): median of N, ratio;
- a strength change and a LoRA swap (merge + render) against a cold base load;
- peak memory (RSS; CUDA peak when on a GPU).

    python bench/bench_sd.py [--model sdxl] [--size 256] [--steps 20] [--repeats 5] [--device cpu]

Runs on tiny random models built locally (no weights needed); pass --models-dir with real bases to measure those.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # tests.fixtures (the tiny models)


def import_pack():
    spec = importlib.util.spec_from_file_location("aitk_pack", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules["aitk_pack"] = module
    spec.loader.exec_module(module)
    return module


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sdxl", choices=["sd15", "sdxl"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--models-dir", default=None)
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pack = import_pack()
    from tests.fixtures import tiny_sd as tiny
    from aitk_pack.pipelines.cache import CACHE
    from aitk_pack.pipelines.samplers import make_scheduler
    from safetensors.torch import save_file

    models = args.models_dir or tempfile.mkdtemp(prefix="aitk_bench_")
    os.environ["AITK_MODELS_DIR"] = models
    base_name = f"tiny-{args.model}"
    folder = os.path.join(models, "diffusers", base_name)
    os.makedirs(os.path.join(models, "loras"), exist_ok=True)
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        tiny.save_tiny(args.model, folder)
    pipe = tiny.BUILDERS[args.model]()
    for name, seed in (("a", 0), ("b", 1)):
        save_file(tiny.make_lora(pipe, args.model, conv=True, seed=seed),
                  os.path.join(models, "loras", f"bench_{name}.safetensors"))
    del pipe

    load, apply, sample = (pack.NODE_CLASS_MAPPINGS[n]() for n in
                           ("LoadAIToolkitPipeline", "ApplyAIToolkitLoRA", "AIToolkitSample"))
    inputs = dict(prompt="photo of a red fox in the snow", negative_prompt="", trigger_word="", width=args.size,
                  height=args.size, seed=42, steps=args.steps, guidance_scale=6.0)

    cold, (handle,) = timed(lambda: load.load(model=args.model, base=base_name, dtype=args.dtype,
                                              device=args.device))
    with_a = apply.apply(pipeline=handle, lora_name="bench_a.safetensors", strength=1.0)["result"][0]
    sample.sample(pipeline=with_a, **inputs)  # warm-up, LoRA merged

    # The bare call: a stock pipeline over the same (already merged) components, ai-toolkit's scheduler and seed.
    spec, base = with_a.spec, with_a.base
    import diffusers
    parts = {k: v for k, v in base.pipe.components.items() if k in ("vae", "unet", "text_encoder", "tokenizer",
                                                                     "text_encoder_2", "tokenizer_2")}
    extra = {"add_watermarker": False} if args.model == "sdxl" else {
        "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def bare():
        p = getattr(diffusers, spec.pipeline_class)(**parts, scheduler=make_scheduler(spec), **extra)
        p.set_progress_bar_config(disable=True)
        return p(prompt=inputs["prompt"], negative_prompt="", width=args.size, height=args.size,
                 num_inference_steps=args.steps, guidance_scale=6.0, output_type="pil",
                 generator=torch.Generator("cpu").manual_seed(42)).images[0]

    node_t, bare_t = [], []
    for _ in range(args.repeats):
        node_t.append(timed(lambda: sample.sample(pipeline=with_a, **inputs))[0])
        bare_t.append(timed(bare)[0])
    node_m, bare_m = statistics.median(node_t), statistics.median(bare_t)

    def render_with(name, strength):
        h = apply.apply(pipeline=handle, lora_name=name, strength=strength)["result"][0]
        return timed(lambda: sample.sample(pipeline=h, **inputs))[0]

    strength_t = render_with("bench_a.safetensors", 0.6) - node_m
    swap_t = render_with("bench_b.safetensors", 1.0) - node_m
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model {args.model} (tiny), {args.size}x{args.size}, {args.steps} steps, {args.dtype} on {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"node path  median {node_m:.3f}s  (runs: {', '.join(f'{t:.3f}' for t in node_t)})")
    print(f"bare call  median {bare_m:.3f}s  (runs: {', '.join(f'{t:.3f}' for t in bare_t)})")
    print(f"ratio node/bare {node_m / bare_m:.3f}")
    print(f"cold base load {cold:.3f}s; strength change (re-merge) {strength_t:+.3f}s; LoRA swap (bind + merge) "
          f"{swap_t:+.3f}s over a render; base loads in this process: {CACHE.loads}")
    print(f"peak RSS {rss_mb:.0f} MB" + (f"; CUDA peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MB"
                                          if torch.cuda.is_available() else ""))


if __name__ == "__main__":
    main()
