"""Standard-library helpers for end-to-end tests against a real ComfyUI server.

`ComfyServer` starts ComfyUI (installed by `.ci/setup_comfyui.sh`) on 127.0.0.1 with its own `--base-directory`,
the pack symlinked into `custom_nodes/`, and stops it again by PID. `ComfyClient` (which `ComfyServer` extends)
speaks ComfyUI's HTTP API: `/object_info`, `/prompt`, `/history`, `/interrupt`, `/free`.
`ComfyBrowser` (and the `ui_to_api` shortcut) call the headless-Chromium driver `browser/comfy_browser.mjs`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
BROWSER_SCRIPT = BROWSER_DIR / "comfy_browser.mjs"
MODEL_SUBDIRS = ("diffusers", "checkpoints", "loras")


class ComfyHTTPError(RuntimeError):
    """An HTTP error from ComfyUI; `status` and the decoded JSON (or text) `body` are kept."""

    def __init__(self, method: str, path: str, status: int, body):
        self.status, self.body = status, body
        super().__init__(f"{method} {path} -> HTTP {status}: {json.dumps(body)[:4000]}")


class PromptError(ComfyHTTPError):
    """`POST /prompt` was refused (HTTP 400): `body` holds ComfyUI's `error` and `node_errors`."""

    @property
    def error_type(self) -> str | None:
        return (self.body.get("error") or {}).get("type") if isinstance(self.body, dict) else None

    @property
    def node_errors(self) -> dict:
        return self.body.get("node_errors", {}) if isinstance(self.body, dict) else {}


class ComfyClient:
    """Minimal client for a ComfyUI server at `url` (e.g. ``http://127.0.0.1:8188``)."""

    def __init__(self, url: str | None = None):
        self.url = url

    def _request(self, method: str, path: str, payload=None, timeout: float = 60):
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            cls = PromptError if path == "/prompt" and e.code == 400 else ComfyHTTPError
            raise cls(method, path, e.code, body) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def get(self, path: str, timeout: float = 60):
        return self._request("GET", path, timeout=timeout)

    def post(self, path: str, json_body=None, timeout: float = 60):
        return self._request("POST", path, {} if json_body is None else json_body, timeout=timeout)

    def object_info(self, node_class: str | None = None) -> dict:
        return self.get("/object_info" + (f"/{node_class}" if node_class else ""))

    def queue_prompt(self, api_prompt: dict, client_id: str = "aitk-e2e") -> str:
        """Queue an API-format graph; returns its prompt_id. Raises `PromptError` on validation failure."""
        return self.post("/prompt", {"prompt": api_prompt, "client_id": client_id})["prompt_id"]

    def wait_history(self, prompt_id: str, timeout: float = 300, poll: float = 0.2) -> dict:
        """Wait until the prompt finished (success, error or interrupt) and return its /history entry:
        ``{"prompt", "outputs", "status": {"status_str", "completed", "messages"}, "meta"}``."""
        deadline = time.monotonic() + timeout
        while True:
            entry = (self.get(f"/history/{prompt_id}") or {}).get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout}s; queue: {self.get('/queue')}")
            time.sleep(poll)

    def run_prompt(self, api_prompt: dict, timeout: float = 300) -> dict:
        """queue_prompt + wait_history."""
        return self.wait_history(self.queue_prompt(api_prompt), timeout)

    def interrupt(self, prompt_id: str | None = None) -> None:
        self.post("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})


def history_error(entry: dict) -> dict | None:
    """The `execution_error` / `execution_interrupted` message data of a history entry, or None."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind in ("execution_error", "execution_interrupted"):
            return {"type": kind, **data}
    return None


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer(ComfyClient):
    """A ComfyUI process with its own base directory.

    ``base_dir`` gets ``custom_nodes/<pack_name>`` (a symlink to ``pack_dir``), ``models/``, ``input/``,
    ``output/``, ``temp/`` and ``user/``. ``start(models_dir=D)`` symlinks each entry of D (e.g. its ``loras/``
    folder) into ``base_dir/models/``, so files put into D later are seen by the running server too;
    ``add_models`` adds single entries. `extra_args` are appended to ComfyUI's command line, `env` to its environment.
    """

    def __init__(self, comfy_dir, python=sys.executable, base_dir=None, pack_dir=None, port=None, *,
                 pack_name=None, extra_args=(), env=None):
        super().__init__()
        self.comfy_dir = Path(comfy_dir).resolve()
        self.python = str(python)
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="comfy-e2e-")).resolve()
        self.pack_dir = Path(pack_dir).resolve() if pack_dir else None
        self.pack_name = pack_name or (self.pack_dir.name if self.pack_dir else None)
        self.models_dir = self.base_dir / "models"
        self.port = port
        self.extra_args = list(extra_args)
        self.env = env
        self.log_path = self.base_dir / "comfyui.log"
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    def _prepare_dirs(self, models_dir):
        for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        if self.pack_dir:
            link = self.base_dir / "custom_nodes" / self.pack_name
            if not link.is_symlink():
                link.symlink_to(self.pack_dir, target_is_directory=True)
        if models_dir:
            for src in sorted(Path(models_dir).resolve().iterdir()):
                dst = self.models_dir / src.name
                if not dst.exists() and not dst.is_symlink():
                    dst.symlink_to(src, target_is_directory=src.is_dir())
        for sub in MODEL_SUBDIRS:
            (self.models_dir / sub).mkdir(exist_ok=True)

    def start(self, timeout: float = 120, models_dir=None) -> ComfyServer:
        if self.proc:
            raise RuntimeError("already started")
        self._prepare_dirs(models_dir)
        self.port = self.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base_dir), "--disable-auto-launch", "--disable-api-nodes",
               *self.extra_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"ComfyUI exited with code {code} during start; log tail:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                break
            except (OSError, ComfyHTTPError):
                pass
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise TimeoutError(f"ComfyUI did not answer within {timeout}s; log tail:\n{self.log_tail()}")
            time.sleep(0.25)
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 15) -> None:
        """Terminate the server by PID (SIGTERM, then SIGKILL after `timeout`)."""
        if not self.proc:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self):
        return self if self.proc else self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def add_models(self, root) -> list[Path]:
        """Put every entry of ``root/<folder>/`` (e.g. ``loras/x.safetensors``, ``diffusers/tiny-sd15``) into the
        server's ``models/<folder>/`` as hard links (copies across file systems), not symlinks: packs may refuse
        names whose real path leaves the model root. The running server sees them on its next request."""
        added = []
        for folder in sorted(p for p in Path(root).resolve().iterdir() if p.is_dir()):
            (self.models_dir / folder.name).mkdir(exist_ok=True)
            for src in sorted(folder.iterdir()):
                dst = self.models_dir / folder.name / src.name
                if dst.exists() or dst.is_symlink():
                    continue
                if src.is_dir():
                    shutil.copytree(src, dst, copy_function=_link_or_copy)
                else:
                    _link_or_copy(src, dst)
                added.append(dst)
        return added

    def output_paths(self, entry: dict) -> list[Path]:
        """Absolute paths of the images listed in a history entry's outputs (types output/temp/input)."""
        paths = []
        for node_out in entry.get("outputs", {}).values():
            for img in node_out.get("images", []):
                paths.append(self.base_dir / img.get("type", "output") / img.get("subfolder", "") / img["filename"])
        return paths


# --- headless browser (tests/e2e/browser/comfy_browser.mjs) ------------------------------------------------------

def browser_available() -> str | None:
    """None when the browser driver can run, else the reason it cannot."""
    if not shutil.which("node"):
        return "node is not on PATH"
    if not Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium is missing (run .ci/setup_browser.sh)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "tests/e2e/browser/node_modules is missing (run .ci/setup_browser.sh)"
    return None


def run_browser(*args: str, timeout: float = 180) -> tuple[object, str]:
    """Run ``node comfy_browser.mjs ARGS``; returns (its JSON stdout, its stderr: console/page errors).
    Raises with the stderr when it fails."""
    proc = subprocess.run(["node", str(BROWSER_SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"comfy_browser.mjs {args[0]} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout), proc.stderr


def _workflow_file(ui_json, tmp: str) -> str:
    if isinstance(ui_json, (str, Path)):
        return str(ui_json)
    path = Path(tmp) / "workflow.json"
    path.write_text(json.dumps(ui_json))
    return str(path)


class ComfyBrowser:
    """The frontend of the server at `url`, driven headless; each call is a fresh Chromium (~5 s).
    `last_stderr` keeps the browser console errors, page errors and failed requests of the latest call."""

    def __init__(self, url: str):
        self.url = url
        self.last_stderr = ""

    def _call(self, cmd: str, ui_json, *args: str, timeout: float):
        with tempfile.TemporaryDirectory() as tmp:
            wf = ["--workflow", _workflow_file(ui_json, tmp)] if ui_json is not None else []
            result, self.last_stderr = run_browser(cmd, "--server", self.url, *wf, *args,
                                                   "--timeout", str(timeout), timeout=timeout + 60)
        return result

    def ui_to_api(self, ui_json, timeout: float = 120) -> dict:
        """API-format prompt the real frontend makes from a UI-format workflow (a dict or a file path)."""
        return self._call("ui2api", ui_json, timeout=timeout)

    def run(self, ui_json, screenshot, timeout: float = 120) -> dict:
        """Load a UI-format workflow, press Run, wait for the prompt and its images, screenshot the page.
        Returns ``{"prompt_id", "outputs", "ok", "status", "images_shown", "queued_via", "errors"}``."""
        return self._call("run", ui_json, "--screenshot", str(screenshot), timeout=timeout)

    def eval(self, js: str, ui_json=None, timeout: float = 120):
        """Evaluate `js` in the ready page (an expression or a function body with `return`; awaited; `app` and
        `LiteGraph` in scope), optionally after loading a UI-format workflow; returns the JSON result."""
        return self._call("eval", ui_json, "--js", js, timeout=timeout)


def ui_to_api(server, ui_json) -> dict:
    """`ComfyBrowser.ui_to_api` for a server URL or a `ComfyServer`."""
    return ComfyBrowser(server if isinstance(server, str) else server.url).ui_to_api(ui_json)
