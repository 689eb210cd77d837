"""HTTP routes for the web extension (`web/aitk.js`): the effective sample settings as the library computes them,
the registry's sample defaults, and what a LoRA file says about itself.

    GET  /aitk/effective?model=ID&prompt=…&width=…&height=…&steps=…&guidance_scale=…&seed=…
                                    {"lines": [{"text", "kind": "normal"|"dim"|"warn"}, …]}: what AIToolkitSample
                                    will render with these widget values (`engine.build_request`: defaults, the
                                    prompt's --flags, validation, ai-toolkit's size floor, then the pipeline's
                                    `spec.size.floor`). A value the node would refuse is a "warn" line with the
                                    node's own message (200); an unknown model id is 400, a prompt over
                                    MAX_TEXT characters 413. Optional: negative_prompt, trigger_word.
    POST /aitk/effective            the same with the fields as a JSON object (for prompts too long for a URL:
                                    aiohttp refuses request lines over 8190 bytes); bodies over MAX_BODY are 413
    GET  /aitk/registry             {model_id: {label, defaults: {steps, guidance_scale, width, height},
                                                size_divisor, size_min, guidance, base_versions}}
    GET  /aitk/lora_info?name=NAME  LoraInfo.as_dict() of a file in the loras folders, read from its header only;
                                    404 for names that do not resolve inside those folders, 400 when unreadable

ComfyUI also serves them under /api/…. The routes are added to ComfyUI's server at import time, and only when one
is running (`server.PromptServer.instance`, created by ComfyUI's main.py before it loads custom nodes); importing
the pack anywhere else (tests, CLI, no ComfyUI) registers nothing. The handlers are plain functions returning
(status, body), so they are tested without a server (tests/test_routes.py).

/aitk/effective reads no files and loads no model: it is pure arithmetic on bounded strings (well under a
millisecond, also for a MAX_TEXT prompt), so it answers on the event loop.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys

from ..pipelines import engine
from ..pipelines.errors import AitkError, LoraError
from ..pipelines.lora.files import lora_info
from ..pipelines.prompts import _FLOAT_FLAGS, _INT_FLAGS, prepare
from ..pipelines.registry import REGISTRY
from ..pipelines.request import SampleRequest
from ..pipelines.sources import ModelRoots
from .comfy_bridge import log, model_roots

EFFECTIVE_PATH = "/aitk/effective"
REGISTRY_PATH = "/aitk/registry"
LORA_INFO_PATH = "/aitk/lora_info"

MAX_TEXT = 20000        # characters of prompt / negative_prompt / trigger_word the effective route reads
MAX_NUMBER = 64         # characters of a numeric field (anything longer is not a widget's value)
MAX_MODEL_ID = 100
MAX_BODY = 3 * 6 * MAX_TEXT + 4096  # bytes of a POST body: the three texts at MAX_TEXT \uXXXX-escaped characters
EFFECTIVE_FIELDS = ("model", "prompt", "negative_prompt", "trigger_word", "width", "height", "steps",
                    "guidance_scale", "seed")
# the prompt flags that change what the summary line shows (prompts.py's own tables), by request field
SHOWN_FLAGS = {flag: name for flag, name in {**_INT_FLAGS, **_FLOAT_FLAGS}.items()
               if name in ("width", "height", "steps", "guidance_scale")}


def _line(text: str, kind: str = "normal") -> dict:
    return {"text": text, "kind": kind}


def _num(x: float) -> str:
    """A guidance value as the node shows it: at most 3 decimals, no trailing zeros (6.0 → "6", 7.25 → "7.25")."""
    return f"{round(float(x), 3) + 0.0:g}"


def _number(value, default):
    """A widget value from the query: an int or float when it is one, else the (shortened) text, which
    build_request then refuses with its own message naming the input. Never raises."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if len(text) > MAX_NUMBER:
        return text[:MAX_NUMBER] + "…"
    for kind in (int, float):
        try:
            return kind(text)
        except (ValueError, OverflowError):
            pass
    return text


def _text(query, name: str) -> str:
    value = query.get(name)
    return value if isinstance(value, str) else ""


def effective_payload(query) -> tuple[int, dict]:
    """(HTTP status, JSON body) for /aitk/effective: the lines AIToolkitSample's info block shows for `query`
    (a mapping of the widget values, as strings or numbers)."""
    model = _text(query, "model")
    if not model:
        return 400, {"error": "Give the model id: /aitk/effective?model=sdxl&prompt=…"}
    spec = REGISTRY.get(model) if len(model) <= MAX_MODEL_ID else None
    if spec is None:
        shown = model if len(model) <= MAX_MODEL_ID else model[:MAX_MODEL_ID] + "…"
        return 400, {"error": f"{shown}: not in this server's model registry"}
    texts = {name: _text(query, name) for name in ("prompt", "negative_prompt", "trigger_word")}
    for name, text in texts.items():
        if len(text) > MAX_TEXT:
            return 413, {"error": f"The {name.replace('_', ' ')} is longer than {MAX_TEXT} characters: its "
                                  f"effective settings are not computed here (the node still renders it)."}
    values = {name: _number(query.get(name), default) for name, default in
              (("width", 0), ("height", 0), ("steps", 0), ("guidance_scale", -1.0), ("seed", 42))}

    d, size, guidance = spec.defaults, spec.size, spec.guidance
    g_name = "cfg" if guidance.kind in ("cfg", "true_cfg") else "guidance"

    def summary(width, height, steps, scale) -> str:
        text = f"{width}×{height}, {steps} steps"
        return text if guidance.kind == "none" else f"{text}, {g_name} {_num(scale)}"

    defaults = _line(f"model defaults: {summary(d.width, d.height, d.steps, d.guidance_scale)}", "dim")
    needs = [_line(f"{spec.id} needs an image on {slot.name}: {slot.purpose}", "dim")
             for slot in spec.controls if slot.required]
    try:
        request = engine.build_request(spec, texts["prompt"], texts["negative_prompt"], texts["trigger_word"] or None,
                                       values["width"], values["height"], values["seed"], values["steps"],
                                       values["guidance_scale"])
    except AitkError as exc:  # what the node will say when it runs
        return 200, {"lines": [_line(str(exc), "warn"), defaults, *needs]}

    # the size asked for before any floor: the node's values (0 = default), then the prompt's --w/--h
    asked = prepare(SampleRequest(prompt=texts["prompt"], width=int(values["width"]) or d.width,
                                  height=int(values["height"]) or d.height), texts["trigger_word"] or None)
    asked = (asked.width, asked.height)
    config = (request.width, request.height)  # GenerateImageConfig's floor (SizeRule.config_floor)
    rendered = size.floor(*asked)             # what the pipeline then renders
    notes = []
    for i, side in enumerate(("width", "height")):
        if config[i] != asked[i]:
            notes.append(_line(f"{side} {asked[i]} → {config[i]} "
                               f"(multiple of {size.divisor}, min {size.minimum})", "dim"))
        if rendered[i] != config[i]:
            notes.append(_line(f"{side} {config[i]} → {rendered[i]} (the pipeline floors to "
                               f"{size.pipeline_divisor})", "dim"))

    flags = {}  # field -> the flag that set it last, in the order the fields were first set
    for flag in request.flags:
        if flag in SHOWN_FLAGS:
            flags[SHOWN_FLAGS[flag]] = flag
    all_default = (not values["width"] and not values["height"] and not values["steps"]
                   and values["guidance_scale"] < 0 and not flags)
    lines = [_line(f"{spec.id}: {summary(*rendered, request.steps, request.guidance_scale)}"
                   + (" (model defaults)" if all_default else ""))]
    if not all_default:
        lines.append(defaults)
    if flags:
        lines.append(_line("from the prompt: " + ", ".join(f"--{f}" for f in flags.values()), "dim"))
    return 200, {"lines": lines + notes + needs}


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


async def read_json_object(request) -> tuple[int, dict]:
    """(200, the JSON object) of a POST body of at most MAX_BODY bytes, else (status, error body). Only the
    fields /aitk/effective reads are kept."""
    length = request.content_length
    if length is None:
        return 411, {"error": "POST /aitk/effective needs a Content-Length."}
    if length > MAX_BODY:
        return 413, {"error": f"The request body is larger than {MAX_BODY} bytes."}
    try:
        body = json.loads((await request.content.readexactly(length)).decode("utf-8")) if length else None
    except (ValueError, asyncio.IncompleteReadError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        body = None
    if not isinstance(body, dict):
        return 400, {"error": "POST /aitk/effective takes a JSON object: {\"model\": \"sdxl\", \"prompt\": …}."}
    return 200, {name: body[name] for name in EFFECTIVE_FIELDS if name in body}


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

    @server.routes.get(EFFECTIVE_PATH)
    async def aitk_effective_get(request):
        status, body = effective_payload(request.rel_url.query)
        return web.json_response(body, status=status)

    @server.routes.post(EFFECTIVE_PATH)
    async def aitk_effective_post(request):
        status, body = await read_json_object(request)
        if status == 200:
            status, body = effective_payload(body)
        return web.json_response(body, status=status)

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
