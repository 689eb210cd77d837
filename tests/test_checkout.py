"""The suite and the pack do not depend on the checkout folder's name.

`git clone …/aitk-inference` gives a folder whose name is not a Python identifier, and ComfyUI's custom_nodes and
CI work folders are named freely. These tests copy this working tree into such folders and run part of the suite
there (in a subprocess, with this interpreter), and import the pack the way ComfyUI does: by file location, under
the folder's own name.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Quick modules that import the pack, its library and the shared conftest (no tiny models are built).
QUICK = ["tests/test_prompts.py", "tests/test_packaging.py"]


def _tree_files() -> list[str]:
    """The working tree as a clone would have it: tracked and untracked-but-not-ignored files."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                             capture_output=True).stdout
        return [f for f in out.decode().split("\0") if f and os.path.isfile(os.path.join(ROOT, f))]
    except (OSError, subprocess.CalledProcessError):
        skip = {".venv", ".git", "__pycache__", "node_modules"}
        files = []
        for dirpath, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in skip]
            files += [os.path.relpath(os.path.join(dirpath, n), ROOT) for n in names]
        return files


def _copy_tree(dest: str) -> str:
    for rel in _tree_files():
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), target)
    return dest


@pytest.mark.parametrize("folder", ["aitk-inference", "1.aitk inference"])
def test_suite_runs_in_a_folder_that_is_not_an_identifier(tmp_path, folder):
    checkout = _copy_tree(str(tmp_path / folder))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *QUICK], cwd=checkout,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "error" not in run.stdout.lower(), run.stdout[-2000:]


def test_pack_imports_from_a_hyphenated_folder_as_comfyui_imports_it(tmp_path):
    """ComfyUI's `load_custom_node`: `spec_from_file_location(<folder name>, <folder>/__init__.py)`."""
    checkout = _copy_tree(str(tmp_path / "aitk-inference"))
    code = ("import importlib.util, sys\n"
            f"folder = {checkout!r}\n"
            "spec = importlib.util.spec_from_file_location('aitk-inference', folder + '/__init__.py',"
            " submodule_search_locations=[folder])\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "sys.modules['aitk-inference'] = module\n"
            "spec.loader.exec_module(module)\n"
            "print(sorted(module.NODE_CLASS_MAPPINGS), module.WEB_DIRECTORY)\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == ("['AIToolkitModelOptions', 'AIToolkitSample', 'ApplyAIToolkitLoRA', "
                                  "'LoadAIToolkitPipeline'] ./web")
