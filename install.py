"""Run by ComfyUI-Manager after it installed requirements.txt: checks, installs nothing.

The pack never installs, pins, downgrades or clones anything into your ComfyUI environment (torch and transformers
belong to ComfyUI). This script only reports whether the libraries the pack needs are importable and, if not,
prints the one command that would add them. Running it again changes nothing.
"""
import importlib.util
import os
import sys

NEEDED = {"diffusers": "diffusers>=0.35.0", "transformers": "transformers>=4.46.0", "safetensors": "safetensors>=0.4.3",
          "huggingface_hub": "huggingface_hub>=0.25.0", "accelerate": "accelerate>=0.33.0", "yaml": "pyyaml>=5.1"}


def main() -> int:
    missing = [spec for name, spec in NEEDED.items() if importlib.util.find_spec(name) is None]
    if importlib.util.find_spec("torch") is None:
        print("[AI Toolkit Inference] torch is missing: install ComfyUI's torch first (this pack never installs it).")
        return 1
    if missing:
        req = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")
        print("[AI Toolkit Inference] missing: " + ", ".join(missing))
        print(f"[AI Toolkit Inference] install them with: {sys.executable} -m pip install -r \"{req}\"")
        return 1
    print("[AI Toolkit Inference] all requirements are present.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
