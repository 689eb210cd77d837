"""Benchmark (not a test): what the real ComfyUI server adds to a generation (server overhead).

Starts ComfyUI with the e2e harness (tests/e2e/comfy_harness.py; set AITK_COMFYUI_DIR as for the e2e tests) with a
fake Hugging Face cache holding the tiny random sd15/sdxl models under the registry's repo ids (so base "default"
resolves offline) and the example workflow's LoRA, then times the same generation two ways:

- server: POST /prompt of the example workflow's API twin (tests/e2e/data/example_<model>_api.json) until its PNG is
  written (history says success), with a new seed each time so ComfyUI's output cache cannot answer; ComfyUI's own
  execution time (execution_start → execution_success) is shown too;
- library: `engine.load` + `apply_lora` + `generate` in this process with the same settings.

Both keep the base loaded (the first, cold run of each is reported separately); they alternate, so a busy machine
slows both alike. Prints medians and the difference (= server overhead per image).

    AITK_COMFYUI_DIR=/path/to/ComfyUI python bench/bench_server.py [--model sdxl] [--size 256] [--steps 10]
        [--repeats 5] [--preview latent2rgb]

--size 0 / --steps 0 keep the workflow's own values (ai-toolkit's model defaults, 1024x1024 / 30 steps for sdxl:
minutes per image on a CPU even with the tiny models).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT))  # tests.fixtures (the tiny models)
from comfy_harness import ComfyServer, history_error  # noqa: E402


def import_pack():
    spec = importlib.util.spec_from_file_location("aitk_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["aitk_pack"] = module
    spec.loader.exec_module(module)
    return module


def build_models(root: Path, model: str, lora_name: str) -> None:
    """root/hub: HF cache with the tiny `model` under its registry repo id; root/models/loras/<lora_name>."""
    from safetensors.torch import save_file

    from tests.fixtures import tiny_sd as tiny
    from aitk_pack.pipelines.registry import REGISTRY

    repo = REGISTRY[model].base_repo
    entry = root / "hub" / ("models--" + repo.replace("/", "--"))
    revision = uuid.uuid5(uuid.NAMESPACE_URL, repo).hex[:40]
    pipe = tiny.BUILDERS[model](0)
    pipe.save_pretrained(str(entry / "snapshots" / revision))
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(revision)
    (root / "models" / "loras").mkdir(parents=True)
    save_file(tiny.make_lora(pipe, model), str(root / "models" / "loras" / lora_name),
              metadata=tiny.aitk_metadata(model, "ohwx", Path(lora_name).stem))


def node(prompt: dict, class_type: str) -> dict:
    [found] = [v for v in prompt.values() if v["class_type"] == class_type]
    return found


def server_run(server: ComfyServer, prompt: dict) -> tuple[float, float]:
    """(seconds from POST /prompt to the PNG on disk, ComfyUI's execution time) for one prompt."""
    t0 = time.perf_counter()
    prompt_id = server.queue_prompt(prompt)
    while True:
        entry = (server.get(f"/history/{prompt_id}") or {}).get(prompt_id)
        if entry and entry["status"]["status_str"] in ("success", "error"):
            break
        time.sleep(0.01)
    total = time.perf_counter() - t0
    if entry["status"]["status_str"] != "success":
        raise RuntimeError(f"prompt failed: {history_error(entry)}")
    [path] = server.output_paths(entry)
    assert path.is_file(), path
    stamps = {kind: data["timestamp"] for kind, data in entry["status"]["messages"]}
    return total, (stamps["execution_success"] - stamps["execution_start"]) / 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sdxl")
    ap.add_argument("--size", type=int, default=256, help="width = height; 0 = the workflow's (model default)")
    ap.add_argument("--steps", type=int, default=10, help="0 = the workflow's (model default)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--preview", default="none", help="ComfyUI --preview-method (none, latent2rgb, auto)")
    ap.add_argument("--comfyui", default=os.environ.get("AITK_COMFYUI_DIR"))
    ap.add_argument("--python", default=os.environ.get("AITK_COMFY_PYTHON") or sys.executable)
    args = ap.parse_args()
    if not args.comfyui:
        sys.exit("set AITK_COMFYUI_DIR (or --comfyui) to a ComfyUI made by .ci/setup_comfyui.sh")

    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    import_pack()
    from aitk_pack.pipelines import engine
    from aitk_pack.pipelines.registry import get_spec as handle_spec
    from aitk_pack.pipelines.sources import ModelRoots

    twin = json.loads((ROOT / "tests" / "e2e" / "data" / f"example_{args.model}_api.json").read_text())
    sample = node(twin, "AIToolkitSample")["inputs"]
    if args.size:
        sample.update(width=args.size, height=args.size)
    if args.steps:
        sample["steps"] = args.steps
    load, lora = node(twin, "LoadAIToolkitPipeline")["inputs"], node(twin, "ApplyAIToolkitLoRA")["inputs"]

    work = Path(tempfile.mkdtemp(prefix="aitk-bench-server-"))
    build_models(work, args.model, lora["lora_name"])
    os.environ["HF_HUB_CACHE"] = str(work / "hub")
    roots = ModelRoots(loras=(str(work / "models" / "loras"),))
    values = {k: sample[k] for k in ("negative_prompt", "trigger_word", "width", "height", "steps", "guidance_scale",
                                     "guidance_rescale") if k in sample}

    def library_run(seed: int) -> float:
        t0 = time.perf_counter()
        handle = engine.load(load["model"], base=load["base"], dtype=load["dtype"], device=load["device"],
                             roots=roots)
        handle = engine.apply_lora(handle, lora["lora_name"], lora["strength"], roots=roots)
        engine.generate(handle, sample["prompt"], seed=seed, **values)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    server = ComfyServer(args.comfyui, args.python, work / "comfy", ROOT,
                         extra_args=["--preview-method", args.preview],
                         env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(work / "hub"), "DO_NOT_TRACK": "1"})
    server.start(timeout=300, models_dir=work / "models")
    try:
        request = engine.build_request(handle_spec(args.model), sample["prompt"], **values)
        print(f"ComfyUI up in {server.start_seconds:.1f}s; {args.model} {request.width}x{request.height}, "
              f"{request.steps} steps, preview {args.preview}, torch threads {torch.get_num_threads()}", flush=True)
        seeds = iter(range(1000, 10 ** 6))

        def with_seed(seed: int) -> dict:
            prompt = copy.deepcopy(twin)
            node(prompt, "AIToolkitSample")["inputs"].update(sample, seed=seed)
            return prompt

        cold_server = server_run(server, with_seed(next(seeds)))
        cold_library = library_run(next(seeds))
        print(f"cold (base load included): server {cold_server[0]:.2f}s (ComfyUI execution {cold_server[1]:.2f}s), "
              f"library {cold_library:.2f}s", flush=True)
        srv, exe, lib = [], [], []
        for i in range(args.repeats):
            seed = next(seeds)
            total, execution = server_run(server, with_seed(seed))
            srv.append(total)
            exe.append(execution)
            lib.append(library_run(seed))
            print(f"  run {i + 1}: server {total:.3f}s (execution {execution:.3f}s), library {lib[-1]:.3f}s",
                  flush=True)
    finally:
        server.stop()

    med = statistics.median
    print(f"\nwarm, median of {args.repeats}: server (POST /prompt -> PNG) {med(srv):.3f}s, "
          f"ComfyUI execution {med(exe):.3f}s, library {med(lib):.3f}s")
    print(f"server overhead: {med(srv) - med(lib):+.3f}s per image ({(med(srv) / med(lib) - 1) * 100:+.1f}%); "
          f"of which outside execution (queue, history, HTTP): {med(srv) - med(exe):.3f}s")


if __name__ == "__main__":
    main()
