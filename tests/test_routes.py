"""The web extension's HTTP routes (nodes/routes.py) without a server: the registry JSON, LoRA info from the header
only, names confined to the loras folders, clear errors for unreadable files, and the guarded registration."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import sys
import types

import pytest

from aitk_pack.nodes import routes
from aitk_pack.pipelines.lora import files as lora_files
from aitk_pack.pipelines.registry import REGISTRY
from aitk_pack.pipelines.sources import ModelRoots
from tests.conftest import TRIGGER


def header_length(path) -> int:
    with open(path, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0]


@pytest.fixture
def loras(models_dir, tmp_path):
    """A private loras folder (bad files must not show up in the shared one) with one good ai-toolkit file."""
    folder = tmp_path / "models" / "loras"
    folder.mkdir(parents=True)
    shutil.copy(os.path.join(models_dir, "loras", "sdxl_kohya.safetensors"), folder / "good.safetensors")
    (tmp_path / "models" / "checkpoints").mkdir()
    (tmp_path / "models" / "checkpoints" / "secret.safetensors").write_bytes(b"x")
    return folder, ModelRoots(loras=(str(folder),))


def test_registry_payload_matches_the_registry():
    payload = json.loads(json.dumps(routes.registry_payload()))  # what the browser gets
    assert list(payload) == list(REGISTRY)
    for model_id, spec in REGISTRY.items():
        entry = payload[model_id]
        assert entry["label"] == spec.label
        assert entry["defaults"] == {"steps": spec.defaults.steps, "guidance_scale": spec.defaults.guidance_scale,
                                     "width": spec.defaults.width, "height": spec.defaults.height}
        assert (entry["size_divisor"], entry["size_min"]) == (spec.size.divisor, spec.size.minimum)
        assert entry["base_versions"] == list(spec.base_versions)
    assert payload["sdxl"]["defaults"] == {"steps": 30, "guidance_scale": 6.0, "width": 1024, "height": 1024}
    assert payload["sd15"]["defaults"]["width"] == 512


def test_lora_info_of_a_file_in_the_loras_folder(models_dir):
    from safetensors.torch import load_file

    status, body = routes.lora_info_payload("sdxl_kohya.safetensors")  # default roots: AITK_MODELS_DIR
    assert status == 200, body
    body = json.loads(json.dumps(body))
    tensors = load_file(os.path.join(models_dir, "loras", "sdxl_kohya.safetensors"))
    assert body["file"] == "sdxl_kohya.safetensors"
    assert body["base_model_version"] == "sdxl_1.0"
    assert (body["software"], body["software_version"]) == ("ai-toolkit", "0.12.26")
    assert body["trigger_word"] == TRIGGER
    assert body["tensor_count"] == len(tensors)
    assert body["module_count"] == len({k.split(".lora_")[0] for k in tensors if ".lora_down." in k})
    assert body["ranks"] == sorted({t.shape[0] for k, t in tensors.items() if k.endswith(".lora_down.weight")})
    assert body["dtypes"] == ["F32"]

    status, body = routes.lora_info_payload("sd15_kohya_bf16.safetensors")
    assert status == 200 and body["base_model_version"] == "sd_1.5" and "BF16" in body["dtypes"]


@pytest.mark.parametrize("name", ["../checkpoints/secret.safetensors", "../loras/good.safetensors", "..",
                                  "missing.safetensors", "sub/../good.safetensors", "ABSOLUTE"])
def test_names_outside_the_loras_folders_are_refused(loras, name):
    folder, roots = loras
    if name == "ABSOLUTE":
        name = str(folder / "good.safetensors")  # even an existing file, when named by absolute path
    status, body = routes.lora_info_payload(name, roots)
    assert status == 404, body
    assert "not a file in the loras model folders" in body["error"]
    assert str(folder.parent) not in body["error"].replace(name, "")  # no server paths beyond the name given


def test_empty_name_and_folders_are_refused(loras):
    folder, roots = loras
    (folder / "sub").mkdir()
    assert routes.lora_info_payload("", roots)[0] == 400
    assert routes.lora_info_payload(None, roots)[0] == 400
    assert routes.lora_info_payload("sub", roots)[0] == 404
    assert routes.lora_info_payload("good.safetensors", roots)[0] == 200


@pytest.mark.parametrize("content, message", [
    (b"", "cannot be read as safetensors"),
    (b"not a safetensors file at all", "cannot be read as safetensors"),
    (struct.pack("<Q", 2) + b"[]", "malformed safetensors header"),
    (struct.pack("<Q", 10) + b'{"a": 5}  ', "malformed safetensors header"),
])
def test_unreadable_files_give_400_with_the_message(loras, content, message):
    folder, roots = loras
    (folder / "bad.safetensors").write_bytes(content)
    status, body = routes.lora_info_payload("bad.safetensors", roots)
    assert status == 400
    assert message in body["error"] and "bad.safetensors" in body["error"]
    assert str(folder) not in body["error"]


def test_truncated_tensor_data_is_reported_from_the_header(loras):
    """The header is intact, the tensor data is cut: the size check against the header's offsets finds it."""
    folder, roots = loras
    good = (folder / "good.safetensors").read_bytes()
    n = header_length(folder / "good.safetensors")
    (folder / "cut.safetensors").write_bytes(good[: 8 + n + 100])
    status, body = routes.lora_info_payload("cut.safetensors", roots)
    assert status == 400 and "truncated" in body["error"], body


def test_lora_info_reads_only_the_header(loras, monkeypatch):
    """No safetensors/torch loading, and not one byte past the JSON header is read."""
    folder, roots = loras
    path = folder / "good.safetensors"

    def refuse(*_, **__):
        raise AssertionError("lora_info must not load tensors")

    import safetensors
    import safetensors.torch
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(lora_files, "load_tensors", refuse)
    read = []
    real_open = open

    def counting_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        real_read = handle.read

        def counted(size=-1):
            data = real_read(size)
            read.append(len(data))
            return data
        handle.read = counted
        return handle

    monkeypatch.setattr(lora_files, "open", counting_open, raising=False)  # module globals shadow builtins
    status, body = routes.lora_info_payload("good.safetensors", roots)
    assert status == 200 and body["trigger_word"] == TRIGGER
    assert sum(read) == 8 + header_length(path) < os.path.getsize(path)


def test_handlers_answer_json_through_aiohttp(loras, monkeypatch):
    """`register` adds both GET routes to a server's RouteTableDef once; the handlers answer JSON with the status."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    _, roots = loras
    monkeypatch.setattr(routes, "model_roots", lambda: roots)
    server = types.SimpleNamespace(routes=web.RouteTableDef())
    assert routes.register(server) is True
    assert routes.register(server) is False  # a second import of the pack adds nothing
    handlers = {r.path: r.handler for r in server.routes}
    assert set(handlers) == {routes.REGISTRY_PATH, routes.LORA_INFO_PATH}
    assert all(r.method == "GET" for r in server.routes)

    async def call(path, url):
        response = await handlers[path](make_mocked_request("GET", url))
        return response.status, json.loads(response.body)

    assert asyncio.run(call(routes.REGISTRY_PATH, "/aitk/registry")) == (200, routes.registry_payload())
    status, body = asyncio.run(call(routes.LORA_INFO_PATH, "/aitk/lora_info?name=good.safetensors"))
    assert status == 200 and body["base_model_version"] == "sdxl_1.0"
    outside = "/aitk/lora_info?name=..%2Fcheckpoints%2Fsecret.safetensors"
    status, body = asyncio.run(call(routes.LORA_INFO_PATH, outside))
    assert status == 404 and "error" in body


def test_routes_register_only_inside_a_running_server(monkeypatch):
    assert "server" not in sys.modules or routes.running_server() is None  # the test process runs no ComfyUI
    fake = types.ModuleType("server")
    fake.PromptServer = type("PromptServer", (), {})  # ComfyUI imported, no server started: no instance
    monkeypatch.setitem(sys.modules, "server", fake)
    assert routes.running_server() is None
    fake.PromptServer.instance = instance = object()
    assert routes.running_server() is instance
