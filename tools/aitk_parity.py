"""Pixel parity against ostris/ai-toolkit's own sampler (not a test: needs the ai-toolkit source, never committed).

Runs ai-toolkit's real code on tiny random SD1.5 / SDXL models on the CPU -- `StableDiffusion.load_model()` on a
Diffusers folder, `LoRASpecialNetwork` built as `BaseSDTrainProcess.run` builds it (conv LoRA included), the LoRA saved
by ai-toolkit's own `save_weights` in fp32, prompts turned into `GenerateImageConfig`s as `BaseSDTrainProcess.sample`
does (trigger substitution, walk_seed, flags), `generate_images(..., sampler="ddpm")` writing PNGs -- and renders the
same settings through the pack's three nodes (LoadAIToolkitPipeline -> ApplyAIToolkitLoRA -> AIToolkitSample) from the
saved files. Prints one row per image: pixels differing and the max 8-bit level difference (0 / 0 = exact).

Cases, for each model (sd15, sdxl) and sampling dtype (fp32, bf16):
  baseline        step-0 preview: LoRA network present with lora_up all zero (ai-toolkit skips the merge); node
                  renders the base without a LoRA
  baseline+file   the same ai-toolkit image vs the node with the step-0 (all-zero) LoRA file applied
  lora m=1.0      random non-zero lora_up, merged (one sample event, all prompts m=1.0)
  lora m=0.7      `--m 0.7` in the prompt, plus --w/--h flooring, --steps, --gr, --n (merged at 0.7)
  mixed m=1.0/0.6 two prompts with different multipliers in ONE generate_images call: ai-toolkit does not merge and
                  runs the LoRA as an fp32 side branch; node with lora_mode="fp32 branch"
Each sample event starts from the pristine base (ai-toolkit's merge_out drifts a bf16 base; later previews of a real
run see that drift, which no loader can reproduce -- README "Not exact"). The drift each merged event left behind is
reported in the "base drift" column (elements of the UNet changed by merge_in + merge_out).

Setup (nothing goes into the pack's venv; torchvision/torchaudio/av/cv2/... are stubbed):
  git --git-dir=<ai-toolkit mirror> archive HEAD | tar -x -C /work/scratch/ai-toolkit    # or git show per file
  .venv/bin/python -m pip install --no-deps --target /work/scratch/aitk-deps \\
      optimum-quanto==0.2.4 torchao==0.10.0 lycoris-lora==1.8.3 einops
Run (from the pack root; threads are fixed at 2 -- exactness depends on the thread count):
  .venv/bin/python tools/aitk_parity.py --aitk /work/scratch/ai-toolkit --deps /work/scratch/aitk-deps [--out DIR]
Exit status 0 when every row is exact.
"""
from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import types
from collections import OrderedDict
from unittest.mock import MagicMock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # tests.fixtures (the tiny models)
PACK = "aitk_pack"
STUBBED = ("torchvision", "torchaudio", "av", "cv2", "albumentations", "albucore", "mutagen", "torchcodec",
           "librosa")
TRIGGER = "ohwx"
# linear rank 4 / alpha 2 (scale 0.5, as YAML configs with alpha != rank), conv rank 2 / alpha 2 (the UI's
# conv 16 / conv_alpha 16 in small)
NETWORK = dict(type="lora", linear=4, linear_alpha=2.0, conv=2, conv_alpha=2.0)


def _import_pack():
    if PACK in sys.modules:
        return sys.modules[PACK]
    spec = importlib.util.spec_from_file_location(PACK, os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    return module


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = MagicMock(name=f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Packages ai-toolkit imports transitively but never uses while sampling SD/SDXL."""

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def import_ai_toolkit(aitk_dir: str, deps_dir: str):
    import diffusers  # noqa: F401  (before the stubs: diffusers must not see a stubbed torchvision)

    sys.meta_path.insert(0, _StubFinder())
    sys.path.insert(0, os.path.abspath(aitk_dir))
    sys.path.insert(0, os.path.abspath(deps_dir))
    from toolkit import config_modules, lora_special, metadata, sampler, stable_diffusion_model

    return types.SimpleNamespace(StableDiffusion=stable_diffusion_model.StableDiffusion,
                                 ModelConfig=config_modules.ModelConfig, NetworkConfig=config_modules.NetworkConfig,
                                 GenerateImageConfig=config_modules.GenerateImageConfig,
                                 LoRASpecialNetwork=lora_special.LoRASpecialNetwork,
                                 get_sampler=sampler.get_sampler, get_meta=metadata.get_meta_for_safetensors)


# ---------------------------------------------------------------------------------------------------------------
# ai-toolkit side
# ---------------------------------------------------------------------------------------------------------------
def aitk_model(tk, folder: str, model: str, dtype: str):
    """BaseSDTrainProcess: ModelConfig(dtype=train.dtype) (so te/vae dtype = train dtype), the train noise scheduler
    (`ddpm`), StableDiffusion(...).load_model() on the Diffusers folder."""
    import torch

    arch = {"sd15": "sd1", "sdxl": "sdxl"}[model]
    scheduler = tk.get_sampler("ddpm", {"prediction_type": "epsilon"}, arch="sd")
    sd = tk.StableDiffusion(device="cpu", model_config=tk.ModelConfig(name_or_path=folder, arch=arch, dtype=dtype),
                            dtype=dtype, noise_scheduler=scheduler)
    sd.load_model()
    encoders = sd.text_encoder if isinstance(sd.text_encoder, list) else [sd.text_encoder]
    for te in encoders:  # transformers >= 5.2x flattened CLIPTextModel; ai-toolkit (5.5.3) reads te.text_model
        if not hasattr(te, "text_model"):
            object.__setattr__(te, "text_model", te)
    assert sd.unet.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    return sd


def aitk_network(tk, sd, model: str):
    """BaseSDTrainProcess.run's network construction (train_unet, no text encoder)."""
    import torch

    cfg = tk.NetworkConfig(**NETWORK)
    torch.manual_seed(1234)  # lora_down's kaiming init
    net = tk.LoRASpecialNetwork(
        text_encoder=sd.text_encoder, unet=sd.unet, lora_dim=cfg.linear, multiplier=1.0, alpha=cfg.linear_alpha,
        train_unet=True, train_text_encoder=False, conv_lora_dim=cfg.conv, conv_alpha=cfg.conv_alpha,
        is_sdxl=model == "sdxl", is_v2=False, is_v3=False, is_pixart=False, is_auraflow=False, is_flux=False,
        is_lumina2=False, is_ssd=False, is_vega=False, dropout=cfg.dropout, use_text_encoder_1=True,
        use_text_encoder_2=True, use_bias=False, is_lorm=False, network_config=cfg, network_type=cfg.type,
        transformer_only=cfg.transformer_only, is_transformer=sd.is_transformer, base_model=sd,
        **cfg.network_kwargs)
    net.force_to(sd.device_torch, dtype=torch.float32)
    sd.network = net
    net._update_torch_multiplier()
    net.apply_to(sd.text_encoder, sd.unet, False, True)
    return net


def randomise_lora_up(net, seed: int = 99) -> int:
    import torch

    gen = torch.Generator().manual_seed(seed)
    modules = net.get_all_modules()
    with torch.no_grad():
        for m in modules:
            w = m.lora_up.weight
            w.copy_(torch.randn(w.shape, generator=gen) / w.shape[1] ** 0.5)
    return len(modules)


def aitk_save(tk, sd, net, path: str, job: str, step: int):
    """BaseSDTrainProcess.save -> network.save_weights(dtype=save.dtype (fp32 here), metadata=...)."""
    import torch

    meta = OrderedDict(name="[name]", version="1.0")  # the UI's `meta:` block
    meta["training_info"] = OrderedDict(step=step, epoch=0)
    meta["ss_base_model_version"] = sd.get_base_model_version()
    meta["ss_output_name"] = job
    meta["ss_tag_frequency"] = {f"1_{TRIGGER}": {TRIGGER: 1}}
    net.save_weights(path, dtype=torch.float32, metadata=tk.get_meta(meta, job))


def aitk_configs(tk, sd, samples, out_dir, tag, seed=42, walk_seed=True, neg="", width=64, height=64, steps=5,
                 cfg=6.0, guidance_rescale=0.0):
    """BaseSDTrainProcess.sample's loop: walk_seed, trigger substitution (not prepended), GenerateImageConfig (flags
    parsed there). `samples`: [(prompt, network_multiplier)]."""
    configs = []
    for i, (prompt, multiplier) in enumerate(samples):
        current_seed = seed + i if walk_seed else seed
        prompt = sd.inject_trigger_into_prompt(prompt, TRIGGER, add_if_not_present=False)
        configs.append(tk.GenerateImageConfig(
            prompt=prompt, width=width, height=height, negative_prompt=neg, seed=current_seed, guidance_scale=cfg,
            guidance_rescale=guidance_rescale, num_inference_steps=steps, network_multiplier=multiplier,
            output_path=os.path.join(out_dir, f"{tag}_aitk_[count].png"), output_ext="png"))
    return configs


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def restore(module, state) -> int:
    """Put the pristine weights back; returns how many elements differed (the merge/unmerge drift)."""
    import torch

    changed = 0
    with torch.no_grad():
        current = module.state_dict()
        for k, v in state.items():
            changed += int((current[k] != v).sum())
        module.load_state_dict(state)
    return changed


def aitk_render(sd, configs, unet_state):
    """One sample event; returns the PNGs' pixels and the base drift it left (then undone)."""
    import numpy as np
    from PIL import Image

    sd.generate_images(configs, sampler="ddpm")
    drift = restore(sd.unet, unet_state)
    return [np.asarray(Image.open(c.get_image_path(i, 0)).convert("RGB")) for i, c in enumerate(configs)], drift


# ---------------------------------------------------------------------------------------------------------------
# node side
# ---------------------------------------------------------------------------------------------------------------
NODE_REPORTS: dict = {}


def node_render(nodes, model, dtype, lora, prompt, **inputs):
    import numpy as np

    load, apply, sample = nodes
    (handle,) = load.load(model=model, base=f"tiny-{model}", dtype=dtype, device="cpu")
    if lora is not None:
        handle = apply.apply(pipeline=handle, lora_name=lora, strength=1.0)["result"][0]
        report = handle.loras[-1].bound.report
        assert report.not_applied_keys == 0 and not report.warnings(), report.summary()
        NODE_REPORTS[lora] = report.summary()
    image = sample.sample(pipeline=handle, prompt=prompt, trigger_word=TRIGGER, **inputs)[0]  # IMAGE first
    return np.rint(image[0].numpy() * 255).astype(np.uint8)


def compare(a, b):
    import numpy as np

    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}", None
    diff = np.abs(a.astype(int) - b.astype(int))
    return int((diff.max(axis=-1) > 0).sum()), int(diff.max())


# ---------------------------------------------------------------------------------------------------------------
def run_model(tk, pack, root, out, model, dtype, rows, steps):
    from PIL import Image

    folder = os.path.join(root, "diffusers", f"tiny-{model}")
    loras = os.path.join(root, "loras")
    nodes = (pack.NODE_CLASS_MAPPINGS["LoadAIToolkitPipeline"](), pack.NODE_CLASS_MAPPINGS["ApplyAIToolkitLoRA"](),
             pack.NODE_CLASS_MAPPINGS["AIToolkitSample"]())
    sd = aitk_model(tk, folder, model, dtype)
    net = aitk_network(tk, sd, model)
    unet_state = snapshot(sd.unet)
    job = f"tiny_{model}_{dtype}"
    zero_file = f"{job}_000000000.safetensors"
    lora_file = f"{job}_000000250.safetensors"
    aitk_save(tk, sd, net, os.path.join(loras, zero_file), job, 0)
    tag = f"{model}_{dtype}"
    neg = "lowres"
    base = dict(neg=neg, steps=steps)

    def add(case, aitk_img, node_img, drift=None):
        slug = "".join(ch if ch.isalnum() or ch in ".=" else "_" for ch in case).strip("_")
        Image.fromarray(node_img).save(os.path.join(out, f"{tag}_{slug}_node.png"))
        px, mx = compare(aitk_img, node_img)
        rows.append((model, dtype, case, px, mx, "" if drift is None else drift, float(aitk_img.std())))
        print(f"  {model:5} {dtype:5} {case:24} pixels differing {px}  max {mx}", flush=True)

    # (a) baseline: step 0, lora_up all zero
    p0 = "[trigger] at the beach, photo --n cartoon [trigger]"
    (img,), drift = aitk_render(sd, aitk_configs(tk, sd, [(p0, 1.0)], out, f"{tag}_baseline", **base), unet_state)
    node_in = dict(negative_prompt=neg, width=64, height=64, seed=42, steps=steps, guidance_scale=6.0)
    add("baseline", img, node_render(nodes, model, dtype, None, p0, **node_in), drift)
    add("baseline+step0 file", img, node_render(nodes, model, dtype, zero_file, p0, **node_in))

    # (b) trained LoRA (random non-zero lora_up), saved by ai-toolkit in fp32
    n = randomise_lora_up(net)
    aitk_save(tk, sd, net, os.path.join(loras, lora_file), job, 250)
    p1 = "photo of [trigger] riding a bike --n blurry [trigger] --seed 7 --cfg 5.5"
    (img,), drift = aitk_render(sd, aitk_configs(tk, sd, [(p1, 1.0)], out, f"{tag}_m1", **base), unet_state)
    lora_img = img
    add("lora m=1.0", img, node_render(nodes, model, dtype, lora_file, p1, **node_in), drift)
    p2 = "[trigger], a castle on a hill --n ugly --w 72 --h 67 --m 0.7 --steps 4 --gr 0.3 --seed 3"
    configs = aitk_configs(tk, sd, [(p2, 1.0)], out, f"{tag}_m07", **base)
    c = configs[0]  # what ai-toolkit parsed from the flags
    assert (c.network_multiplier, c.width, c.height, c.num_inference_steps, c.guidance_rescale, c.seed,
            c.negative_prompt, c.negative_prompt_2, c.prompt) == (0.7, 72, 64, 4, 0.3, 3, "ugly", neg,
                                                                  f"{TRIGGER}, a castle on a hill"), vars(c)
    (img,), drift = aitk_render(sd, configs, unet_state)
    add("lora m=0.7 (+flags)", img, node_render(nodes, model, dtype, lora_file, p2, **node_in), drift)

    # (c) two multipliers in one event -> unmerged fp32 branch
    p3 = "a portrait of [trigger], studio light"
    p4 = "a portrait of [trigger], studio light --m 0.6"
    imgs, drift = aitk_render(sd, aitk_configs(tk, sd, [(p3, 1.0), (p4, 1.0)], out, f"{tag}_mixed", **base),
                              unet_state)
    add("mixed: m=1.0 branch", imgs[0], node_render(nodes, model, dtype, lora_file, p3, lora_mode="fp32 branch",
                                                     **node_in), drift)
    add("mixed: m=0.6 branch", imgs[1], node_render(nodes, model, dtype, lora_file, p4, lora_mode="fp32 branch",
                                                     **dict(node_in, seed=43)))
    merged = node_render(nodes, model, dtype, lora_file, p4, **dict(node_in, seed=43))
    px, mx = compare(imgs[1], merged)
    print(f"  (info) {model} {dtype}: ai-toolkit's unmerged m=0.6 vs node lora_mode=merged: {px} px, max {mx}")
    lora_effect = compare(lora_img, node_render(nodes, model, dtype, None, p1, **node_in))
    print(f"  (info) node match report for ai-toolkit's file: {NODE_REPORTS[lora_file]}")
    print(f"  (info) {model} {dtype}: {n} LoRA modules; LoRA m=1.0 vs no LoRA: {lora_effect[0]} px, "
          f"max {lora_effect[1]} (the LoRA visibly changes the image)")
    del sd, net


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--aitk", required=True, help="extracted ai-toolkit source (the folder with toolkit/)")
    ap.add_argument("--deps", required=True, help="pip --target folder with ai-toolkit's extra packages")
    ap.add_argument("--out", help="keep models, LoRA files and PNGs here (default: a temp folder, removed)")
    ap.add_argument("--models", default="sd15,sdxl")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    torch.set_num_threads(2)
    pack = _import_pack()
    from tests.fixtures import tiny_sd as tiny

    tk = import_ai_toolkit(args.aitk, args.deps)
    root = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="aitk_parity_")
    out = os.path.join(root, "images")
    for sub in ("diffusers", "loras", "checkpoints", "images"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    os.environ["AITK_MODELS_DIR"] = root
    rows = []
    t0 = time.time()
    try:
        for model in args.models.split(","):
            folder = os.path.join(root, "diffusers", f"tiny-{model}")
            if not os.path.isfile(os.path.join(folder, "model_index.json")):
                tiny.BUILDERS[model]().save_pretrained(folder)
            for dtype in args.dtypes.split(","):
                run_model(tk, pack, root, out, model, dtype, rows, args.steps)
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nai-toolkit {_aitk_version(args.aitk)} vs aitk-inference nodes; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.time() - t0:.0f} s\n")
    print("| model | dtype | case | pixels differing | max level diff | base drift (UNet elems) |")
    print("|---|---|---|---|---|---|")
    for model, dtype, case, px, mx, drift, _ in rows:
        print(f"| {model} | {dtype} | {case} | {px} | {mx} | {drift} |")
    exact = all(px == 0 for _, _, _, px, *_ in rows)
    print("\nALL EXACT" if exact else "\nDIFFERENCES FOUND")
    return 0 if exact else 1


def _aitk_version(aitk_dir):
    try:
        ns = {}
        exec(open(os.path.join(aitk_dir, "version.py")).read(), ns)
        return ns.get("VERSION", "?")
    except Exception:  # noqa: BLE001
        return "?"


if __name__ == "__main__":
    sys.exit(main())
