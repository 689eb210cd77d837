"""Benchmark (not a test): FLUX-family figures for the README, from one process.

- node path (LoadAIToolkitPipeline → ApplyAIToolkitLoRA → AIToolkitSample) against a bare Diffusers FluxPipeline
  call for the same generation (same components with the LoRA merged, ai-toolkit's flow-match config, seed,
  prompt embeddings): median of N, ratio;
- a strength change and a LoRA swap over a render, with the number of base loads (1 = no reload);
- the qfloat8 base (LoRA as the fp32 branch) against the unquantized one: load and render time, weight memory;
- peak memory (RSS; CUDA peak when on a GPU).

    python bench/bench_flux.py [--model flux] [--size 256] [--steps 10] [--repeats 3] [--device cpu] [--dtype fp32]

Runs on tiny random models built locally (no weights needed); pass --models-dir and --base to measure a real base.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sd import import_pack, timed  # noqa: E402


def weight_bytes(module) -> int:
    """Bytes held by the module's tensors (quanto's fp8 data and scales included)."""
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        inner = [getattr(tensor, a) for a in ("_data", "_scale") if hasattr(tensor, a)]
        total += sum(t.numel() * t.element_size() for t in inner) if inner else tensor.numel() * tensor.element_size()
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="flux", choices=["flux", "flex1"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--base", default=None, help="a Diffusers folder name under --models-dir/diffusers")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pack = import_pack()
    from safetensors.torch import save_file

    from aitk_pack.pipelines.cache import CACHE
    from aitk_pack.pipelines.families import get_family
    from tests.fixtures import tiny_flux

    models = args.models_dir or tempfile.mkdtemp(prefix="aitk_bench_flux_")
    os.environ["AITK_MODELS_DIR"] = models
    base_name = args.base or f"tiny-{args.model}"
    folder = os.path.join(models, "diffusers", base_name)
    os.makedirs(os.path.join(models, "loras"), exist_ok=True)
    pipe = tiny_flux.save(args.model, folder) if not os.path.isdir(folder) else None
    if pipe is None:
        from diffusers import FluxTransformer2DModel
        pipe = type("P", (), {"transformer": FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer")})
    for name, seed in (("a", 0), ("b", 1)):
        sd, meta = tiny_flux.flux_peft_lora(pipe.transformer, seed=seed, model_id=args.model)
        save_file(sd, os.path.join(models, "loras", f"bench_{args.model}_{name}.safetensors"), metadata=meta)
    del pipe

    load, apply, sample = (pack.NODE_CLASS_MAPPINGS[n]() for n in
                           ("LoadAIToolkitPipeline", "ApplyAIToolkitLoRA", "AIToolkitSample"))
    inputs = dict(prompt="photo of a red fox in the snow", negative_prompt="", trigger_word="", width=args.size,
                  height=args.size, seed=42, steps=args.steps, guidance_scale=4.0)
    lora_a, lora_b = (f"bench_{args.model}_{n}.safetensors" for n in "ab")

    def run(quantization):
        cold, (handle,) = timed(lambda: load.load(model=args.model, base=base_name, dtype=args.dtype,
                                                  device=args.device, quantization=quantization))
        with_a = apply.apply(pipeline=handle, lora_name=lora_a, strength=1.0)["result"][0]
        sample.sample(pipeline=with_a, **inputs)  # warm-up (LoRA merged or branched)
        return cold, handle, with_a

    cold, handle, with_a = run("none")
    spec, base = with_a.spec, with_a.base
    family = get_family(spec)
    request = pack.pipelines.engine.build_request(spec, inputs["prompt"], width=args.size, height=args.size,
                                                  steps=args.steps, guidance_scale=4.0)

    def bare():  # a stock FluxPipeline over the same merged components, embeddings computed by the pipeline
        import diffusers

        p = diffusers.FluxPipeline(**{n: getattr(base.pipe, n) for n in family.parts},
                                   scheduler=family.scheduler(spec))
        p.set_progress_bar_config(disable=True)
        with torch.no_grad():
            return p(prompt=request.prompt, height=args.size, width=args.size, num_inference_steps=args.steps,
                     guidance_scale=4.0, max_sequence_length=512, output_type="np",
                     generator=torch.Generator("cpu").manual_seed(42)).images

    node_t, bare_t = [], []
    for _ in range(args.repeats):
        node_t.append(timed(lambda: sample.sample(pipeline=with_a, **inputs))[0])
        bare_t.append(timed(bare)[0])
    node_m, bare_m = statistics.median(node_t), statistics.median(bare_t)

    def render_with(h, name, strength):
        h = apply.apply(pipeline=h, lora_name=name, strength=strength)["result"][0]
        return timed(lambda: sample.sample(pipeline=h, **inputs))[0]

    strength_t = render_with(handle, lora_a, 0.6) - node_m
    swap_t = render_with(handle, lora_b, 1.0) - node_m
    loads = CACHE.loads
    plain_bytes = weight_bytes(base.pipe.transformer) + weight_bytes(base.pipe.text_encoder_2)

    q_cold, _, q_with_a = run("qfloat8")
    q_t = [timed(lambda: sample.sample(pipeline=q_with_a, **inputs))[0] for _ in range(args.repeats)]
    q_bytes = weight_bytes(q_with_a.base.pipe.transformer) + weight_bytes(q_with_a.base.pipe.text_encoder_2)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"model {args.model} ({base_name}), {args.size}x{args.size}, {args.steps} steps, {args.dtype} on "
          f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"node path  median {node_m:.3f}s  (runs: {', '.join(f'{t:.3f}' for t in node_t)})")
    print(f"bare call  median {bare_m:.3f}s  (runs: {', '.join(f'{t:.3f}' for t in bare_t)})")
    print(f"ratio node/bare {node_m / bare_m:.3f}")
    print(f"cold base load {cold:.3f}s; strength change {strength_t:+.3f}s; LoRA swap {swap_t:+.3f}s over a render; "
          f"base loads for these: {loads}")
    print(f"qfloat8: cold load {q_cold:.3f}s, render median {statistics.median(q_t):.3f}s (LoRA as fp32 branch); "
          f"transformer+T5 weights {q_bytes / 2**20:.2f} MB vs {plain_bytes / 2**20:.2f} MB unquantized")
    print(f"peak RSS {rss_mb:.0f} MB" + (f"; CUDA peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MB"
                                          if torch.cuda.is_available() else ""))


if __name__ == "__main__":
    main()
