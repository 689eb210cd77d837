"""Where base models and LoRA files come from: model roots, name resolution, and the Hugging Face cache.

A name given to a node resolves only inside the model roots (`diffusers/`, `checkpoints/`, `loras/`): inside
ComfyUI those are its `folder_paths` folders (the nodes pass them in); outside, the folder named by
`AITK_MODELS_DIR`. `"default"` means the registry's Hugging Face repo, taken from the local HF cache or downloaded
(with huggingface_hub's progress bar) when the machine is online.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .errors import LoraError, ModelSourceError

MODELS_ENV = "AITK_MODELS_DIR"
CHECKPOINT_EXTS = (".safetensors",)
LORA_EXTS = (".safetensors",)
CONFIG_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

# What a Diffusers repo download needs: configs (and shard indexes), tokenizers and the full-precision weights, whole
# or sharded (`diffusion_pytorch_model-00001-of-00003.safetensors`); never fp16 variants, the root-level single-file
# copies (`flux1-dev.safetensors`, `ae.safetensors`), .bin duplicates or the SD1.5 safety checker.
HUB_ALLOW = ["model_index.json", "*/*.json", "*/*.txt", "*/*.model",
             "*/diffusion_pytorch_model.safetensors", "*/diffusion_pytorch_model-*-of-*.safetensors",
             "*/model.safetensors", "*/model-*-of-*.safetensors"]
MODEL_REPO_ALLOW = ["*.json", "*.txt", "*.model", "model.safetensors", "model-*-of-*.safetensors"]
HUB_IGNORE = ["safety_checker/*", "feature_extractor/*", "*.fp16.*", "*fp16*.safetensors"]


@dataclass(frozen=True)
class ModelRoots:
    diffusers: tuple[str, ...] = ()
    checkpoints: tuple[str, ...] = ()
    loras: tuple[str, ...] = ()

    @classmethod
    def from_env(cls) -> "ModelRoots":
        base = os.environ.get(MODELS_ENV)
        if not base:
            return cls()
        return cls(*(tuple([os.path.join(base, sub)]) for sub in ("diffusers", "checkpoints", "loras")))

    def folders(self, kind: str) -> tuple[str, ...]:
        return getattr(self, kind)

    def list_files(self, kind: str, exts: tuple[str, ...]) -> list[str]:
        names = set()
        for root in self.folders(kind):
            for dirpath, _, files in os.walk(root, followlinks=True):
                for f in files:
                    if f.lower().endswith(exts):
                        names.add(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
        return sorted(names)

    def list_diffusers(self) -> list[str]:
        names = set()
        for root in self.diffusers:
            for dirpath, dirs, files in os.walk(root, followlinks=True):
                if "model_index.json" in files:
                    names.add(os.path.relpath(dirpath, root).replace(os.sep, "/"))
                    dirs[:] = []  # a pipeline's component folders are not pipelines
        return sorted(names)

    def resolve(self, kind: str, name: str) -> str | None:
        """Absolute path of `name` inside one of the `kind` roots, or None. Never escapes the roots."""
        if not name or "\0" in name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
            return None
        for root in self.folders(kind):
            # lexically inside the root (no "..", not absolute); symlinked files in the folder are the user's choice
            path = os.path.normpath(os.path.join(root, name))
            if path.startswith(os.path.normpath(root) + os.sep) and os.path.exists(path):
                return path
        return None


@dataclass(frozen=True)
class BaseSource:
    """A resolved base model: `kind` is "hub", "diffusers" or "single_file"."""
    kind: str
    location: str        # repo id, or an absolute path
    config_dir: str | None = None  # single files: the Diffusers config folder used to build the pipeline

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.location}"


def resolve_base(spec, base: str, roots: ModelRoots) -> BaseSource:
    base = (base or "default").strip()
    if base == "default":
        return BaseSource("hub", spec.base_repo)
    folder = roots.resolve("diffusers", base)
    if folder and os.path.isfile(os.path.join(folder, "model_index.json")):
        _check_folder_model(spec, base, folder)
        return BaseSource("diffusers", folder)
    ckpt = roots.resolve("checkpoints", base)
    if ckpt and os.path.isfile(ckpt):
        _check_checkpoint_model(spec, base, ckpt)
        return BaseSource("single_file", ckpt, single_file_config_dir(spec, ckpt))
    raise ModelSourceError(
        f"Base model {base!r} was not found for {spec.id}. Use \"default\" ({spec.base_repo} from the Hugging Face "
        f"cache), a Diffusers folder (with model_index.json) under diffusers/ {list(roots.diffusers)}, or a "
        f"single-file checkpoint under checkpoints/ {list(roots.checkpoints)}.")


def _check_folder_model(spec, name: str, folder: str) -> None:
    """The folder's model_index.json names its pipeline: refuse a folder of another model, naming the right id."""
    index_path = os.path.join(folder, "model_index.json")
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        cls = index.get("_class_name") if isinstance(index, dict) else None
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"Base {name!r}: its model_index.json cannot be read ({exc}). Download or save the "
                               "Diffusers folder again.") from None
    if not isinstance(cls, str) or cls == spec.pipeline_class or cls in spec.compatible_pipelines:
        return
    from .registry import REGISTRY  # here: the registry's family data imports this module

    ids = ", ".join(other.id for other in REGISTRY.values()
                    if other.pipeline_class == cls or cls in other.compatible_pipelines)
    pick = f"pick model {ids} for it" if ids else "no model id of this pack uses that pipeline"
    raise ModelSourceError(f"Base {name!r} is a {cls} folder (its model_index.json says so), not a {spec.label} "
                           f"({spec.pipeline_class}) one: {pick}, or choose a {spec.label} base for {spec.id}.")


def _check_checkpoint_model(spec, name: str, path: str) -> None:
    """A single file must carry the keys of the model it is loaded as; name the model id whose keys it has."""
    if not spec.checkpoint_marker:
        return
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ModelSourceError(f"Checkpoint {name!r} cannot be read as safetensors ({exc}). Download or copy the "
                               "file again.") from None
    if any(k.startswith(spec.checkpoint_marker) for k in keys):
        return
    from .registry import REGISTRY

    others = [o.id for o in REGISTRY.values() if o.checkpoint_marker and o.id != spec.id
              and any(k.startswith(o.checkpoint_marker) for k in keys)]
    what = f"a {', '.join(others)} checkpoint: pick model {others[0]} for it" if others else \
        f"not a {spec.label} checkpoint (it has none of its {spec.checkpoint_marker}… keys)"
    raise ModelSourceError(f"Checkpoint {name!r} is {what}, or choose a {spec.label} checkpoint for {spec.id}.")


def single_file_config_dir(spec, checkpoint: str) -> str:
    """The config folder for a single-file checkpoint: a Diffusers config folder next to it with the same name
    (`foo/model_index.json` beside `foo.safetensors`, for non-standard models) or the one shipped for the model."""
    sidecar = os.path.splitext(checkpoint)[0]
    if os.path.isfile(os.path.join(sidecar, "model_index.json")):
        return sidecar
    if not spec.single_file_config:
        raise ModelSourceError(f"{spec.id} cannot load single-file checkpoints ({os.path.basename(checkpoint)}); "
                               "use a Diffusers folder under diffusers/ or \"default\".")
    return os.path.join(CONFIG_ROOT, spec.single_file_config)


def hub_snapshot(repo_id: str, allow_download: bool | None = None, skip: tuple = (), allow=HUB_ALLOW) -> str:
    """Local folder of `repo_id` from the HF cache; downloads it (progress bar on the console) when allowed, without
    the `skip` patterns (parts the family reads from another repo). `allow`: the files a pipeline folder needs
    (`HUB_ALLOW`), or others (a transformers model's repo keeps them at its root: `MODEL_REPO_ALLOW`)."""
    from huggingface_hub import snapshot_download

    # read at call time (huggingface_hub reads it once at import)
    where = dict(cache_dir=os.environ.get("HF_HUB_CACHE") or None, allow_patterns=list(allow),
                 ignore_patterns=HUB_IGNORE + list(skip))
    try:
        return snapshot_download(repo_id, local_files_only=True, **where)
    except Exception as cached_exc:  # noqa: BLE001 - not cached (or incomplete): maybe download
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        if allow_download is None:
            allow_download = not offline
        if not allow_download:
            raise ModelSourceError(
                f"{repo_id} is not in the local Hugging Face cache and downloading is off (HF_HUB_OFFLINE). "
                f"Download it once with `hf download {repo_id}`, or put a Diffusers folder under the diffusers "
                "model folder and select it as base.") from cached_exc
    try:
        return snapshot_download(repo_id, **where)
    except Exception as exc:  # noqa: BLE001
        raise ModelSourceError(
            f"Could not download {repo_id} from Hugging Face ({type(exc).__name__}: {exc}). Check the network "
            f"(and a token for gated repos), or put a Diffusers folder under the diffusers model folder.") from exc


def hub_file(repo_id: str, filename: str, allow_download: bool | None = None) -> str:
    """Local path of one file of `repo_id` from the HF cache (where ai-toolkit's `hf_hub_download` puts it);
    downloads it when allowed (not HF_HUB_OFFLINE), as `hub_snapshot` does for whole repos."""
    from huggingface_hub import hf_hub_download

    where = dict(cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    try:
        return hf_hub_download(repo_id, filename, local_files_only=True, **where)
    except Exception as cached_exc:  # noqa: BLE001 - not cached: maybe download
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        if allow_download is None:
            allow_download = not offline
        if not allow_download:
            raise ModelSourceError(
                f"{repo_id}/{filename} is not in the local Hugging Face cache and downloading is off "
                f"(HF_HUB_OFFLINE). Download it once with `hf download {repo_id} {filename}`.") from cached_exc
    try:
        return hf_hub_download(repo_id, filename, **where)
    except Exception as exc:  # noqa: BLE001
        raise ModelSourceError(
            f"Could not download {repo_id}/{filename} from Hugging Face ({type(exc).__name__}: {exc}). Check the "
            f"network, or download it once with `hf download {repo_id} {filename}`.") from exc


def resolve_lora(name: str, roots: ModelRoots) -> str:
    """Path of a LoRA file given by name (with or without `.safetensors`), inside the `loras` roots only."""
    candidates = [name] if name.lower().endswith(LORA_EXTS) else [name + ".safetensors", name]
    for cand in candidates:
        path = roots.resolve("loras", cand)
        if path and os.path.isfile(path):
            return path
        if path and os.path.isdir(path):
            raise LoraError(f"LoRA {name!r} is a folder, not a file. Pick the .safetensors file inside it (or rename "
                            "the folder).")
    raise LoraError(f"LoRA {name!r} was not found in the loras folders {list(roots.loras)}. Put the .safetensors "
                    "file there (names are relative to that folder; paths outside it are not allowed).")


def resolve_file_option(label: str, value: str, kind: str, roots: ModelRoots) -> str:
    """The file a file-valued model option names (e.g. Z-Image's `training_adapter`): a name inside the `kind`
    roots, an absolute path, or `org/repo/file.safetensors` in the local Hugging Face cache (where ai-toolkit's own
    `hf_hub_download` put it during training). Never downloads."""
    value = value.strip()
    if os.path.isabs(value) and os.path.isfile(value):
        return value
    path = roots.resolve(kind, value) if roots.folders(kind) else None
    if path and os.path.isfile(path):
        return path
    tried = [f"the {kind} folders {list(roots.folders(kind))}"]
    parts = value.split("/")
    if len(parts) == 3:
        from huggingface_hub import try_to_load_from_cache

        repo = "/".join(parts[:2])
        cached = try_to_load_from_cache(repo, parts[2], cache_dir=os.environ.get("HF_HUB_CACHE"))
        if isinstance(cached, str) and os.path.isfile(cached):
            return cached
        tried.append(f"the Hugging Face cache ({repo})")
        hint = f"Put the file in the {kind} folder and give its name, or download it once with `hf download {repo} " \
               f"{parts[2]}`."
    else:
        hint = f"Put the .safetensors file in the {kind} folder and give its name (or an absolute path)."
    raise LoraError(f"{label} {value!r} was not found in {' or '.join(tried)}. {hint}")

