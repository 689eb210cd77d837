"""Packaging rules for ComfyUI-Manager and the Comfy registry."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib

from tests.conftest import ROOT


def test_node_class_mappings_is_a_literal_dict():
    """ComfyUI-Manager's scanner reads NODE_CLASS_MAPPINGS statically from the source."""
    tree = ast.parse(open(os.path.join(ROOT, "__init__.py")).read())
    assigns = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
               if isinstance(t, ast.Name)}
    mapping = assigns["NODE_CLASS_MAPPINGS"]
    assert isinstance(mapping, ast.Dict)
    assert [k.value for k in mapping.keys] == ["LoadAIToolkitPipeline", "ApplyAIToolkitLoRA", "AIToolkitSample",
                                              "AIToolkitModelOptions"]
    assert isinstance(assigns["WEB_DIRECTORY"], ast.Constant) and assigns["WEB_DIRECTORY"].value == "./web"


def test_pyproject_has_project_and_comfy_tables():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        data = tomllib.load(f)
    project, comfy = data["project"], data["tool"]["comfy"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]) and project["name"] and project["description"]
    assert project["urls"]["Repository"]
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert comfy[key]


def test_requirements_are_safe_for_a_users_comfyui():
    """No torch family lines (ComfyUI owns them), no pins, no upper bounds: nothing can be downgraded."""
    lines = [line.split("#")[0].strip() for line in open(os.path.join(ROOT, "requirements.txt"))]
    lines = [line for line in lines if line]
    assert lines
    for line in lines:
        name = re.split(r"[<>=!~ ]", line)[0].lower()
        assert name not in ("torch", "torchvision", "torchaudio", "torchsde"), line
        assert "==" not in line and "<" not in line and "~=" not in line, line


def test_install_script_installs_nothing_and_is_idempotent():
    source = open(os.path.join(ROOT, "install.py")).read()
    assert "subprocess" not in source and "git clone" not in source and "pip.main" not in source
    runs = [subprocess.run([sys.executable, "install.py"], cwd=ROOT, capture_output=True, text=True) for _ in "12"]
    assert runs[0].returncode == 0 and runs[0].stdout == runs[1].stdout


def test_comfyignore_keeps_tests_out_of_the_registry_archive():
    entries = open(os.path.join(ROOT, ".comfyignore")).read().split()
    assert "tests/" in entries and ".ci/" in entries
