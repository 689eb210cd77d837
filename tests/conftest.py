"""Shared fixtures: the pack imported the way ComfyUI imports it, and a models folder of tiny random models.

The repository root is the custom node folder, so it has an `__init__.py` with relative imports. pytest would
collect that folder as a Python package and import its `__init__.py` under the folder's name, which fails for any
name that is not an identifier (`aitk-inference`, a CI work folder). Instead the root is collected as a plain
folder (`_RootIsAFolder`), and the tests import the pack under the fixed name `aitk_pack`, as ComfyUI imports a
custom node folder under a name of its own: the suite then runs the same in any checkout.

The models folder (built once per session, ~10 s) holds, for sd15 and sdxl: a Diffusers folder, a single-file
checkpoint with a config-only sidecar folder, and LoRA files in every layout the engine reads, saved in fp32
(ai-toolkit `save.dtype: fp32`) unless the name says otherwise.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.fixtures.pack_import import PACK, ROOT, import_pack  # noqa: E402,F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(2)


class _RootIsAFolder:
    """Collects the repository root as a folder, never as a package named after the checkout folder."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if Path(path) == Path(ROOT):
            return pytest.Dir.from_parent(parent, path=Path(path))
        return None


def pytest_configure(config):
    # a registered object is a global plugin: it also sees the collection of the root, above this conftest
    if not config.pluginmanager.has_plugin("aitk-root-is-a-folder"):
        config.pluginmanager.register(_RootIsAFolder(), "aitk-root-is-a-folder")


pack = import_pack()
from tests.fixtures import tiny_sd as tiny  # noqa: E402
from tests.fixtures.single_file import pipeline_to_single_file  # noqa: E402

TRIGGER = "ohwx"
# Tests run on the CPU (CI); set AITK_TEST_DEVICE=cuda on a GPU machine to run the parity checks there.
DEVICE = os.environ.get("AITK_TEST_DEVICE", "cpu")
# name -> (model, make_lora kwargs, dtype)
LORA_FILES = {
    "{m}_kohya": dict(),
    "{m}_kohya_conv": dict(conv=True, conv_rank=2),
    "{m}_kohya_all": dict(unet_scope="all", text=True),
    "{m}_kohya_te": dict(text=True),
    "{m}_peft": dict(naming="peft", alpha=None, text=True),
    "{m}_kohya_rank_alpha": dict(alpha=4.0, text=True),  # alpha == rank: scale 1, same values as the peft file
    "{m}_kohya_b": dict(seed=7),
    "{m}_kohya_bf16": dict(dtype=torch.bfloat16),
}
SDXL_ONLY = {"sdxl_kohya_sgm": dict(naming="sgm")}


def _save(state_dict, path, metadata):
    from safetensors.torch import save_file

    save_file(state_dict, path, metadata=metadata)


def _build_models(root: str) -> None:
    for sub in ("diffusers", "checkpoints", "loras"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for model in ("sd15", "sdxl"):
        pipe = tiny.BUILDERS[model](0)
        pipe.save_pretrained(os.path.join(root, "diffusers", f"tiny-{model}"))
        ckpt = os.path.join(root, "checkpoints", f"tiny-{model}.safetensors")
        _save(pipeline_to_single_file(pipe, model), ckpt, {"format": "pt"})
        sidecar = os.path.join(root, "checkpoints", f"tiny-{model}")
        pipe.save_pretrained(sidecar)
        for dirpath, _, files in os.walk(sidecar):  # configs and tokenizers only
            for f in files:
                if f.endswith(".safetensors"):
                    os.remove(os.path.join(dirpath, f))
        loras = dict(LORA_FILES, **(SDXL_ONLY if model == "sdxl" else {}))
        for name, kwargs in loras.items():
            name = name.format(m=model)
            if not name.startswith(model):
                continue
            kw = dict(kwargs)
            kw.setdefault("alpha", 2.0)
            _save(tiny.make_lora(pipe, model, **kw), os.path.join(root, "loras", name + ".safetensors"),
                  tiny.aitk_metadata(model, TRIGGER, name))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("aitk_models"))
    _build_models(root)
    old = os.environ.get("AITK_MODELS_DIR")
    os.environ["AITK_MODELS_DIR"] = root
    yield root
    if old is None:
        os.environ.pop("AITK_MODELS_DIR", None)
    else:
        os.environ["AITK_MODELS_DIR"] = old
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def nodes(models_dir):
    """The three contract node classes, from the pack's NODE_CLASS_MAPPINGS."""
    m = pack.NODE_CLASS_MAPPINGS
    return m["LoadAIToolkitPipeline"](), m["ApplyAIToolkitLoRA"](), m["AIToolkitSample"]()
