"""The example workflows and the contract nodes in a real ComfyUI, end to end, for every registry id.

This module runs its own ComfyUI (module scope, `--preview-method latent2rgb`) whose environment holds a fake
Hugging Face cache (HF_HUB_CACHE, HF_HUB_OFFLINE=1) with the tiny random Diffusers folder of every registry id
(`tests/fixtures/tiny_models.TINY`) under the registry's real repo id (`ModelSpec.base_repo`), so base "default"
resolves offline exactly as it does for a user. Its `loras/` folder holds tiny fp32 LoRAs in ai-toolkit's layout and
metadata under the names the example workflows use, plus a truncated file and a LoRA of the wrong family for the
error checks. Its `input/` folder holds a deterministic PNG under every name a LoadImage of the example workflows
reads (FLUX.1 Kontext's control image; Flex.2's LoadImage is bypassed in its workflow).

Every image is compared pixel for pixel with what the library (`aitk_pack.pipelines.engine`) renders in this test
process for the same settings: the loader's `quantization` (the FLUX-family workflows load with "match training",
i.e. ai-toolkit's qfloat8 preset through optimum-quanto) and the control images as ComfyUI's LoadImage reads them.

Sizes: every API twin renders through POST /prompt at 64x64 and 4 steps. The example workflows are also run from the
frontend (Run button): unmodified (model defaults: 1024x1024 / 30 steps for the FLUX family, which take minutes on a
CPU even with the tiny models) for FULL_SIZE = sd15, sdxl and flux_kontext (the FLUX-family one, as it also
exercises LoadImage); the other FLUX-family workflows run the same path with the sampler's width, height and steps
set to 64x64 / 4 steps in the loaded workflow (`SMALL`), against their API twin with the same change.

Fixtures and helpers: `workflow_support.py`.

Environment:
  AITK_UPDATE_DOCS=1   run every example workflow at full size and write docs/screenshot.png (the SDXL run) and
                       example_workflows/*.jpg (thumbnails) from the browser runs (CI leaves tracked files alone)
  AITK_UPDATE_DOCS=new write only the thumbnails that are missing, from the runs as they are (SMALL or full size)
  AITK_E2E_QUICK=1     skip the full-size example renders (for quick local iterations)
"""
from __future__ import annotations

import copy
import json
import struct
import time
import urllib.parse
import uuid
from pathlib import Path

import numpy as np
import pytest
from comfy_harness import PromptError, history_error
from comfy_ws import WsListener, finished
from PIL import Image
from workflow_support import (  # noqa: F401  (fixtures: e2e_models, comfy_server*, browser, library)
    CONTRACT_INPUTS, DOCS, FULL_RUN_TIMEOUT, FULL_SIZE, NEW_THUMBS, QUICK, SMALL, TRIGGER, TRUNCATED, UI_SIZE_STEPS,
    UPDATE_DOCS, WORKFLOWS, WRONG_FAMILY, assert_same_pixels, assert_success, browser, cached_nodes, comfy_extra_args,
    comfy_server, comfy_server_env, e2e_models, example_workflows, find, fresh_seed, library, load_json, saved_audio,
    saved_image, saved_video, small_prompt, small_twin, touch, twin_path, ui_nodes, workflow_model, workflow_path)

from aitk_pack.nodes.pipeline_nodes import CONTROL_INPUTS
from aitk_pack.pipelines import engine
from aitk_pack.pipelines.registry import REGISTRY, model_ids

# --- a minimal websocket client (standard library) for ComfyUI's /ws ------------------------------------------------

# --- /object_info ---------------------------------------------------------------------------------------------------

def test_object_info_has_the_contract_inputs(comfy_server, e2e_models):
    info = comfy_server.object_info()
    for cls, (required, optional) in CONTRACT_INPUTS.items():
        assert cls in info, f"{cls} missing from /object_info"
        inputs = info[cls]["input"]
        assert set(required) <= inputs["required"].keys(), (cls, list(inputs["required"]))
        assert set(optional) <= inputs.get("optional", {}).keys(), (cls, list(inputs.get("optional", {})))
        for section in ("required", "optional"):
            for name, spec in inputs.get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{cls}.{name} has no tooltip"
        assert info[cls]["description"], cls
        assert info[cls]["display_name"] != cls, f"{cls} has no display name"
    load, lora, sample, options = (info[c] for c in CONTRACT_INPUTS)
    assert load["output"] == lora["output"] == options["output"] == ["AITK_PIPELINE"]
    assert sample["output"] == ["IMAGE", "VIDEO", "AUDIO"]
    assert (lora["input"]["required"]["pipeline"][0] == sample["input"]["required"]["pipeline"][0]
            == options["input"]["required"]["pipeline"][0] == "AITK_PIPELINE")

    required = load["input"]["required"]
    assert required["model"][0] == model_ids()
    assert "default" in required["base"][0]
    assert required["dtype"][0] == ["auto", "bf16", "fp16", "fp32"]
    assert required["device"][0] == ["auto", "cuda", "cpu"]
    quantization = load["input"]["optional"]["quantization"]
    assert quantization[0] == engine.quantization_choices() and quantization[0][:3] == [
        "match training", "none", "qfloat8"], quantization[0]
    assert quantization[1]["default"] == "match training"

    for name in CONTROL_INPUTS:
        assert sample["input"]["optional"][name][0] == "IMAGE", (name, sample["input"]["optional"][name])
    attn_masking = options["input"]["required"]["attn_masking"]
    assert attn_masking[0] == "BOOLEAN" and attn_masking[1]["default"] is False, attn_masking

    files = sorted(p.name for p in e2e_models["loras"].iterdir())
    assert set(files) <= set(lora["input"]["required"]["lora_name"][0]), lora["input"]["required"]["lora_name"][0]
    assert lora["input"]["required"]["strength"][1]["default"] == 1.0

    # "model default" as the example workflows write it: 0 for sizes and steps, -1 for guidance
    required = sample["input"]["required"]
    assert [required[k][1]["default"] for k in ("width", "height", "steps", "guidance_scale")] == [0, 0, 0, -1.0]
    assert required["prompt"][1].get("multiline") is True


# --- the example workflows: files, templates menu, frontend conversion, runs --------------------------------------

def test_there_is_one_example_workflow_per_model_with_a_thumbnail():
    by_model = {}
    for path in example_workflows():
        ui = load_json(path)
        model = workflow_model(ui)
        by_model.setdefault(model, []).append(path.name)
        assert model in REGISTRY and REGISTRY[model].workflow == path.stem, (path.name, model)
        thumb = path.with_suffix(".jpg")
        assert thumb.is_file(), f"{thumb.name} (thumbnail) is missing (AITK_UPDATE_DOCS=1 writes it)"
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and 256 <= max(im.size) <= 1024, (thumb.name, im.format, im.size)
        assert twin_path(model).is_file(), f"{path.name} has no API twin {twin_path(model).name}"

        [load], [lora], [sample], [save] = (ui_nodes(ui, t) for t in ("LoadAIToolkitPipeline", "ApplyAIToolkitLoRA",
                                                                       "AIToolkitSample", "SaveImage"))
        assert load["widgets_values"][1:] == ["default", "auto", "auto", "match training"], path.name
        assert lora["widgets_values"][1] == 1.0, path.name
        prompt, negative, trigger, width, height, seed, control, steps, guidance = sample["widgets_values"][:9]
        assert "[trigger]" in prompt and trigger == TRIGGER, path.name
        assert (width, height, seed, control, steps, guidance) == (0, 0, 42, "fixed", 0, -1), path.name
        assert save["widgets_values"][0].startswith("aitk/"), path.name
        notes = " ".join(n["widgets_values"][0] for n in ui["nodes"] if n["type"] in ("Note", "MarkdownNote"))
        assert "trigger_word" in notes and "lora_name" in notes and "default" in notes, f"{path.name}: note"
        # a required control image is wired to an active LoadImage
        linked = {i["name"] for i in sample["inputs"] if i.get("link") is not None}
        for slot in REGISTRY[model].controls:
            if slot.required:
                assert slot.name in linked, f"{path.name}: {slot.name} is not connected"
    assert sorted(by_model) == sorted(model_ids()) and all(len(v) == 1 for v in by_model.values()), by_model


def test_templates_menu_lists_the_workflows_with_thumbnails(comfy_server, browser):
    """ComfyUI lists example_workflows/ under the pack's folder name; the frontend titles each card with the file
    name; the .jpg next to it is the card's image. Clicking a card loads the workflow."""
    pack = comfy_server.pack_name
    names = sorted(p.stem for p in example_workflows())
    assert sorted(comfy_server.get("/workflow_templates")[pack]) == names
    for name in names:
        quoted = urllib.parse.quote(name)
        served = comfy_server.get(f"/api/workflow_templates/{pack}/{quoted}.json")
        assert served == load_json(WORKFLOWS / f"{name}.json")
        raw = comfy_server.get(f"/api/workflow_templates/{pack}/{quoted}.jpg")
        assert isinstance(raw, bytes) and raw[:2] == b"\xff\xd8", f"{name}.jpg not served"

    js = """
    const pack = %s, names = %s;
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const until = async (fn, ms = 20000) => { const t = Date.now(); while (Date.now() - t < ms) {
        const v = fn(); if (v) return v; await sleep(100); } throw new Error('timed out: ' + fn); };
    const byText = (root, text) => [...root.querySelectorAll('*')].find(
        (e) => e.children.length === 0 && e.textContent.trim() === text);
    const cards = (dialog) => [...dialog.querySelectorAll('img')];
    const scroller = (dialog) => {
      for (let e = cards(dialog)[0]; e && e !== dialog; e = e.parentElement) {
        if (e.scrollHeight > e.clientHeight + 4) return e;
      }
      return dialog;
    };
    // the grid renders the first 24 cards and more as it is scrolled: scroll until the card (or every card) shows
    const reveal = async (dialog, wanted) => until(() => {
      if (wanted.every((n) => byText(dialog, n))) return true;
      const s = scroller(dialog);
      s.scrollTop = Math.min(s.scrollTop + 150, s.scrollHeight);
      return false;
    });
    const titles = new Set();
    const open = async (wanted = names) => {
      await app.extensionManager.command.execute('Comfy.BrowseTemplates');
      const dialog = await until(() => document.querySelector('[role=dialog]'));
      (await until(() => byText(dialog, pack))).click();
      if (wanted === names) {
        await until(() => {
          names.filter((n) => byText(dialog, n)).forEach((n) => titles.add(n));
          if (names.every((n) => titles.has(n))) return true;
          const s = scroller(dialog);
          s.scrollTop = Math.min(s.scrollTop + 150, s.scrollHeight);
          return false;
        });
        scroller(dialog).scrollTop = 0;
      } else {
        await reveal(dialog, wanted);
      }
      return dialog;
    };
    const dialog = await open();
    const result = {titles: names.filter((n) => titles.has(n)), prompts: {}};
    // the cards fetch their thumbnails and show them as blob: URLs (the fallback is a 224x224 default image); the
    // grid renders the images of the cards in view only, so it is scrolled down until every card's has been seen
    const seen = new Map();
    await until(() => {
      for (const i of cards(dialog)) {
        if (i.complete && i.naturalWidth > 0) seen.set(i.alt, [i.src.split(':')[0], i.naturalWidth, i.naturalHeight]);
      }
      if (names.every((n) => seen.has(n))) return true;
      const s = scroller(dialog);
      s.scrollTop = Math.min(s.scrollTop + 150, s.scrollHeight);
      return false;
    }, 60000).catch((e) => { throw new Error(`${e.message}; seen ${JSON.stringify([...seen.keys()])}`); });
    result.images = names.map((n) => seen.get(n));
    for (const name of names) {
      const d = document.querySelector('[role=dialog]') ?? await open([name]);
      await reveal(d, [name]);
      byText(d, name).click();
      await until(() => !document.querySelector('[role=dialog]') && app.graph.nodes.length > 0
        && app.extensionManager.workflow.activeWorkflow?.filename === name);
      await sleep(300);
      result.prompts[name] = (await app.graphToPrompt()).output;
    }
    return result;
    """ % (json.dumps(pack), json.dumps(names))
    result = browser.eval(js, timeout=180)
    assert result["titles"] == names
    sizes = []
    for name in names:
        with Image.open(WORKFLOWS / f"{name}.jpg") as im:
            sizes.append(["blob", *im.size])
    assert sorted(result["images"]) == sorted(sizes), "the cards do not show the thumbnails"
    for name in names:
        model = workflow_model(load_json(WORKFLOWS / f"{name}.json"))
        assert result["prompts"][name] == load_json(twin_path(model)), name


@pytest.mark.parametrize("model", model_ids())
def test_frontend_converts_each_workflow_to_its_api_twin(browser, model):
    assert browser.ui_to_api(workflow_path(model)) == load_json(twin_path(model))


def _full_size(model: str) -> bool:
    return model in FULL_SIZE or UPDATE_DOCS


@pytest.mark.parametrize("model", [
    pytest.param(m, marks=pytest.mark.skipif(QUICK and _full_size(m), reason="AITK_E2E_QUICK=1: full-size example "
                                                                             "renders skipped"))
    for m in model_ids()])
def test_example_workflow_runs_in_the_frontend(comfy_server, browser, library, e2e_artifacts_dir, model):
    """Loaded and run as a user would (Run button): unmodified at ai-toolkit's model defaults (FULL_SIZE), the
    others with the sampler's width, height and steps set to SMALL in the loaded workflow; the saved PNG is exactly
    what the library renders for the same settings."""
    workflow = workflow_path(model)
    full = _full_size(model)
    ui = load_json(workflow)
    twin = load_json(twin_path(model)) if full else small_twin(model)
    if not full:
        [sample] = ui_nodes(ui, "AIToolkitSample")
        for name, index in UI_SIZE_STEPS.items():
            sample["widgets_values"][index] = SMALL[name]
    shot = e2e_artifacts_dir / f"workflow_{workflow.stem.replace(' ', '_')}.png"
    t0 = time.perf_counter()
    result = browser.run(ui, shot, timeout=FULL_RUN_TIMEOUT)
    server_seconds = time.perf_counter() - t0
    assert result["ok"] and result["queued_via"] == "run-button", result
    if ui_nodes(ui, "SaveVideo"):  # the saved video is loaded in the page's <video> player and shows a frame
        assert result["videos_shown"] is True, result
    entry = comfy_server.get(f"/history/{result['prompt_id']}")[result["prompt_id"]]
    assert entry["prompt"][2] == twin, "the frontend queued another prompt than the API twin"
    assert find(twin, "AIToolkitSample") not in cached_nodes(entry), "the sampler did not run (output cache)"
    saved = saved_image(comfy_server, entry)
    t0 = time.perf_counter()
    expected = library.image(twin)
    library_seconds = time.perf_counter() - t0
    print(f"\n{workflow.stem}: {saved.shape[1]}x{saved.shape[0]}{'' if full else ' (SMALL)'}, browser run "
          f"{server_seconds:.1f}s, library {library_seconds:.1f}s; screenshot {shot}")
    assert_same_pixels(saved, expected, f"{workflow.name} through the frontend")
    assert shot.is_file()
    if UPDATE_DOCS or (NEW_THUMBS and not workflow.with_suffix(".jpg").is_file()):
        write_docs(workflow, shot)

    # The API twin through POST /prompt: the same prompt, so ComfyUI accepts it and answers from its output cache
    # (a real render of the twin at a small size is in test_api_twin_renders_through_post_prompt).
    entry = comfy_server.run_prompt(twin, timeout=FULL_RUN_TIMEOUT)
    assert_success(entry)
    assert_same_pixels(saved_image(comfy_server, entry), expected, f"{workflow.name} API twin")


def write_docs(workflow: Path, shot: Path):
    """The thumbnail (the screenshot around the sampler and the saved image, 512 px wide) and, for SDXL, the README
    screenshot."""
    with Image.open(shot) as im:
        im = im.convert("RGB")
        im.crop((430, 135, 1260, 800)).resize((512, 410), Image.LANCZOS).save(
            workflow.with_suffix(".jpg"), "JPEG", quality=85, optimize=True)
        if workflow_model(load_json(workflow)) == "sdxl":
            DOCS.mkdir(exist_ok=True)
            im.save(DOCS / "screenshot.png", optimize=True)


@pytest.mark.parametrize("model", model_ids())
def test_api_twin_renders_through_post_prompt(comfy_server, library, model):
    """The committed API twin, at 64x64 and 4 steps (a new seed, so it really renders), gives the library's image."""
    prompt = small_twin(model)
    prompt[find(prompt, "AIToolkitSample")]["inputs"]["seed"] = fresh_seed()
    entry = comfy_server.run_prompt(prompt, timeout=300)
    assert_success(entry)
    assert find(prompt, "AIToolkitSample") not in cached_nodes(entry)
    saved = saved_image(comfy_server, entry)
    expected = library.image(prompt)
    assert saved.shape[1:] == (64, 64, 3) and len(saved) == REGISTRY[model].media.snap_frames(
        REGISTRY[model].media.default_frames)
    assert_same_pixels(saved, expected, f"{twin_path(model).name} at 64x64, 4 steps")
    if any(node["class_type"] == "SaveVideo" for node in prompt.values()):
        video, fps = saved_video(comfy_server, entry)
        assert video.shape == saved.shape and fps == REGISTRY[model].media.fps, (video.shape, fps)
        # h264 (yuv420p) is lossy: the video shows the frames, not their exact values. The tiny models' frames are
        # near pixel noise (LTX-2's tiny VAE: 4x4 patches of unrelated values), which h264 smooths away (29 levels
        # mean per pixel there), so compare 8x8 block means (2 levels there; another frame: 5.5)
        assert np.abs(_blocks(video) - _blocks(saved)).mean() < 4, "the video does not show the frames"
        # the audio track (LTX-2): AAC at the vocoder's rate, as long as the preview's samples (AAC pads its frames);
        # none for models without audio
        audio, track = library.audio(prompt), saved_audio(comfy_server, entry)
        assert (track is not None) == (audio is not None) == REGISTRY[model].media.has_audio, \
            "the video's audio track does not follow the model"
        if audio is not None:
            rate, samples = track
            want = np.asarray(audio.waveform)
            assert rate == audio.sample_rate and samples.shape[0] == want.shape[0], (rate, samples.shape)
            assert abs(samples.shape[1] - want.shape[1]) <= 2048, (samples.shape, want.shape)
            assert np.abs(samples).max() > 0, "the audio track is silent"


def _blocks(frames: np.ndarray, size: int = 8) -> np.ndarray:
    t, h, w, c = frames.shape
    return frames.astype(float).reshape(t, h // size, size, w // size, size, c).mean(axis=(2, 4))


# --- errors ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("class_type, name, value, error", [
    ("ApplyAIToolkitLoRA", "lora_name", "not_in_the_loras_folder.safetensors", "value_not_in_list"),
    ("AIToolkitSample", "width", -5, "value_smaller_than_min"),
    ("LoadAIToolkitPipeline", "model", "no_such_model", "value_not_in_list"),
])
def test_invalid_inputs_are_refused_by_validation(comfy_server, class_type, name, value, error):
    prompt = small_prompt("sdxl", fresh_seed())
    node = find(prompt, class_type)
    prompt[node]["inputs"][name] = value
    with pytest.raises(PromptError) as err:
        comfy_server.queue_prompt(prompt)
    assert err.value.status == 400
    assert err.value.error_type == "prompt_outputs_failed_validation"
    errors = err.value.node_errors[node]["errors"]
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [(error, name)], errors
    assert err.value.node_errors[node]["class_type"] == class_type


@pytest.mark.parametrize("lora_name, message", [
    (WRONG_FAMILY, ["1.5 LoRA", "sd_1.5", REGISTRY["sdxl"].label]),  # names its family and the pipeline's
    (TRUNCATED, ["is truncated"]),
], ids=["wrong_family", "truncated"])
def test_execution_error_is_reported_and_the_server_recovers(comfy_server, library, e2e_models, lora_name, message):
    good = small_prompt("sdxl", fresh_seed())
    before = comfy_server.run_prompt(good)
    assert_success(before)
    pixels = saved_image(comfy_server, before)
    assert_same_pixels(pixels, library.image(good), "before the error")

    bad = copy.deepcopy(good)
    bad[find(bad, "ApplyAIToolkitLoRA")]["inputs"]["lora_name"] = lora_name
    entry = comfy_server.run_prompt(bad)
    assert entry["status"]["status_str"] == "error"
    err = history_error(entry)
    assert err and err["type"] == "execution_error", entry["status"]
    assert (err["node_type"], err["node_id"]) == ("ApplyAIToolkitLoRA", find(bad, "ApplyAIToolkitLoRA"))
    for part in [lora_name, *message]:
        assert part in err["exception_message"], (part, err["exception_message"])
    assert err["exception_type"].endswith("LoraError"), err["exception_type"]

    touch(e2e_models["loras"] / good[find(good, "ApplyAIToolkitLoRA")]["inputs"]["lora_name"])
    after = comfy_server.run_prompt(good)
    assert_success(after)
    assert find(good, "AIToolkitSample") not in cached_nodes(after), "the sampler did not run again"
    assert_same_pixels(saved_image(comfy_server, after), pixels, "after the error (same prompt)")


def _expect_execution_error(server, prompt, node_type: str, parts) -> None:
    entry = server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "error", entry["status"]
    err = history_error(entry)
    assert err and err["type"] == "execution_error" and err["node_type"] == node_type, err
    for part in parts:
        assert part in err["exception_message"], (part, err["exception_message"])


def test_lora_resaved_truncated_between_runs_is_an_error_then_the_full_file_runs(comfy_server, library,
                                                                                e2e_models):
    """ai-toolkit writes checkpoints into the folder ComfyUI reads: a run that finds the file half-written says so
    (the server lives on), and the run after the save completes renders the same pixels as before."""
    good = small_prompt("sdxl", fresh_seed())
    lora = good[find(good, "ApplyAIToolkitLoRA")]["inputs"]
    live = e2e_models["loras"] / "resaved_mid_run.safetensors"
    live.write_bytes((e2e_models["loras"] / lora["lora_name"]).read_bytes())
    lora["lora_name"] = live.name
    first = comfy_server.run_prompt(good)
    assert_success(first)
    pixels = saved_image(comfy_server, first)
    assert_same_pixels(pixels, library.image(small_prompt("sdxl", good[find(good, "AIToolkitSample")]["inputs"]
                                                          ["seed"])), "a copy of the example LoRA")
    data = live.read_bytes()
    live.write_bytes(data[: len(data) // 2])
    _expect_execution_error(comfy_server, good, "ApplyAIToolkitLoRA", [live.name, "truncated"])
    live.write_bytes(data)
    touch(live)
    after = comfy_server.run_prompt(good)
    assert_success(after)
    assert_same_pixels(saved_image(comfy_server, after), pixels, "after the save completed")


@pytest.mark.parametrize("where, value, parts", [
    ("ApplyAIToolkitLoRA", {"strength": float("nan")}, ["LoRA strength", "nan"]),
    ("AIToolkitSample", {"prompt": "photo of [trigger] --m nan"}, ["--m"]),
    ("AIToolkitSample", {"prompt": "photo of [trigger] --cfg inf"}, ["guidance_scale"]),
], ids=["strength_nan", "flag_m_nan", "flag_cfg_inf"])
def test_non_finite_numbers_through_post_prompt_are_errors(comfy_server, library, where, value, parts):
    """NaN passes ComfyUI's min/max validation (every comparison with NaN is false), and prompt flags bypass the
    widgets entirely: the pack refuses them with a message instead of rendering a black image."""
    bad = small_prompt("sdxl", fresh_seed())
    bad[find(bad, where)]["inputs"].update(value)
    _expect_execution_error(comfy_server, bad, where, parts)
    good = small_prompt("sdxl", fresh_seed())
    entry = comfy_server.run_prompt(good)
    assert_success(entry)
    assert_same_pixels(saved_image(comfy_server, entry), library.image(good), "the next graph")


# --- interrupt, progress, previews ----------------------------------------------------------------------------------

def test_interrupt_mid_run_then_the_next_prompt_succeeds(comfy_server, library):
    steps = 500  # about a minute or more on a CPU if nothing stopped it
    client_id = f"aitk-interrupt-{uuid.uuid4().hex[:8]}"
    long = small_prompt("sd15", fresh_seed(), steps=steps)
    sample = find(long, "AIToolkitSample")
    with WsListener(comfy_server.url, client_id) as ws:
        long_id = comfy_server.queue_prompt(long, client_id=client_id)

        def running(_):
            return any(p["node"] == sample and p["value"] >= 2 for p in ws.json("progress", long_id))
        assert ws.wait_for(running, timeout=300), comfy_server.get("/queue")
        assert [item[1] for item in comfy_server.get("/queue")["queue_running"]] == [long_id]
        comfy_server.interrupt(long_id)
        normal = small_prompt("sd15", fresh_seed())
        normal_id = comfy_server.queue_prompt(normal, client_id=client_id)  # at once, while the long one stops
        entry = comfy_server.wait_history(long_id, timeout=120)
        assert ws.wait_for(finished(long_id), timeout=30)
        done = max(p["value"] for p in ws.json("progress", long_id) if p["node"] == sample)
    assert entry["status"]["status_str"] == "error"
    err = history_error(entry)
    assert err and err["type"] == "execution_interrupted", entry["status"]
    assert err["node_type"] == "AIToolkitSample"
    assert done < steps, "the sampler ran to the end"
    assert find(long, "SaveImage") not in entry["outputs"]

    normal_entry = comfy_server.wait_history(normal_id, timeout=300)
    assert_success(normal_entry)
    assert_same_pixels(saved_image(comfy_server, normal_entry), library.image(normal), "after the interrupt")


def test_progress_and_previews_reach_the_websocket(comfy_server, library):
    steps = 6
    client_id = f"aitk-progress-{uuid.uuid4().hex[:8]}"
    prompt = small_prompt("sdxl", fresh_seed(), steps=steps)
    sample = find(prompt, "AIToolkitSample")
    with WsListener(comfy_server.url, client_id) as ws:
        prompt_id = comfy_server.queue_prompt(prompt, client_id=client_id)
        assert ws.wait_for(finished(prompt_id), timeout=300), comfy_server.get("/queue")
        progress = [p for p in ws.json("progress", prompt_id) if p["node"] == sample]
        frames = ws.binary()
        assert ws.json("execution_success", prompt_id)
    assert progress, "no progress message for the sampler"
    assert {p["max"] for p in progress} == {steps}
    values = [p["value"] for p in progress]
    assert values == sorted(values) and values[-1] == steps and len(set(values)) >= steps - 1, values
    # --preview-method latent2rgb: binary preview frames (event 1 = PREVIEW_IMAGE, format 1 = JPEG)
    previews = [f for f in frames if struct.unpack(">II", f[:8]) == (1, 1)]
    assert previews and all(f[8:10] == b"\xff\xd8" for f in previews), [f[:12] for f in frames]
    entry = comfy_server.wait_history(prompt_id, timeout=60)
    assert_same_pixels(saved_image(comfy_server, entry), library.image(prompt), "with progress and previews")
