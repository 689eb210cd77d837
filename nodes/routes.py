"""HTTP routes for the web extension (`web/aitk.js`): the registry's sample defaults and what a LoRA file says
about itself.

    GET /aitk/registry              {model_id: {label, defaults: {steps, guidance_scale, width, height},
                                                size_divisor, size_min, guidance, base_versions}}
    GET /aitk/lora_info?name=NAME   LoraInfo.as_dict() of a file in the loras folders, read from its header only;
                                    404 for names that do not resolve inside those folders, 400 when unreadable

ComfyUI also serves both under /api/…. The routes are added to ComfyUI's server at import time, and only when one
is running (`server.PromptServer.instance`, created by ComfyUI's main.py before it loads custom nodes); importing
the pack anywhere else (tests, CLI, no ComfyUI) registers nothing. The handlers are plain functions returning
(status, body), so they are tested without a server (tests/test_routes.py).
"""
from __future__ import annotations

import asyncio
import os
import sys

from ..pipelines.errors import LoraError
from ..pipelines.lora.files import lora_info
from ..pipelines.registry import REGISTRY
from ..pipelines.sources import ModelRoots
from .comfy_bridge import log, model_roots

REGISTRY_PATH = "/aitk/registry"
LORA_INFO_PATH = "/aitk/lora_info"


def registry_payload() -> dict:
    """What the frontend needs to show a model's effective sample settings (everything else stays server-side)."""
    return {spec.id: {"label": spec.label,
                      "defaults": {"steps": spec.defaults.steps, "guidance_scale": spec.defaults.guidance_scale,
                                   "width": spec.defaults.width, "height": spec.defaults.height},
                      "size_divisor": spec.size.divisor, "size_min": spec.size.minimum,
                      "guidance": spec.guidance.kind, "base_versions": list(spec.base_versions)}
            for spec in REGISTRY.values()}


def lora_info_payload(name: str | None, roots: ModelRoots | None = None) -> tuple[int, dict]:
    """(HTTP status, JSON body) for `/aitk/lora_info?name=NAME`. Only names inside the loras folders resolve;
    error messages name the file, never a server path."""
    if not name:
        return 400, {"error": "Give the LoRA file name: /aitk/lora_info?name=my_lora.safetensors"}
    path = (roots or model_roots()).resolve("loras", name)
    if not path or not os.path.isfile(path):
        return 404, {"error": f"LoRA {name!r} is not a file in the loras model folders."}
    try:
        return 200, lora_info(path).as_dict()
    except LoraError as exc:
        return 400, {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a header that parses as JSON but has odd entries
        return 400, {"error": f"LoRA file {os.path.basename(path)} has a malformed safetensors header "
                              f"({type(exc).__name__}: {exc})."}


def running_server():
    """ComfyUI's PromptServer instance when a server is running in this process, else None. Imports nothing: a
    running ComfyUI has already imported its `server` module; anything else (no ComfyUI, or ComfyUI imported
    without a server) has no instance."""
    module = sys.modules.get("server")
    return getattr(getattr(module, "PromptServer", None), "instance", None)


def register(server) -> bool:
    """Add the routes to `server.routes` (once per server); True when added."""
    if getattr(server, "_aitk_routes_registered", False):
        return False
    from aiohttp import web

    @server.routes.get(REGISTRY_PATH)
    async def aitk_registry(request):
        return web.json_response(registry_payload())

    @server.routes.get(LORA_INFO_PATH)
    async def aitk_lora_info(request):
        # a header can be large (up to 100 MB): read it off the event loop
        status, body = await asyncio.get_running_loop().run_in_executor(
            None, lora_info_payload, request.rel_url.query.get("name", ""))
        return web.json_response(body, status=status)

    server._aitk_routes_registered = True
    return True


_server = running_server()
if _server is not None:
    try:
        register(_server)
    except Exception as exc:  # noqa: BLE001 - the nodes must load even if the info routes cannot be added
        log.warning("[AI Toolkit] web extension routes not registered: %s", exc)
