"""Offline demo: build a tiny random model and LoRA locally (no weights, no network), render one preview with the
command line (`python -m pipelines generate`), and print the LoRA's match report.

    python tools/demo.py --model sdxl --out demo.png

The tiny models are the test fixtures (`tests/fixtures/`), so this runs from a checkout of the repository.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    from tests.fixtures import tiny_models

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="sdxl", choices=sorted(tiny_models.DEMO))
    ap.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "aitk-inference-demo"))
    ap.add_argument("--out", default="aitk_demo.png")
    args = ap.parse_args(argv)
    models = os.path.abspath(args.work_dir)
    base, lora, extra = tiny_models.DEMO[args.model](models)
    print(f"tiny {args.model} model: {base}\ntiny LoRA: {lora}", flush=True)
    cmd = [sys.executable, "-m", "pipelines", "generate", "--model", args.model, "--base", os.path.basename(base),
           "--lora", os.path.basename(lora) + ":1.0", "--trigger", "ohwx", "--width", "64", "--height", "64",
           "--steps", "8", "--device", "cpu", "--models-dir", models, "--out", os.path.abspath(args.out),
           "--prompt", "photo of [trigger], a red fox in the snow --n blurry", *extra]
    return subprocess.call(cmd, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))


if __name__ == "__main__":
    sys.exit(main())
