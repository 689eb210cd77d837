"""Smoke tests of the e2e harness itself, with core ComfyUI nodes only: server, HTTP API, models folder, browser."""

import json
import random
import struct
from pathlib import Path

import pytest
from comfy_harness import PromptError, history_error

DATA = Path(__file__).resolve().parent / "data"


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def fresh_api_graph() -> dict:
    """The EmptyImage -> SaveImage graph with a random colour, so ComfyUI's output cache cannot answer it."""
    graph = load("empty_image_api.json")
    graph["1"]["inputs"]["color"] = random.randrange(1 << 24)
    return graph


def test_server_serves_core_nodes(comfy_server):
    info = comfy_server.object_info()
    assert {"SaveImage", "EmptyImage", "PreviewImage", "LoadImage"} <= info.keys()
    assert comfy_server.object_info("EmptyImage")["EmptyImage"]["output"] == ["IMAGE"]
    assert comfy_server.get("/system_stats")["system"]["comfyui_version"]


def test_pack_is_loaded(comfy_server):
    """The pack symlinked into custom_nodes/ imported (ComfyUI only logs import failures) and registered."""
    contract = {"LoadAIToolkitPipeline", "ApplyAIToolkitLoRA", "AIToolkitSample"}
    assert f"(IMPORT FAILED): {comfy_server.base_dir / 'custom_nodes' / comfy_server.pack_name}" \
        not in comfy_server.log_text()
    assert contract <= comfy_server.object_info().keys()


def test_api_graph_runs_and_saves_png(comfy_server):
    entry = comfy_server.run_prompt(fresh_api_graph(), timeout=60)
    assert entry["status"]["status_str"] == "success", history_error(entry)
    [path] = comfy_server.output_paths(entry)
    assert path.is_file() and path.is_relative_to(comfy_server.base_dir / "output")
    assert png_size(path) == (64, 64)


def test_invalid_graphs_are_refused(comfy_server):
    graph = fresh_api_graph()
    graph["1"]["inputs"]["width"] = 0  # below min=1
    with pytest.raises(PromptError) as err:
        comfy_server.queue_prompt(graph)
    assert err.value.status == 400
    assert err.value.error_type == "prompt_outputs_failed_validation"
    assert [e["type"] for e in err.value.node_errors["1"]["errors"]] == ["value_smaller_than_min"]

    with pytest.raises(PromptError) as err:
        comfy_server.queue_prompt({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert err.value.error_type == "invalid_prompt"


def test_interrupt_and_free_on_idle_server(comfy_server):
    comfy_server.interrupt()
    comfy_server.free(unload_models=True, free_memory=True)
    assert comfy_server.get("/queue") == {"queue_running": [], "queue_pending": []}
    entry = comfy_server.run_prompt(fresh_api_graph(), timeout=60)  # an idle interrupt must not stick
    assert entry["status"]["status_str"] == "success", history_error(entry)


def test_models_dir_is_live(comfy_server, comfy_models_dir, tmp_path):
    name = f"smoke_{random.randrange(1 << 30)}.safetensors"
    (comfy_models_dir / "loras" / name).write_bytes(b"")
    assert name in comfy_server.get("/models/loras")

    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / f"linked_{name}").write_bytes(b"")
    assert [p.name for p in comfy_server.add_models(tmp_path)] == [f"linked_{name}"]
    assert f"linked_{name}" in comfy_server.get("/models/loras")


def test_frontend_converts_ui_workflow_to_api(browser):
    api = browser.ui_to_api(DATA / "empty_image_ui.json")
    assert api == load("empty_image_api.json")


def test_frontend_runs_workflow_and_screenshots(browser, comfy_server, e2e_artifacts_dir):
    shot = e2e_artifacts_dir / "empty_image_run.png"
    result = browser.run(DATA / "empty_image_ui.json", shot, timeout=90)
    assert result["ok"], result
    assert result["queued_via"] == "run-button"
    assert [p.is_file() for p in comfy_server.output_paths({"outputs": result["outputs"]})] == [True]
    assert png_size(shot) == (1280, 800)


def test_frontend_eval_reads_and_sets_widgets(browser):
    js = """
    const node = LiteGraph.createNode("EmptyImage");
    app.graph.add(node);
    const width = node.widgets.find(w => w.name === "width");
    width.value = 96;
    return {names: node.widgets.map(w => w.name), width: width.value, nodes: app.graph.nodes.length};
    """
    result = browser.eval(js, ui_json=DATA / "empty_image_ui.json")
    assert result == {"names": ["width", "height", "batch_size", "color"], "width": 96, "nodes": 3}
