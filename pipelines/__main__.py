"""Command line: render an ai-toolkit preview without ComfyUI, or run the offline demo.

    python -m pipelines demo --out demo.png          # tiny random SDXL + LoRA built locally: no weights, no network
    python -m pipelines generate --model sdxl --lora my_lora.safetensors:1.0 --trigger ohwx \
        --prompt "photo of [trigger] --n blurry" --seed 42 --out preview.png

Run from the pack folder. Names resolve in $AITK_MODELS_DIR/{diffusers,checkpoints,loras} (or --models-dir); a LoRA
may also be given as a file path.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
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
    gen.add_argument("--models-dir", default=None, help="overrides $AITK_MODELS_DIR")
    gen.add_argument("--out", required=True, help="output PNG path")
    demo = sub.add_parser("demo", help="offline demo: tiny random model + LoRA built locally, one image")
    demo.add_argument("--model", default="sdxl", choices=["sd15", "sdxl"])
    demo.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "aitk-inference-demo"))
    demo.add_argument("--out", default="aitk_demo.png")
    return ap


def _generate(args) -> int:
    from .engine import apply_lora, generate, load
    from .sources import ModelRoots

    if args.models_dir:
        os.environ["AITK_MODELS_DIR"] = args.models_dir
    roots = ModelRoots.from_env()
    t0 = time.perf_counter()
    handle = load(args.model, base=args.base, dtype=args.dtype, device=args.device, roots=roots)
    for item in args.lora:
        name, strength = _lora_arg(item)
        if os.path.isfile(name):
            handle = handle.with_lora(os.path.abspath(name), strength)
        else:
            handle = apply_lora(handle, name, strength, roots=roots)
        print(handle.loras[-1].bound.report.summary())
    t1 = time.perf_counter()
    pixels = generate(handle, args.prompt, negative_prompt=args.negative, trigger_word=args.trigger or None,
                      width=args.width, height=args.height, seed=args.seed, steps=args.steps,
                      guidance_scale=args.guidance, guidance_rescale=args.guidance_rescale)
    _save(pixels, args.out)
    print(f"wrote {args.out} ({pixels.shape[2]}x{pixels.shape[1]}; load {t1 - t0:.1f}s, "
          f"sample {time.perf_counter() - t1:.1f}s)")
    return 0


def _save(pixels, path: str) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(pixels[0]).save(path)


def _demo(args) -> int:
    from safetensors.torch import save_file

    from . import tiny

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    models = os.path.abspath(args.work_dir)
    folder = tiny.save_tiny(args.model, os.path.join(models, "diffusers", f"tiny-{args.model}"))
    lora = os.path.join(models, "loras", f"tiny-{args.model}-lora.safetensors")
    if not os.path.isfile(lora):
        os.makedirs(os.path.dirname(lora), exist_ok=True)
        pipe = tiny.BUILDERS[args.model]()
        save_file(tiny.make_lora(pipe, args.model, conv=True), lora, metadata=tiny.aitk_metadata(args.model, "ohwx"))
    print(f"tiny {args.model} model: {folder}\ntiny LoRA: {lora}")
    ns = argparse.Namespace(model=args.model, base=f"tiny-{args.model}", lora=[os.path.basename(lora) + ":1.0"],
                            prompt="photo of [trigger], a red fox in the snow --n blurry", negative="",
                            trigger="ohwx", width=64, height=64, seed=42, steps=8, guidance=-1.0,
                            guidance_rescale=0.0, dtype="auto", device="cpu", models_dir=models, out=args.out)
    return _generate(ns)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .errors import AitkError

    try:
        return _demo(args) if args.command == "demo" else _generate(args)
    except AitkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
