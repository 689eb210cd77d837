"""Command line: render an ai-toolkit preview without ComfyUI (`tools/demo.py` runs it offline on a tiny model).

    python -m pipelines generate --model sdxl --lora my_lora.safetensors:1.0 --trigger ohwx \
        --prompt "photo of [trigger] --n blurry" --seed 42 --out preview.png

Run from the pack folder. Names resolve in $AITK_MODELS_DIR/{diffusers,checkpoints,loras} (or --models-dir); a LoRA
may also be given as a file path.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _lora_arg(text: str) -> tuple[str, float]:
    name, sep, weight = text.rpartition(":")
    if sep and name and not weight.startswith(("/", "\\")):
        try:
            return name, float(weight)
        except ValueError:
            pass
    return text, 1.0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="render one preview")
    gen.add_argument("--model", required=True, help="registry model id (sd15, sdxl, …)")
    gen.add_argument("--base", default="default", help='"default" (HF repo), a diffusers/ folder or checkpoints/ file')
    gen.add_argument("--lora", action="append", default=[], metavar="NAME[:STRENGTH]",
                     help="LoRA name under loras/ or a file path, with an optional strength; repeat to chain")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative", default="")
    gen.add_argument("--trigger", default="", help="trigger word (replaces [trigger] and [name])")
    gen.add_argument("--width", type=int, default=0, help="0 = model default")
    gen.add_argument("--height", type=int, default=0, help="0 = model default")
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--steps", type=int, default=0, help="0 = model default")
    gen.add_argument("--guidance", type=float, default=-1.0, help="as in the training config; -1 = model default")
    gen.add_argument("--guidance-rescale", type=float, default=0.0)
    gen.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    gen.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    gen.add_argument("--quantization", default="match training",
                     help='"match training" (the preset\'s), "none", or an ai-toolkit qtype (qfloat8)')
    gen.add_argument("--sampler", default="match training",
                     help='"match training" (the sampler ai-toolkit previews the model with) or an ai-toolkit '
                          'sampler name (euler, dpmsolver++, flowmatch, unipc ...)')
    gen.add_argument("--models-dir", default=None, help="overrides $AITK_MODELS_DIR")
    gen.add_argument("--out", required=True, help="output PNG path")
    return ap


def _generate(args) -> int:
    from .engine import apply_lora, generate, load
    from .sources import ModelRoots

    if args.models_dir:
        os.environ["AITK_MODELS_DIR"] = args.models_dir
    roots = ModelRoots.from_env()
    t0 = time.perf_counter()
    handle = load(args.model, base=args.base, dtype=args.dtype, device=args.device, roots=roots,
                  quantization=args.quantization)
    for item in args.lora:
        name, strength = _lora_arg(item)
        before = handle
        if os.path.isfile(name):
            handle = handle.with_lora(os.path.abspath(name), strength)
        else:
            handle = apply_lora(handle, name, strength, roots=roots)
        print("\n".join(link.summary() for link in handle.added_since(before)))  # an expert pair adds two
    t1 = time.perf_counter()
    pixels = generate(handle, args.prompt, negative_prompt=args.negative, trigger_word=args.trigger or None,
                      width=args.width, height=args.height, seed=args.seed, steps=args.steps,
                      guidance_scale=args.guidance, guidance_rescale=args.guidance_rescale, sampler=args.sampler)
    _save(pixels, args.out)
    print(f"wrote {args.out} ({pixels.shape[2]}x{pixels.shape[1]}; load {t1 - t0:.1f}s, "
          f"sample {time.perf_counter() - t1:.1f}s)")
    return 0


def _save(pixels, path: str) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(pixels[0]).save(path)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .errors import AitkError

    try:
        return _generate(args)
    except AitkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
