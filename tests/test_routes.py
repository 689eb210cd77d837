"""The web extension's HTTP routes (nodes/routes.py) without a server: the effective sample settings as the library
computes them (defaults, prompt flags, both size floors, guidance names, control images, the node's own refusals,
bounded and garbage input), the registry JSON, LoRA info from the header only, names confined to the loras folders,
clear errors for unreadable files, and the guarded registration (also on a real aiohttp app)."""
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


def effective(**query):
    status, body = routes.effective_payload(query)
    assert status == 200, body
    assert json.loads(json.dumps(body)) == body  # what the browser gets
    assert all(set(line) == {"text", "kind"} and line["kind"] in ("normal", "dim", "warn") for line in body["lines"])
    return [line["text"] for line in body["lines"]], [line["kind"] for line in body["lines"]]


WIDGETS = {"prompt": "photo of [trigger]", "width": "0", "height": "0", "steps": "0", "guidance_scale": "-1",
           "seed": "42"}  # a new AIToolkitSample node, as the extension sends it


@pytest.mark.parametrize("model, line", [
    ("sd15", "sd15: 512×512, 30 steps, cfg 6 (model defaults)"),
    ("sdxl", "sdxl: 1024×1024, 30 steps, cfg 6 (model defaults)"),
    ("flux", "flux: 1024×1024, 30 steps, guidance 4 (model defaults)"),
    ("flex1", "flex1: 1024×1024, 30 steps, guidance 4 (model defaults)"),
])
def test_model_defaults(model, line):
    assert effective(model=model, **WIDGETS) == ([line], ["normal"])
    assert effective(model=model) == ([line], ["normal"])  # missing values are the widgets' defaults


def test_explicit_values_and_prompt_flags_sd15():
    texts, kinds = effective(**dict(WIDGETS, model="sd15", steps="12",
                                    prompt="photo of [trigger] --w 1001 --cfg 7.5"))
    assert texts == ["sd15: 1000×512, 12 steps, cfg 7.5",
                     "model defaults: 512×512, 30 steps, cfg 6",
                     "from the prompt: --w, --cfg",
                     "width 1001 → 1000 (multiple of 8, min 64)"]
    assert kinds == ["normal", "dim", "dim", "dim"]
    # the prompt's flags win over the widgets; a flag given twice is named once; unknown flags are not named
    texts, _ = effective(model="sd15", width="768", prompt="x --h 700 --steps 20 --s 25 --h 333 --zz 1 --d 7")
    assert texts == ["sd15: 768×328, 25 steps, cfg 6", "model defaults: 512×512, 30 steps, cfg 6",
                     "from the prompt: --h, --s", "height 333 → 328 (multiple of 8, min 64)"]
    assert effective(model="sdxl", guidance_scale="7.12345")[0][0] == "sdxl: 1024×1024, 30 steps, cfg 7.123"
    assert effective(model="sdxl", guidance_scale="0")[0][0] == "sdxl: 1024×1024, 30 steps, cfg 0"


def test_flux_floors_twice_and_names_its_guidance():
    texts, kinds = effective(**dict(WIDGETS, model="flux", width="1001", prompt="a cat --cfg 3.5"))
    assert texts == ["flux: 992×1024, 30 steps, guidance 3.5",
                     "model defaults: 1024×1024, 30 steps, guidance 4",
                     "from the prompt: --cfg",
                     "width 1001 → 1000 (multiple of 8, min 64)",
                     "width 1000 → 992 (the pipeline floors to 16)"]
    assert kinds == ["normal"] + ["dim"] * 4
    # only the pipeline's floor (1000 is a multiple of 8), on both sides; 1008 is a multiple of 16: no note
    assert effective(model="flex1", width="1000", height="1000")[0] == [
        "flex1: 992×992, 30 steps, guidance 4", "model defaults: 1024×1024, 30 steps, guidance 4",
        "width 1000 → 992 (the pipeline floors to 16)", "height 1000 → 992 (the pipeline floors to 16)"]
    assert effective(model="flux", width="1008")[0] == ["flux: 1008×1024, 30 steps, guidance 4",
                                                         "model defaults: 1024×1024, 30 steps, guidance 4"]
    # the smallest size: ai-toolkit's minimum 64 is a multiple of 16
    assert effective(model="flux", prompt="--w 10")[0][0] == "flux: 64×1024, 30 steps, guidance 4"
    for model, spec in REGISTRY.items():  # every model: its guidance named by its kind ("none": not shown)
        first = effective(model=model)[0][0]
        name = {"cfg": "cfg", "true_cfg": "cfg", "embedded": "guidance"}.get(spec.guidance.kind)
        assert (f", {name} " in first) if name else ("cfg" not in first and "guidance" not in first), model


def test_a_required_control_image_is_named():
    texts, kinds = effective(model="flux_kontext", **WIDGETS)
    assert texts[0] == "flux_kontext: 1024×1024, 30 steps, guidance 4 (model defaults)"
    assert texts[1].startswith("flux_kontext needs an image on control_image: the image to edit") and kinds[1] == "dim"
    assert len(texts) == 2
    assert not any("needs an image" in t for t in effective(model="flux")[0])
    # also next to a refusal: the node will want the image once the values are fixed
    texts, kinds = effective(model="flux_kontext", width="8")
    assert kinds == ["warn", "dim", "dim"] and "control_image" in texts[2]


@pytest.mark.parametrize("query, message", [
    ({"model": "sd15", "prompt": "photo --w big"}, "Prompt flag --w needs a number, got 'big'"),
    ({"model": "sdxl", "prompt": "photo --cfg"}, "Prompt flag --cfg needs a number, got ''"),
    ({"model": "sd15", "width": "8"}, "width 8 is outside 64..8192 for sd15 (0 means the model default, 512x512)."),
    ({"model": "flux", "height": "63"}, "height 63 is outside 64..8192 for flux"),
    ({"model": "sd15", "prompt": "x --w 9000"}, "Size 9000x512 (from the prompt's --w/--h) is larger than 8192"),
    ({"model": "sd15", "steps": "5000"}, "steps must be 1..999 for sd15, got 5000"),
    ({"model": "sd15", "prompt": "x --cfg 1000"}, "guidance_scale (--cfg/--l) must be a finite number in 0..100"),
    ({"model": "sd15", "width": "abc"}, "width must be a whole number, got 'abc'."),
    ({"model": "sd15", "steps": "12.5"}, "steps must be a whole number, got 12.5."),
    ({"model": "sd15", "steps": "1e999"}, "steps must be a whole number, got inf."),
    ({"model": "sd15", "guidance_scale": "nan"}, "must be a finite number in 0..100, got nan."),
    ({"model": "sd15", "guidance_scale": "lots"}, "guidance_scale (--cfg/--l) must be a number, got 'lots'."),
    ({"model": "sd15", "seed": "-5"}, "seed must be 0..18446744073709551615 (or -1 for random), got -5."),
    ({"model": "sd15", "width": "9" * 5000}, "width must be a whole number, got '" + "9" * 64 + "…'."),
])
def test_what_the_node_refuses_is_a_warn_line_with_its_message(query, message):
    texts, kinds = effective(**query)
    assert message in texts[0] and kinds[0] == "warn", texts
    assert texts[1].startswith("model defaults: ") and kinds[1] == "dim"


@pytest.mark.parametrize("value", ["", " ", "-", "0x10", "1,5", "١٢", "\x00", "--", "1e309", "-inf", "9" * 400,
                                   "NaN", "True", "[1]", "{}", "null", "½", "1" + "0" * 63])
@pytest.mark.parametrize("name", ["width", "height", "steps", "guidance_scale", "seed"])
def test_garbage_numbers_never_raise(name, value):
    status, body = routes.effective_payload({"model": "sdxl", name: value})
    assert status == 200 and body["lines"], body
    json.dumps(body)


@pytest.mark.parametrize("value", [None, True, 3, 512.0, [1, 2], {"a": 1}, float("nan")])
def test_non_string_values_from_a_json_body_never_raise(value):
    for name in routes.EFFECTIVE_FIELDS:
        status, body = routes.effective_payload({"model": "sd15", name: value} if name != "model" else {name: value})
        assert status in (200, 400), (name, value)
        assert "lines" in body or "error" in body
    assert effective(model="sd15", width=640, steps=12.0)[0][0] == "sd15: 640×512, 12 steps, cfg 6"


def test_unknown_or_missing_model_is_400():
    for query, message in (({"model": "sd3"}, "sd3: not in this server's model registry"),
                           ({}, "Give the model id"), ({"model": ""}, "Give the model id")):
        status, body = routes.effective_payload(query)
        assert status == 400 and message in body["error"]
    status, body = routes.effective_payload({"model": "m" * 100000})
    assert status == 400 and len(body["error"]) < 200  # the id is shortened in the message


def test_huge_texts_are_refused_quickly():
    import time

    limit = routes.MAX_TEXT
    assert effective(model="sd15", prompt="x" * (limit - 8) + " --w 640")[0][0] == "sd15: 640×512, 30 steps, cfg 6"
    for name in ("prompt", "negative_prompt", "trigger_word"):
        t0 = time.perf_counter()
        status, body = routes.effective_payload({"model": "sd15", name: "x" * (limit + 1)})
        assert status == 413 and str(limit) in body["error"], body
        assert time.perf_counter() - t0 < 0.05
    # the worst accepted prompt: as many flags as fit
    t0 = time.perf_counter()
    texts, _ = effective(model="sdxl", prompt=("--w 512 " * limit)[:limit])
    assert time.perf_counter() - t0 < 0.5 and "from the prompt: --w" in texts


def test_trigger_word_and_seed():
    assert effective(model="sdxl", seed="-1")[0] == ["sdxl: 1024×1024, 30 steps, cfg 6 (model defaults)"]
    assert effective(model="sdxl", seed=str(2 ** 53))[1] == ["normal"]
    # the trigger word is substituted before the flags are parsed, as ai-toolkit does
    texts, _ = effective(model="sd15", prompt="[trigger]", trigger_word="ohwx --w 640")
    assert texts[0] == "sd15: 640×512, 30 steps, cfg 6" and "from the prompt: --w" in texts


def test_effective_reads_no_files(monkeypatch):
    import builtins

    def refuse(*_, **__):
        raise AssertionError("/aitk/effective must not touch the file system")
    for module, name in ((builtins, "open"), (os, "stat"), (os, "listdir"), (os, "scandir"), (os.path, "exists"),
                         (os.path, "isfile")):
        monkeypatch.setattr(module, name, refuse)
    assert effective(model="flux_kontext", prompt="x --w 1001")[1][0] == "normal"
    assert effective(model="sd15", width="8")[1][0] == "warn"


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
    """`register` adds the routes to a server's RouteTableDef once; served by a real aiohttp app, the handlers
    answer JSON with the status, also for a prompt too long for a URL (POST) and malformed bodies."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    _, roots = loras
    monkeypatch.setattr(routes, "model_roots", lambda: roots)
    server = types.SimpleNamespace(routes=web.RouteTableDef())
    assert routes.register(server) is True
    assert routes.register(server) is False  # a second import of the pack adds nothing
    assert sorted((r.method, r.path) for r in server.routes) == sorted([
        ("GET", routes.EFFECTIVE_PATH), ("POST", routes.EFFECTIVE_PATH), ("GET", routes.REGISTRY_PATH),
        ("GET", routes.LORA_INFO_PATH)])

    async def scenario():
        app = web.Application()
        app.add_routes(server.routes)
        async with TestClient(TestServer(app)) as client:
            async def call(method, url, **kwargs):
                async with client.request(method, url, **kwargs) as response:
                    return response.status, await response.json(content_type=None)

            assert await call("GET", "/aitk/registry") == (200, routes.registry_payload())
            status, body = await call("GET", "/aitk/lora_info?name=good.safetensors")
            assert status == 200 and body["base_model_version"] == "sdxl_1.0"
            status, body = await call("GET", "/aitk/lora_info?name=..%2Fcheckpoints%2Fsecret.safetensors")
            assert status == 404 and "error" in body

            query = {"model": "flux", "prompt": "photo --w 1001", "guidance_scale": "-1"}
            assert await call("GET", "/aitk/effective", params=query) == routes.effective_payload(query)
            assert await call("POST", "/aitk/effective", json=query) == routes.effective_payload(query)
            status, body = await call("GET", "/aitk/effective", params={"model": "nope"})
            assert status == 400 and "not in this server's model registry" in body["error"]

            long = {"model": "sdxl", "prompt": "é, " * 5000 + "--s 12"}
            async with client.get("/aitk/effective", params=long) as response:
                assert response.status == 400  # aiohttp: request line over 8190 bytes; the extension POSTs these
            status, body = await call("POST", "/aitk/effective", json=long)
            assert status == 200 and body["lines"][0]["text"] == "sdxl: 1024×1024, 12 steps, cfg 6"
            status, body = await call("POST", "/aitk/effective", json=dict(long, prompt="x" * 20001))
            assert status == 413
            status, body = await call("POST", "/aitk/effective", data=b"x" * (routes.MAX_BODY + 1))
            assert status == 413 and "larger than" in body["error"]
            for data in (b"", b"not json", b"[1, 2]", b"\xff\xfe", b'"sdxl"'):
                status, body = await call("POST", "/aitk/effective", data=data)
                assert status == 400 and "JSON object" in body["error"], data
            # other fields in a body are dropped; non-string values are handled like garbage widget values
            status, body = await call("POST", "/aitk/effective",
                                      json={"model": "sd15", "width": [1], "path": "/etc/passwd"})
            assert status == 200 and body["lines"][0]["kind"] == "warn"

    asyncio.run(scenario())


def test_routes_register_only_inside_a_running_server(monkeypatch):
    assert "server" not in sys.modules or routes.running_server() is None  # the test process runs no ComfyUI
    fake = types.ModuleType("server")
    fake.PromptServer = type("PromptServer", (), {})  # ComfyUI imported, no server started: no instance
    monkeypatch.setitem(sys.modules, "server", fake)
    assert routes.running_server() is None
    fake.PromptServer.instance = instance = object()
    assert routes.running_server() is instance
