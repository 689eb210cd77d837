/**
 * AI Toolkit Inference: the pack's web extension (loaded by ComfyUI from WEB_DIRECTORY; no build step, no
 * dependencies). It owns what the nodes show in the browser:
 *
 *  - AIToolkitSample: a read-only text block with the effective settings for the model its `pipeline` comes from
 *    (traced back through ApplyAIToolkitLoRA / AIToolkitModelOptions nodes to LoadAIToolkitPipeline's `model`).
 *    The server computes them with the library itself (GET /aitk/effective runs engine.build_request: model
 *    defaults for 0 / -1, the prompt's --flags, ai-toolkit's size floor and the pipeline's own, the guidance's
 *    name, a control image the model needs, and the node's own message for a value it would refuse); this file
 *    only sends the widget values (debounced, one request in flight per node, the latest values win) and draws
 *    the answer. No model rule is repeated here.
 *  - ApplyAIToolkitLoRA: what the selected LoRA file says about itself (trained base, ai-toolkit version, trigger
 *    word, rank, modules, dtype), from its safetensors header, and a warning when its base is not the pipeline's.
 *  - New AIToolkitSample nodes start with the seed's "control after generate" at "fixed".
 *
 * The text is drawn on the node and never saved or sent with the prompt. Data comes from the pack's routes
 * GET /aitk/effective (POST for prompts too long for a URL), GET /aitk/registry and GET /aitk/lora_info
 * (nodes/routes.py).
 */
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const LOAD = "LoadAIToolkitPipeline";
const LORA = "ApplyAIToolkitLoRA";
const SAMPLE = "AIToolkitSample";
const OPTIONS = "AIToolkitModelOptions"; // passes the pipeline through, like ApplyAIToolkitLoRA
const INFO = "aitk_info"; // name of the read-only text widget
const LORA_STATE = Symbol("aitk lora info"); // {name, info} or {name, error}, kept on the node
const LORA_PENDING = Symbol("aitk lora request"); // the name being fetched

let registry = null; // GET /aitk/registry: {model_id: {label, defaults, …, base_versions}} (for the LoRA check)

const widget = (node, name) => node.widgets?.find((w) => w.name === name);
const chain = (original, extra) => function (...args) {
  const result = original?.apply(this, args);
  extra.apply(this, args);
  return result;
};
const line = (text, tone = "text") => ({ text, tone });

// --- the read-only text widget: lines drawn on the canvas, wrapped to the node's width ----------------------

const FONT = "12px Arial";
const LINE_H = 16;
const PAD = 5;
const MARGIN = 15; // litegraph's widget margin
const COLORS = { text: () => LiteGraph.WIDGET_TEXT_COLOR, dim: () => LiteGraph.WIDGET_SECONDARY_TEXT_COLOR,
  warn: () => "#e8a33d" };
const measure = document.createElement("canvas").getContext("2d");

function wrap(ctx, lines, width) {
  ctx.font = FONT;
  const max = Math.max(40, width - 2 * (MARGIN + PAD));
  const rows = [];
  for (const { text, tone } of lines) {
    let row = "";
    for (const word of text.split(" ")) {
      const next = row ? `${row} ${word}` : word;
      if (row && ctx.measureText(next).width > max) {
        rows.push({ text: row, tone });
        row = word;
      } else row = next;
    }
    rows.push({ text: row, tone });
  }
  return rows;
}

function addInfoWidget(node) {
  const info = {
    type: "aitk_info", name: INFO, value: "", lines: [],
    serialize: false, options: { serialize: false }, // not in widgets_values, not sent with the prompt
    // The canvas asks with the node's minimum width (or none): wrap to the width the node really has. Vue nodes
    // mode asks with the width of the widget's own element.
    computeSize(width) {
      const w = (LiteGraph.vueNodesMode && width) || node.size[0];
      return [w, wrap(measure, info.lines, w).length * LINE_H + 2 * PAD];
    },
    draw(ctx, _node, width, y) {
      const rows = wrap(ctx, info.lines, width);
      ctx.save();
      ctx.fillStyle = LiteGraph.WIDGET_BGCOLOR;
      ctx.globalAlpha = 0.55;
      ctx.beginPath();
      ctx.roundRect(MARGIN, y, width - 2 * MARGIN, rows.length * LINE_H + 2 * PAD, 6);
      ctx.fill();
      ctx.globalAlpha = 1;
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      rows.forEach((row, i) => {
        ctx.fillStyle = COLORS[row.tone]();
        ctx.fillText(row.text, MARGIN + PAD, y + PAD + (i + 0.5) * LINE_H);
      });
      ctx.restore();
    },
  };
  node.addCustomWidget(info);
  return info;
}

function show(node, lines) {
  const info = widget(node, INFO);
  if (!info) return;
  const text = lines.map((l) => l.text).join("\n");
  if (text === info.value) return;
  info.lines = lines;
  info.value = text;
  // grow to fit the text; shrink back only while the node has the height this code gave it (not a user's size)
  const [width, height] = node.size;
  const fit = node.computeSize()[1];
  if (fit > height || (fit < height && info.fitted === height)) {
    node.setSize([width, fit]);
    info.fitted = fit;
  }
  info.triggerDraw?.(); // set by the frontend's Vue nodes mode, which draws the widget on its own canvas
  node.setDirtyCanvas?.(true, true);
}

// --- which model a node's `pipeline` comes from ----------------------------------------------------------

function upstreamModel(node) {
  for (let hops = 0; node?.graph && hops < 100; hops++) {
    const slot = node.type === "Reroute" ? 0 : node.findInputSlot("pipeline");
    node = slot >= 0 ? node.getInputNode(slot) : null;
    if (node?.comfyClass === LOAD) return widget(node, "model")?.value ?? null;
    if (node && node.comfyClass !== LORA && node.comfyClass !== OPTIONS && node.type !== "Reroute") return null;
  }
  return null;
}

// --- AIToolkitSample: effective settings, computed by the server with the library (GET /aitk/effective) ----

const EFFECTIVE = Symbol("aitk effective"); // per node: {key, lines} (latest answer), timer, busy
const DEBOUNCE_MS = 150;
const MAX_URL = 4000; // longer queries go as a POST body (aiohttp refuses request lines over 8190 bytes)
const TONES = { normal: "text", dim: "dim", warn: "warn" };
const SAMPLE_INPUTS = ["prompt", "width", "height", "steps", "guidance_scale", "seed"];

/** The query for the node's current widget values, or null when no model is connected. */
function effectiveQuery(node) {
  const model = upstreamModel(node);
  if (model == null) return null;
  const params = { model };
  for (const name of SAMPLE_INPUTS) params[name] = String(widget(node, name)?.value ?? "");
  return params;
}

const stateOf = (node) => (node[EFFECTIVE] ??= { key: null, lines: null, timer: null, busy: false });

/** Ask the server for the node's effective settings: one request in flight per node, debounced; when an answer
 * comes back for values that changed meanwhile, it is shown and the latest values are asked for next. */
function requestEffective(node) {
  const state = stateOf(node);
  clearTimeout(state.timer);
  state.timer = setTimeout(() => fetchEffective(node), DEBOUNCE_MS);
}

async function fetchEffective(node) {
  const state = stateOf(node);
  state.timer = null;
  const params = effectiveQuery(node);
  if (state.busy || !params) return; // the answer in flight re-checks the values when it comes back
  const key = new URLSearchParams(params).toString();
  if (key === state.key) return;
  state.busy = true;
  let lines;
  try {
    const url = `/aitk/effective?${key}`;
    const res = url.length <= MAX_URL ? await api.fetchApi(url)
      : await api.fetchApi("/aitk/effective", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(params) });
    const body = await res.json().catch(() => ({}));
    lines = res.ok && Array.isArray(body.lines)
      ? body.lines.map((l) => line(String(l.text), TONES[l.kind] ?? "text"))
      : [line(body.error ?? `effective settings unavailable (HTTP ${res.status})`, "warn")];
  } catch (e) {
    lines = [line(`effective settings unavailable (${e?.message ?? e})`, "warn")];
  }
  state.busy = false;
  Object.assign(state, { key, lines });
  show(node, sampleLines(node)); // asks again when the values changed while this request was out
}

/** What the node shows now: the server's answer for the current values, else the last answer (or a placeholder)
 * while the answer for the current values is on its way. */
function sampleLines(node) {
  const params = effectiveQuery(node);
  if (!params) return [line("Connect Load AI Toolkit Pipeline to see the effective settings.", "dim")];
  const state = stateOf(node);
  if (new URLSearchParams(params).toString() !== state.key) requestEffective(node);
  return state.lines ?? [line("computing the effective settings…", "dim")];
}

// --- ApplyAIToolkitLoRA: what the file says about itself ----------------------------------------------------

function loraLines(node) {
  const name = widget(node, "lora_name")?.value;
  if (!name) return [line("No LoRA files in models/loras.", "dim")];
  const state = node[LORA_STATE];
  if (!state || state.name !== name) return [line(`reading ${name}…`, "dim")];
  if (state.error) return [line(`Cannot read this LoRA: ${state.error}`, "warn")];
  const i = state.info;
  const software = i.software ? `${i.software}${i.software_version ? ` ${i.software_version}` : ""}` : "unknown tool";
  const lines = [
    line(`trained on ${i.base_model_version ?? "an unknown base"} · ${software}` +
      (i.step != null ? ` · step ${i.step}` : "")),
    i.trigger_word ? line(`trigger word: ${i.trigger_word}`) : line("no trigger word in the file's metadata", "dim"),
    line(`${i.ranks.length ? `rank ${i.ranks.join("/")}` : "no LoRA down weights"} · ${i.module_count} modules · ` +
      `${i.tensor_count} keys · ${i.dtypes.join("/")}`),
  ];
  const model = upstreamModel(node);
  const spec = registry?.[model];
  if (spec?.base_versions?.length && i.base_model_version && !spec.base_versions.includes(i.base_model_version)) {
    lines.push(line(`the file says ${i.base_model_version}, but the pipeline is ${model}`, "warn"));
  }
  return lines;
}

async function fetchLoraInfo(node) {
  const name = widget(node, "lora_name")?.value;
  if (!name || node[LORA_PENDING] === name) return show(node, loraLines(node));
  node[LORA_PENDING] = name;
  show(node, loraLines(node));
  let state;
  try {
    const res = await api.fetchApi(`/aitk/lora_info?name=${encodeURIComponent(name)}`);
    const body = await res.json().catch(() => ({}));
    state = res.ok ? { name, info: body } : { name, error: body.error ?? `HTTP ${res.status}` };
  } catch (e) {
    state = { name, error: String(e?.message ?? e) };
  }
  if (node[LORA_PENDING] === name) node[LORA_PENDING] = null;
  if (widget(node, "lora_name")?.value !== name) return; // the user picked another file meanwhile
  node[LORA_STATE] = state;
  show(node, loraLines(node));
}

// --- wiring -------------------------------------------------------------------------------------------------

function refreshGraph(graph) {
  for (const node of graph?.nodes ?? graph?._nodes ?? []) {
    if (node.comfyClass === SAMPLE) show(node, sampleLines(node));
    else if (node.comfyClass === LORA) show(node, loraLines(node));
  }
}

function onUserChange(node, name, fn) {
  const w = widget(node, name);
  if (w) w.callback = chain(w.callback, fn);
}

app.registerExtension({
  name: "aitk.inference",

  async setup() {
    try {
      const res = await api.fetchApi("/aitk/registry");
      if (!res.ok) throw new Error(`GET /aitk/registry: HTTP ${res.status}`);
      registry = await res.json();
    } catch {
      registry = null; // the LoRA nodes then skip the base check; everything else works without it
    }
    refreshGraph(app.graph);
  },

  nodeCreated(node) {
    if (node.comfyClass === SAMPLE) {
      addInfoWidget(node);
      // Reproducing a training preview needs its seed: new nodes start at "fixed" instead of the frontend's
      // "randomize". nodeCreated runs in the node's constructor, before configure() applies a saved workflow's
      // (or a pasted node's) widgets_values, so a value loaded from a workflow is kept.
      const control = widget(node, "seed")?.linkedWidgets?.find((w) => w.name === "control_after_generate")
        ?? widget(node, "control_after_generate");
      if (control) control.value = "fixed";
      // Model defaults: the widgets keep 0 / -1 ("model default", as the backend defines it) and this node shows
      // the values they stand for. Writing the numbers into the widgets instead would overwrite the user's
      // explicit choices and hard-code one model's defaults into saved workflows and API prompts, so switching
      // the model (or sharing the workflow) would keep stale numbers. Explicit values are kept and shown.
      for (const name of SAMPLE_INPUTS) {
        onUserChange(node, name, () => show(node, sampleLines(node)));
      }
      node.onConnectionsChange = chain(node.onConnectionsChange, () => refreshGraph(node.graph));
      show(node, sampleLines(node));
    } else if (node.comfyClass === LORA) {
      node.size[0] = Math.max(node.size[0], 320); // room for the info lines (a saved size still wins)
      addInfoWidget(node);
      onUserChange(node, "lora_name", () => fetchLoraInfo(node));
      node.onConnectionsChange = chain(node.onConnectionsChange, () => refreshGraph(node.graph));
      // after the constructor: a workflow being loaded has set the saved lora_name by then
      queueMicrotask(() => fetchLoraInfo(node));
    } else if (node.comfyClass === OPTIONS) {
      node.onConnectionsChange = chain(node.onConnectionsChange, () => refreshGraph(node.graph));
    } else if (node.comfyClass === LOAD) {
      onUserChange(node, "model", () => refreshGraph(node.graph));
    }
  },

  loadedGraphNode(node) {
    if (node.comfyClass === SAMPLE) show(node, sampleLines(node));
    else if (node.comfyClass === LORA) fetchLoraInfo(node);
  },
});
