"""The command line: the offline demo works on a fresh machine, and `generate` equals the node path."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.conftest import ROOT


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env or dict(os.environ), timeout=300)


def test_offline_demo(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = tmp_path / "demo.png"
    proc = subprocess.run([sys.executable, os.path.join("tools", "demo.py"), "--work-dir", str(tmp_path / "work"),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "applied 921/921 keys" in proc.stdout
    image = np.asarray(Image.open(out))
    assert image.shape == (64, 64, 3) and image.std() > 5


def test_generate_matches_the_nodes(models_dir, nodes, tmp_path):
    out = tmp_path / "cli.png"
    proc = run_cli("generate", "--model", "sdxl", "--base", "tiny-sdxl", "--lora", "sdxl_kohya_conv:0.8",
                   "--lora", "sdxl_kohya_b", "--prompt", "photo of [trigger] --n blurry", "--trigger", "ohwx",
                   "--width", "64", "--height", "64", "--steps", "4", "--seed", "5", "--dtype", "fp32",
                   "--device", "cpu", "--models-dir", models_dir, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    load, apply, sample = nodes
    (h,) = load.load(model="sdxl", base="tiny-sdxl", dtype="fp32", device="cpu")
    h = apply.apply(pipeline=h, lora_name="sdxl_kohya_conv.safetensors", strength=0.8)["result"][0]
    h = apply.apply(pipeline=h, lora_name="sdxl_kohya_b.safetensors", strength=1.0)["result"][0]
    image = sample.sample(pipeline=h, prompt="photo of [trigger] --n blurry", negative_prompt="",
                          trigger_word="ohwx", width=64, height=64, seed=5, steps=4, guidance_scale=-1)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.rint(image[0].numpy() * 255).astype(np.uint8))


def test_cli_errors_are_one_line(models_dir):
    proc = run_cli("generate", "--model", "sdxl", "--base", "tiny-sdxl", "--lora", "missing", "--prompt", "x",
                   "--models-dir", models_dir, "--out", "/tmp/x.png")
    assert proc.returncode == 2 and "error: LoRA 'missing' was not found" in proc.stderr
