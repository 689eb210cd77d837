"""pytest fixtures for the end-to-end tests: a real ComfyUI server with the pack loaded, and a headless browser.

Environment:
  AITK_COMFYUI_DIR   DEST/ComfyUI as made by `.ci/setup_comfyui.sh PYTHON DEST` (unset: the e2e tests skip)
  AITK_COMFY_PYTHON  the python that runs ComfyUI (default: this interpreter)
  CI                 when set, missing prerequisites fail the tests instead of skipping them
  AITK_E2E_ARTIFACTS folder for screenshots and other artifacts (default: a pytest temp folder)

Models: override the session fixture `comfy_models_dir` to hand the server a prepared folder (its entries, e.g.
`diffusers/`, `checkpoints/`, `loras/`, are symlinked into the server's `models/`), or write files into
`comfy_models_dir / "loras"` etc. at any time: the running server lists them on the next request. To reuse a
session-built folder (e.g. the `models_dir` fixture of tests/conftest.py) from a test module:
`comfy_server.add_models(models_dir)` hard-links its entries into the server's models folders.
Every test in this folder gets the `e2e` marker (deselect with `-m "not e2e"`).
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_harness import MODEL_SUBDIRS, ComfyBrowser, ComfyServer, browser_available

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parents[1]


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but the e2e prerequisites are missing: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end test against a real ComfyUI server (tests/e2e)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


_RUNNING: list[ComfyServer] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the ComfyUI log tail to failing tests while a server runs."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _RUNNING:
        report.sections.append(("ComfyUI log (tail)", _RUNNING[-1].log_tail(80)))


@pytest.fixture(scope="session")
def comfy_install():
    """(ComfyUI folder, python) from the environment; skips (or fails under CI) when not set up."""
    comfy_dir = os.environ.get("AITK_COMFYUI_DIR")
    if not comfy_dir:
        _unavailable("AITK_COMFYUI_DIR is not set (run .ci/setup_comfyui.sh PYTHON DEST; set it to DEST/ComfyUI)")
    if not (Path(comfy_dir) / "main.py").is_file():
        _unavailable(f"AITK_COMFYUI_DIR={comfy_dir} has no main.py")
    return Path(comfy_dir), os.environ.get("AITK_COMFY_PYTHON") or sys.executable


@pytest.fixture(scope="session")
def comfy_models_dir(tmp_path_factory):
    """Models folder handed to the server; override (session scope) to pre-populate it."""
    root = tmp_path_factory.mktemp("models")
    for sub in MODEL_SUBDIRS:
        (root / sub).mkdir()
    return root


@pytest.fixture(scope="session")
def comfy_pack_dir():
    """The custom-node pack symlinked into the server's custom_nodes/ (this repository)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def comfy_extra_args():
    """Extra ComfyUI command-line arguments; override (session scope) e.g. with ["--cache-none"]."""
    return []


@pytest.fixture(scope="session")
def comfy_server_env():
    """Extra environment for the server process; by default nothing may reach the Hugging Face hub."""
    return {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}


@pytest.fixture(scope="session")
def comfy_server(comfy_install, comfy_models_dir, comfy_pack_dir, comfy_extra_args, comfy_server_env,
                 tmp_path_factory):
    """A running ComfyUI (CPU, 127.0.0.1, free port) shared by the whole session."""
    comfy_dir, python = comfy_install
    # linked as `custom_nodes/aitk-inference`, the folder name `git clone` gives users (not an identifier)
    server = ComfyServer(comfy_dir, python, tmp_path_factory.mktemp("comfy-base"), comfy_pack_dir,
                         pack_name="aitk-inference", extra_args=comfy_extra_args, env=comfy_server_env)
    server.start(models_dir=comfy_models_dir)
    print(f"\nComfyUI up at {server.url} in {server.start_seconds:.1f}s; log: {server.log_path}")
    _RUNNING.append(server)
    yield server
    _RUNNING.remove(server)
    server.stop()


@pytest.fixture(scope="session")
def browser(comfy_server):
    """`ComfyBrowser` bound to `comfy_server`; skips (or fails under CI) without chromium/node_modules."""
    reason = browser_available()
    if reason:
        _unavailable(reason)
    return ComfyBrowser(comfy_server.url)


@pytest.fixture(scope="session")
def e2e_artifacts_dir(tmp_path_factory):
    path = os.environ.get("AITK_E2E_ARTIFACTS")
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        return Path(path)
    return tmp_path_factory.mktemp("artifacts")
