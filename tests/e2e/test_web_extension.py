"""The web extension (web/aitk.js + nodes/routes.py) against a real ComfyUI server and its real frontend.

HTTP: the routes answer (also under /api), /aitk/effective computes the sample's lines with the library (GET, and
POST for long prompts), and lora_info refuses names outside the loras folder. Browser (one page load): a
LoadAIToolkitPipeline → ApplyAIToolkitLoRA → AIToolkitSample graph shows the LoRA's own info and the effective
settings the server computed; a click on the model combo updates them; a FLUX sample shows the pipeline's second
floor and "guidance"; a prompt too long for a URL still gets its lines; a refused width shows the node's message;
new sample nodes get a "fixed" seed while a saved "randomize" survives a workflow load; the info text is neither
saved nor sent; an unreadable file gets a message.
A capture of the canvas is written to the artifacts folder (web_extension.png).
"""
import base64
import json
import urllib.parse

import pytest
from comfy_harness import ComfyHTTPError

CORRUPT = "aitk_e2e_corrupt.safetensors"


@pytest.fixture(scope="module")
def server(comfy_server, models_dir):
    comfy_server.add_models(models_dir)
    corrupt = comfy_server.models_dir / "loras" / CORRUPT
    corrupt.write_bytes(b"this is not a safetensors file")
    yield comfy_server
    corrupt.unlink(missing_ok=True)  # the server is shared: leave its loras folder as it was


def test_routes_answer_over_http(server):
    registry = server.get("/aitk/registry")
    assert registry == server.get("/api/aitk/registry")
    assert registry["sdxl"]["defaults"] == {"steps": 30, "guidance_scale": 6.0, "width": 1024, "height": 1024}
    assert registry["sd15"]["defaults"]["width"] == 512
    assert (registry["sdxl"]["size_divisor"], registry["sdxl"]["size_min"]) == (8, 64)

    query = urllib.parse.urlencode({"model": "flux", "prompt": "photo --w 1001 --cfg 3.5", "width": "0",
                                    "height": "0", "steps": "0", "guidance_scale": "-1", "seed": "42"})
    effective = server.get(f"/aitk/effective?{query}")
    assert effective == server.get(f"/api/aitk/effective?{query}")
    assert [line["text"] for line in effective["lines"]] == [
        "flux: 992×1024, 30 steps, guidance 3.5",
        "model defaults: 1024×1024, 30 steps, guidance 4",
        "from the prompt: --w, --cfg",
        "width 1001 → 1000 (multiple of 8, min 64)",
        "width 1000 → 992 (the pipeline floors to 16)",
    ]
    long = {"model": "sdxl", "prompt": "é " * 4000 + "--s 12"}  # far over aiohttp's 8190-byte request line
    assert server.post("/api/aitk/effective", long)["lines"][0] == {"text": "sdxl: 1024×1024, 12 steps, cfg 6",
                                                                    "kind": "normal"}
    bad = server.get("/aitk/effective?model=sd15&width=abc")["lines"][0]
    assert bad == {"text": "width must be a whole number, got 'abc'.", "kind": "warn"}
    with pytest.raises(ComfyHTTPError) as err:
        server.get("/aitk/effective?model=no_such_model")
    assert err.value.status == 400 and err.value.body["error"] == "no_such_model: not in this server's model registry"

    info = server.get("/api/aitk/lora_info?name=sdxl_kohya.safetensors")
    assert (info["base_model_version"], info["trigger_word"], info["software"]) == ("sdxl_1.0", "ohwx", "ai-toolkit")
    assert info["ranks"] and info["module_count"] > 0

    for name in ("../checkpoints/tiny-sdxl.safetensors", "..%2Fcheckpoints%2Ftiny-sdxl.safetensors",
                 "%2Fetc%2Fpasswd", "no_such_lora.safetensors"):
        with pytest.raises(ComfyHTTPError) as err:
            server.get(f"/aitk/lora_info?name={name}")
        assert err.value.status == 404 and "error" in err.value.body, name
    with pytest.raises(ComfyHTTPError) as err:
        server.get(f"/aitk/lora_info?name={CORRUPT}")
    assert err.value.status == 400 and "cannot be read as safetensors" in err.value.body["error"]


# Runs in the ready page (`app`, `LiteGraph` in scope); returns what the nodes show at each step.
PAGE_JS = r"""
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const until = async (fn, what, ms = 10000) => {
  for (const t0 = Date.now(); Date.now() - t0 < ms; await sleep(50)) { const v = fn(); if (v) return v; }
  throw new Error(`timed out waiting for ${what}`);
};
const w = (node, name) => node.widgets.find((x) => x.name === name);
const info = (node) => w(node, "aitk_info")?.value ?? null;
// the sample lines come from GET /aitk/effective (debounced): wait for the answer to the current values
const answer = async (node, start) => {
  try {
    return await until(() => info(node)?.startsWith(start) && info(node), `a sample info starting ${start}`);
  } catch (e) {
    throw new Error(`${e.message}; it shows: ${JSON.stringify(info(node))}`);
  }
};
const change = (node, name, value) => { const x = w(node, name); x.value = value; x.callback?.(value); };
const byType = (type) => app.graph.nodes.filter((n) => n.comfyClass === type);
const out = {};

app.graph.clear();
const load = LiteGraph.createNode("LoadAIToolkitPipeline");
const lora = LiteGraph.createNode("ApplyAIToolkitLoRA");
const sample = LiteGraph.createNode("AIToolkitSample");
for (const n of [load, lora, sample]) app.graph.add(n);
load.pos = [20, 60]; lora.pos = [330, 60]; sample.pos = [700, 60];
app.canvas.ds.offset = [0, 0];
app.canvas.ds.scale = 1;
out.newControl = w(sample, "control_after_generate").value;
out.unconnected = info(sample);
change(load, "model", "sdxl");
change(lora, "lora_name", "sdxl_kohya.safetensors");
load.connect(0, lora, 0);
lora.connect(0, sample, 0);
await until(() => info(lora)?.includes("trigger word"), "the LoRA info");
out.loraInfo = info(lora);
out.sdxl = await answer(sample, "sdxl:");

// the user clicks the left arrow of the model combo (sdxl -> sd15): the widget's callback runs as in the app
const model = w(load, "model");
app.graph.setDirtyCanvas(true, true);
await sleep(100); // drawn once, so the widget knows its place
const rect = app.canvas.canvas.getBoundingClientRect();
const at = { clientX: rect.left + load.pos[0] + 23, clientY: rect.top + load.pos[1] + model.y + 10, bubbles: true,
  pointerId: 1, isPrimary: true, pointerType: "mouse", button: 0 };
app.canvas.canvas.dispatchEvent(new PointerEvent("pointerdown", { ...at, buttons: 1 }));
app.canvas.canvas.dispatchEvent(new PointerEvent("pointerup", { ...at, buttons: 0 }));
out.clickedModel = model.value;
out.sd15 = await answer(sample, "sd15:");
out.loraMismatch = info(lora);
change(sample, "steps", 12);
change(sample, "prompt", "photo of [trigger] --w 1001 --cfg 7.5");
out.explicit = await answer(sample, "sd15: 1000×512");

// save, mark the seed control "randomize" in the saved copy, load it back
const saved = structuredClone(app.graph.serialize());
const savedSample = saved.nodes.find((n) => n.type === "AIToolkitSample");
savedSample.widgets_values[sample.widgets.indexOf(w(sample, "control_after_generate"))] = "randomize";
out.savedHasInfo = JSON.stringify(saved).includes("trigger word");
await app.loadGraphData(saved);
const [load2] = byType("LoadAIToolkitPipeline"), [lora2] = byType("ApplyAIToolkitLoRA");
const [sample2] = byType("AIToolkitSample");
out.loadedControl = w(sample2, "control_after_generate").value;
await until(() => info(lora2)?.includes("trigger word"), "the LoRA info after loading");
out.loaded = { lora: info(lora2), sample: await answer(sample2, "sd15:") };
const prompt = (await app.graphToPrompt()).output;
out.apiInputs = Object.fromEntries(Object.values(prompt).map((n) => [n.class_type, Object.keys(n.inputs)]));

// back to sdxl and defaults; a second LoRA node with an unreadable file; a second sample on its defaults
change(load2, "model", "sdxl");
change(sample2, "steps", 0);
change(sample2, "prompt", "photo of [trigger] --w 1001");
const bad = LiteGraph.createNode("ApplyAIToolkitLoRA");
const plain = LiteGraph.createNode("AIToolkitSample");
app.graph.add(bad);
app.graph.add(plain);
change(bad, "lora_name", "%CORRUPT%");
load2.connect(0, bad, 0);
bad.connect(0, plain, 0);
await until(() => info(bad)?.includes("Cannot read"), "the unreadable-file message");
out.bad = info(bad);
out.plain = await answer(plain, "sdxl:");
out.plainControl = w(plain, "control_after_generate").value;
out.sample2 = await answer(sample2, "sdxl: 1000×1024");

// a FLUX.1 loader with its own sample: the pipeline's second floor and the guidance's name
const fluxLoad = LiteGraph.createNode("LoadAIToolkitPipeline");
const flux = LiteGraph.createNode("AIToolkitSample");
app.graph.add(fluxLoad);
app.graph.add(flux);
change(fluxLoad, "model", "flux");
fluxLoad.connect(0, flux, 0);
change(flux, "width", 1000);
change(flux, "guidance_scale", 3.5);
out.flux = await answer(flux, "flux:");
// a prompt too long for a URL (the extension POSTs it), then a width the node refuses
change(plain, "prompt", "a photo, ".repeat(600) + "--h 640");
out.longPrompt = await answer(plain, "sdxl: 1024×640");
change(plain, "width", 8);
out.refused = await answer(plain, "width 8");

let y = 40; // the loaders and both LoRA nodes in a column, the sample nodes beside it
for (const n of [load2, lora2, bad, fluxLoad]) { n.pos = [10, y]; y += n.size[1] + 45; }
sample2.pos = [360, 40];
plain.pos = [790, 40];
flux.pos = [360, sample2.size[1] + 90];
app.canvas.ds.offset = [0, 20];
app.graph.setDirtyCanvas(true, true);
await sleep(400);
out.png = app.canvas.canvas.toDataURL("image/png");
return out;
"""


def test_nodes_show_model_defaults_and_lora_info(server, browser, e2e_artifacts_dir):
    out = browser.eval(PAGE_JS.replace("%CORRUPT%", CORRUPT), timeout=90)
    shot = e2e_artifacts_dir / "web_extension.png"
    shot.write_bytes(base64.b64decode(out.pop("png").split(",", 1)[1]))
    print(f"\ncanvas capture: {shot}\n" + json.dumps(out, indent=1, ensure_ascii=False))

    assert "aitk.js" not in browser.last_stderr  # no errors from the extension in the browser console
    assert out["newControl"] == "fixed"  # new sample nodes: reproducible seed
    assert "Connect Load AI Toolkit Pipeline" in out["unconnected"]
    assert "trigger word: ohwx" in out["loraInfo"] and "sdxl_1.0" in out["loraInfo"]
    assert "ai-toolkit 0.12.26" in out["loraInfo"] and "rank 4" in out["loraInfo"]
    assert out["sdxl"] == "sdxl: 1024×1024, 30 steps, cfg 6 (model defaults)"
    assert out["clickedModel"] == "sd15"
    assert out["sd15"] == "sd15: 512×512, 30 steps, cfg 6 (model defaults)"
    assert "the file says sdxl_1.0, but the pipeline is sd15" in out["loraMismatch"]
    assert out["explicit"].splitlines() == [
        "sd15: 1000×512, 12 steps, cfg 7.5",
        "model defaults: 512×512, 30 steps, cfg 6",
        "from the prompt: --w, --cfg",
        "width 1001 → 1000 (multiple of 8, min 64)",
    ]

    assert out["savedHasInfo"] is False  # the info text is not saved with the workflow …
    assert all("aitk_info" not in inputs for inputs in out["apiInputs"].values())  # … nor sent with the prompt
    assert out["loadedControl"] == "randomize"  # a loaded workflow's value is kept
    assert "trigger word: ohwx" in out["loaded"]["lora"]
    assert out["loaded"]["sample"].startswith("sd15: 1000×512, 12 steps, cfg 7.5")

    assert out["bad"].startswith("Cannot read this LoRA:") and "cannot be read as safetensors" in out["bad"]
    assert out["plain"] == "sdxl: 1024×1024, 30 steps, cfg 6 (model defaults)"
    assert out["plainControl"] == "fixed"
    assert out["sample2"].splitlines() == [
        "sdxl: 1000×1024, 30 steps, cfg 6",
        "model defaults: 1024×1024, 30 steps, cfg 6",
        "from the prompt: --w",
        "width 1001 → 1000 (multiple of 8, min 64)",
    ]
    assert out["flux"].splitlines() == [
        "flux: 992×1024, 30 steps, guidance 3.5",
        "model defaults: 1024×1024, 30 steps, guidance 4",
        "width 1000 → 992 (the pipeline floors to 16)",
    ]
    assert out["longPrompt"].splitlines()[-1] == "from the prompt: --h"
    assert out["refused"].splitlines() == [
        "width 8 is outside 64..8192 for sdxl (0 means the model default, 1024x1024).",
        "model defaults: 1024×1024, 30 steps, cfg 6",
    ]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
