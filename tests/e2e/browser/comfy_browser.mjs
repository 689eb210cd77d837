#!/usr/bin/env node
/**
 * Drive the real ComfyUI frontend in headless Debian Chromium (playwright-core, no browser download).
 *
 *   node comfy_browser.mjs ui2api --server URL --workflow UI.json
 *       -> the API-format prompt the frontend makes (app.loadGraphData(ui); (await app.graphToPrompt()).output)
 *   node comfy_browser.mjs run --server URL --workflow UI.json --screenshot OUT.png [--timeout S]
 *       -> loads the workflow, clicks Run (falls back to app.queuePrompt(0, 1)), waits for the prompt to finish and
 *          the output node to show its image, screenshots the page; prints {prompt_id, outputs, ok, ...}
 *   node comfy_browser.mjs eval --server URL --js "..." [--workflow UI.json]
 *       -> evaluates JS in the ready page (an expression, or a function body with `return`; awaited; `app` and
 *          `LiteGraph` in scope) and prints its JSON result
 *
 * Prints JSON on stdout; browser console errors, page errors and failed requests go to stderr. Exit code 1 on error.
 */
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
// 404s a fresh ComfyUI user always gets; not worth reporting.
const BENIGN_404 = /\/(api\/)?userdata(\/|\?)|\/user\.css$/;

function parseArgs(argv) {
  const [cmd, ...rest] = argv;
  const opts = { cmd };
  for (let i = 0; i < rest.length; i += 2) {
    if (!rest[i].startsWith('--') || rest[i + 1] === undefined) throw new Error(`bad argument: ${rest[i]}`);
    opts[rest[i].slice(2)] = rest[i + 1];
  }
  if (!['ui2api', 'run', 'eval'].includes(cmd)) throw new Error('usage: comfy_browser.mjs ui2api|run|eval --server URL ...');
  if (!opts.server) throw new Error('--server URL is required');
  opts.server = opts.server.replace(/\/$/, '');
  opts.timeout = Number(opts.timeout ?? 120);
  return opts;
}

const log = (...a) => process.stderr.write(a.join(' ') + '\n');

/** Launch Chromium with a fresh profile, open the frontend and wait until it has loaded its first workflow. */
async function openApp(server, timeoutMs) {
  // A fresh ComfyUI user gets the template browser on first load; mark the tutorial done (this test server only).
  await fetch(`${server}/settings/Comfy.TutorialCompleted`, { method: 'POST', body: 'true' });
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'comfy-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 800 },
  });
  const close = async () => {
    await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  };
  try {
    const page = context.pages()[0] ?? await context.newPage();
    page.setDefaultTimeout(timeoutMs);
    await page.addInitScript(() => localStorage.setItem('vueNodesBannerDismissed', 'true'));
    page.on('console', (m) => {
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) log('[console.error]', m.text());
    });
    page.on('pageerror', (e) => log('[pageerror]', e.stack || e.message));
    page.on('response', (r) => {
      if (r.status() >= 400 && !(r.status() === 404 && BENIGN_404.test(r.url()))) log('[http]', r.status(), r.url());
    });
    await page.goto(server + '/');
    // window.app is set after app.setup(); the first workflow (the default graph) is loaded right after that.
    await page.waitForFunction(() => window.app?.graph && window.LiteGraph
      && window.app.extensionManager?.workflow?.activeWorkflow);
    await page.waitForTimeout(300);
    return { page, close };
  } catch (e) {
    await close();
    throw e;
  }
}

async function loadWorkflow(page, file) {
  const ui = JSON.parse(fs.readFileSync(file, 'utf8'));
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, ui);
}

async function ui2api(page) {
  return page.evaluate(async () => (await window.app.graphToPrompt()).output);
}

async function evalJs(page, js) {
  return page.evaluate(async (src) => {
    const AsyncFunction = Object.getPrototypeOf(async () => {}).constructor;
    let fn;
    try {
      fn = new AsyncFunction('app', 'LiteGraph', `return (${src}\n);`);
    } catch {
      fn = new AsyncFunction('app', 'LiteGraph', src);
    }
    return (await fn(window.app, window.LiteGraph)) ?? null;
  }, js);
}

async function queueAndWait(page, server, screenshot, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  const promptResponse = page.waitForResponse(
    (r) => r.request().method() === 'POST' && /\/prompt$/.test(new URL(r.url()).pathname), { timeout: timeoutMs });
  let queuedVia = 'run-button';
  try {
    await page.getByRole('button', { name: 'Run', exact: true }).first().click({ timeout: 5000 });
  } catch {
    queuedVia = 'app.queuePrompt';
    await page.evaluate(() => window.app.queuePrompt(0, 1));
  }
  const resp = await promptResponse;
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok() || !body.prompt_id) {
    if (screenshot) await page.screenshot({ path: screenshot });
    return { prompt_id: null, outputs: {}, ok: false, status: 'refused', queued_via: queuedVia, errors: [body] };
  }
  const promptId = body.prompt_id;
  let entry;
  while (Date.now() < deadline) {
    const hist = await (await fetch(`${server}/history/${promptId}`)).json();
    entry = hist[promptId];
    if (['success', 'error'].includes(entry?.status?.status_str)) break;
    entry = undefined;
    await new Promise((r) => setTimeout(r, 250));
  }
  const outputs = entry?.outputs ?? {};
  const status = entry?.status?.status_str ?? 'timeout';
  // Wait until every node that produced images shows them (node.imgs holds the loaded <img> elements).
  // (a Save Video output is listed under `images` too, with `animated`: the frontend shows it as a <video>)
  const isVideo = (o) => Array.isArray(o.animated) && o.animated.some(Boolean);
  const imageNodes = Object.entries(outputs).filter(([, o]) => o.images?.length && !isVideo(o)).map(([id]) => id);
  const videoCount = Object.values(outputs).filter((o) => o.images?.length && isVideo(o)).length;
  let shown = false;
  let videosShown = null;
  if (status === 'success' && videoCount) {
    // every saved video is loaded in a <video> element of the page (readyState >= HAVE_CURRENT_DATA: a frame shows)
    videosShown = await page.waitForFunction((n) => [...document.querySelectorAll('video')]
      .filter((v) => v.readyState >= 2 && v.videoWidth > 0).length >= n, videoCount,
    { timeout: Math.max(1000, Math.min(60000, deadline - Date.now())) }).then(() => true, () => false);
  }
  if (status === 'success' && imageNodes.length) {
    shown = await page.waitForFunction((ids) => ids.every((id) => {
      const node = window.app.graph.getNodeById(Number(id)) ?? window.app.graph.getNodeById(id);
      return node?.imgs?.length > 0 && node.imgs.every((img) => img.complete && img.naturalWidth > 0);
    }), imageNodes, { timeout: Math.max(1000, deadline - Date.now()) }).then(() => true, () => false);
    await page.evaluate(() => window.app.graph.setDirtyCanvas(true, true));
    await page.waitForTimeout(300);
  }
  if (screenshot) await page.screenshot({ path: screenshot });
  const messages = (entry?.status?.messages ?? []).filter(([t]) => t === 'execution_error' || t === 'execution_interrupted');
  return { prompt_id: promptId, outputs, ok: status === 'success' && shown && videosShown !== false, status,
    images_shown: shown, videos_shown: videosShown,
    queued_via: queuedVia, errors: messages.map(([, d]) => d) };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const timeoutMs = opts.timeout * 1000;
  const { page, close } = await openApp(opts.server, timeoutMs);
  try {
    if (opts.workflow) await loadWorkflow(page, opts.workflow);
    let result;
    if (opts.cmd === 'ui2api') {
      if (!opts.workflow) throw new Error('ui2api needs --workflow UI.json');
      result = await ui2api(page);
    } else if (opts.cmd === 'run') {
      if (!opts.workflow) throw new Error('run needs --workflow UI.json');
      result = await queueAndWait(page, opts.server, opts.screenshot, timeoutMs);
    } else {
      if (!opts.js) throw new Error('eval needs --js CODE');
      result = await evalJs(page, opts.js);
    }
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    await close();
  }
}

main().catch((e) => {
  log(e.stack || String(e));
  process.exit(1);
});
