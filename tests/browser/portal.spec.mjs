#!/usr/bin/env node
// The portal end to end in headless Chromium: log in, upload a NIfTI, follow the job's progress
// live until it completes, check the preview image, download the results zip, and wait for the 3D
// view (WebGL, software-rendered by SwiftShader) to draw every mesh. Screenshots go into
// $KNEENODE_ARTIFACTS. Any failure, and any error the pages log to their console, exits 1 with a
// message saying which step failed.
//
// Run by tests/it/browser.rs (which starts a node and creates the user); by hand:
//
//   KNEENODE_URL=http://127.0.0.1:PORT KNEENODE_USER=admin KNEENODE_PASSWORD=... \
//   KNEENODE_PHANTOM=/path/to/image.nii.gz node tests/browser/portal.spec.mjs
//
// Environment:
//   KNEENODE_URL          the portal's base URL (required)
//   KNEENODE_USER         user name (required)
//   KNEENODE_PASSWORD     password (required)
//   KNEENODE_PHANTOM      the file to upload, or a `kneenode phantom` folder (its image.nii.gz)
//   KNEENODE_ARTIFACTS    where screenshots and the zip go (default: target/browser-artifacts)
//   KNEENODE_JOB_TIMEOUT_S  how long the job may take (default 900)
//   KNEENODE_VIEWER_TIMEOUT_S  how long the 3D view may take to draw (default 180)
//   KNEENODE_MODEL        segmentation model chosen in the upload form (default: demo, if listed)
//   CHROMIUM_PATH         the browser (default: Debian's /usr/lib/chromium/chromium, else `chromium`)
//   KNEENODE_HEADED=1     show the browser (needs a display)
//   KNEENODE_ALLOW_CONSOLE  a regular expression of console errors to tolerate, for triage only
//                         (default: none; the test fails on every console error)
//
// `node portal.spec.mjs --selftest` only checks that Chromium starts headless with WebGL.
//
// Chromium is Debian's (scripts/browser-deps.sh installs it and playwright-core); Playwright's own
// browser builds are never downloaded.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const started = Date.now();

function log(msg) {
  const s = ((Date.now() - started) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[browser ${s}s] ${msg}\n`);
}

class StepError extends Error {}
let currentStep = 'start';
let artifacts = null;
function fail(msg) {
  throw new StepError(msg);
}

function env(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === '') {
    if (fallback === undefined) fail(`${name} is not set (see the header of ${path.basename(fileURLToPath(import.meta.url))})`);
    return fallback;
  }
  return v;
}

function seconds(name, fallback) {
  const v = Number(env(name, String(fallback)));
  if (!Number.isFinite(v) || v <= 0) fail(`${name} must be a positive number of seconds`);
  return v * 1000;
}

const DEPS_HINT = 'run scripts/browser-deps.sh';

async function loadPlaywright() {
  try {
    return await import('playwright-core');
  } catch (e) {
    fail(`playwright-core is not installed in tests/browser/node_modules (${e.code ?? e.message}): ${DEPS_HINT}`);
  }
}

function chromiumPath() {
  const given = process.env.CHROMIUM_PATH;
  if (given) {
    if (!fs.existsSync(given)) fail(`CHROMIUM_PATH=${given} does not exist`);
    return given;
  }
  // Debian's /usr/bin/chromium is a shell wrapper; the binary itself takes flags directly.
  for (const p of ['/usr/lib/chromium/chromium', '/usr/bin/chromium', '/usr/bin/chromium-browser']) {
    if (fs.existsSync(p)) return p;
  }
  try {
    return execFileSync('sh', ['-c', 'command -v chromium || command -v chromium-browser'], { encoding: 'utf8' }).trim();
  } catch {
    fail(`chromium is not installed: ${DEPS_HINT}`);
  }
}

async function launch(chromium) {
  const args = [
    '--disable-dev-shm-usage',
    // WebGL without a GPU: ANGLE on SwiftShader (software Vulkan).
    '--use-angle=swiftshader',
    '--enable-unsafe-swiftshader',
    '--ignore-gpu-blocklist',
    '--no-first-run',
    '--no-default-browser-check',
  ];
  if (typeof process.getuid === 'function' && process.getuid() === 0) args.push('--no-sandbox');
  const executablePath = chromiumPath();
  try {
    return await chromium.launch({
      executablePath,
      headless: process.env.KNEENODE_HEADED !== '1',
      args,
      timeout: 60_000,
    });
  } catch (e) {
    fail(`chromium (${executablePath}) did not start: ${e.message.split('\n')[0]}; ${DEPS_HINT}`);
  }
}

/// Whether a WebGL context can be made, and by which renderer.
async function webglInfo(page) {
  return page.evaluate(() => {
    const c = document.createElement('canvas');
    const gl = c.getContext('webgl2') || c.getContext('webgl');
    if (!gl) return null;
    const dbg = gl.getExtension('WEBGL_debug_renderer_info');
    return {
      version: gl.getParameter(gl.VERSION),
      renderer: dbg ? gl.getParameter(dbg.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER),
    };
  });
}

/// How many distinct colours a PNG has (decoded in a blank page, so no portal CSP applies).
async function distinctColours(context, png) {
  const page = await context.newPage();
  try {
    return await page.evaluate(async (b64) => {
      const img = new Image();
      img.src = `data:image/png;base64,${b64}`;
      await img.decode();
      const c = document.createElement('canvas');
      c.width = img.naturalWidth;
      c.height = img.naturalHeight;
      const g = c.getContext('2d');
      g.drawImage(img, 0, 0);
      const d = g.getImageData(0, 0, c.width, c.height).data;
      const seen = new Set();
      for (let i = 0; i < d.length && seen.size < 1000; i += 4) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
      return seen.size;
    }, png.toString('base64'));
  } finally {
    await page.close();
  }
}

/// The page's visible text, shortened, for failure messages.
async function pageText(page) {
  const text = await page.locator('body').innerText({ timeout: 5000 }).catch(() => '(no page text)');
  const flat = text.replace(/\s+/g, ' ').trim();
  return JSON.stringify(flat.length > 600 ? `${flat.slice(0, 600)}…` : flat);
}

async function selftest() {
  currentStep = 'selftest';
  const { chromium } = await loadPlaywright();
  const browser = await launch(chromium);
  try {
    const page = await browser.newPage();
    await page.goto('data:text/html,<title>selftest</title><p>kneenode</p>');
    const gl = await webglInfo(page);
    if (!gl) fail('Chromium started, but WebGL is not available (SwiftShader missing?)');
    log(`Chromium ${browser.version()} headless; WebGL: ${gl.version}, ${gl.renderer}`);
  } finally {
    await browser.close();
  }
}

function phantomFile() {
  const given = env('KNEENODE_PHANTOM');
  if (!fs.existsSync(given)) fail(`KNEENODE_PHANTOM=${given} does not exist`);
  if (fs.statSync(given).isDirectory()) {
    const f = path.join(given, 'image.nii.gz');
    if (!fs.existsSync(f)) fail(`${given} has no image.nii.gz (expected a \`kneenode phantom\` folder)`);
    return f;
  }
  return given;
}

async function main() {
  if (process.argv.includes('--selftest')) return selftest();

  const base = env('KNEENODE_URL').replace(/\/+$/, '');
  const user = env('KNEENODE_USER');
  const password = env('KNEENODE_PASSWORD');
  const upload = phantomFile();
  artifacts = path.resolve(repo, env('KNEENODE_ARTIFACTS', path.join('target', 'browser-artifacts')));
  const jobTimeout = seconds('KNEENODE_JOB_TIMEOUT_S', 900);
  const viewerTimeout = seconds('KNEENODE_VIEWER_TIMEOUT_S', 180);
  const wantedModel = env('KNEENODE_MODEL', 'demo');
  fs.mkdirSync(artifacts, { recursive: true });
  for (const f of fs.readdirSync(artifacts)) {
    if (/^(\d\d|failed)-.*\.png$|^console\.txt$/.test(f)) fs.rmSync(path.join(artifacts, f));
  }

  const { chromium } = await loadPlaywright();
  const browser = await launch(chromium);
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(30_000);
  context.setDefaultNavigationTimeout(60_000);

  // Every page's console errors and uncaught exceptions; any one fails the test at the end.
  const consoleErrors = [];
  const consoleLog = [];
  const watch = (page) => {
    page.on('console', (m) => {
      const where = m.location()?.url ? ` (${m.location().url}:${m.location().lineNumber})` : '';
      consoleLog.push(`[${currentStep}] ${m.type()}: ${m.text()}${where}`);
      if (m.type() === 'error') consoleErrors.push(`[${currentStep}] console.error: ${m.text()}${where}`);
    });
    page.on('pageerror', (e) => {
      consoleLog.push(`[${currentStep}] uncaught: ${e.message}`);
      consoleErrors.push(`[${currentStep}] uncaught exception: ${e.message}`);
    });
    page.on('response', (r) => {
      if (r.status() >= 500) consoleErrors.push(`[${currentStep}] HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
    });
  };
  context.on('page', watch);
  const page = await context.newPage();
  const shot = async (name, target = page) => {
    const file = path.join(artifacts, `${name}.png`);
    await target.screenshot({ path: file, ...(target === page ? { fullPage: true } : {}) });
    const rel = path.relative(repo, file);
    log(`screenshot ${rel.startsWith('..') ? file : rel}`);
  };

  try {
    // ------------------------------------------------------------------ log in
    currentStep = 'login';
    const gl = await webglInfo(page);
    if (!gl) fail('WebGL is not available in this Chromium (SwiftShader missing?)');
    log(`Chromium ${browser.version()}; WebGL: ${gl.renderer}; portal ${base}`);
    const loginPage = await page.goto(`${base}/login`);
    if (!loginPage || loginPage.status() !== 200) fail(`GET /login answered ${loginPage?.status()}`);
    const form = page.locator('form#login-form');
    if ((await form.count()) !== 1) fail('GET /login has no form#login-form');
    const csrf = form.locator('input[type=hidden][name=csrf]');
    if ((await csrf.count()) !== 1 || !(await csrf.inputValue())) fail('form#login-form has no hidden, non-empty input[name=csrf]');
    await form.locator('input[name=username]').fill(user);
    await form.locator('input[name=password]').fill(password);
    await Promise.all([
      page.waitForURL((u) => u.pathname === '/', { waitUntil: 'load', timeout: 20_000 }),
      form.locator('[type=submit]').first().click(),
    ]).catch(async (e) => fail(`logging in did not lead to the dashboard (/): now at ${page.url()}, which says: ${await pageText(page)} (${e.message.split('\n')[0]})`));
    const cookies = await context.cookies(base);
    if (cookies.length === 0) fail('logging in set no cookie');
    const session = cookies.find((c) => /sess/i.test(c.name)) ?? cookies[0];
    if (!session.httpOnly) fail(`the session cookie ${session.name} is not HttpOnly`);
    log(`logged in as ${user}; cookie ${session.name} (HttpOnly, SameSite=${session.sameSite})`);
    await shot('01-dashboard');

    // ------------------------------------------------------------------ upload
    currentStep = 'upload';
    const uploadPage = await page.goto(`${base}/upload`);
    if (!uploadPage || uploadPage.status() !== 200) fail(`GET /upload answered ${uploadPage?.status()}`);
    const up = page.locator('form#upload-form');
    if ((await up.count()) !== 1) fail('GET /upload has no form#upload-form');
    const enctype = (await up.getAttribute('enctype')) ?? '';
    if (enctype.toLowerCase() !== 'multipart/form-data') fail(`form#upload-form has enctype "${enctype}", not multipart/form-data`);
    const fileInput = up.locator('input[type=file][name=file]');
    if ((await fileInput.count()) !== 1) fail('form#upload-form has no input[type=file][name=file]');
    await fileInput.setInputFiles(upload);
    const model = up.locator('select[name=segmentation_model]');
    if ((await model.count()) !== 1) fail('form#upload-form has no select[name=segmentation_model]');
    const models = await model.locator('option').evaluateAll((os) => os.map((o) => o.value));
    if (models.includes(wantedModel)) await model.selectOption(wantedModel);
    else log(`model "${wantedModel}" is not offered (${models.join(', ')}); keeping the default`);
    const nsm = up.locator('input[type=checkbox][name=perform_nsm]');
    if ((await nsm.count()) !== 1) fail('form#upload-form has no checkbox input[name=perform_nsm]');
    await nsm.uncheck(); // NSM is slow on a CPU; the test keeps the job small
    if ((await up.locator('input[name=cartilage_smoothing]').count()) !== 1) fail('form#upload-form has no input[name=cartilage_smoothing]');
    await shot('02-upload');
    await Promise.all([
      page.waitForURL(/\/jobs\/[^/?#]+$/, { waitUntil: 'load', timeout: 120_000 }),
      up.locator('button[type=submit]').click(),
    ]).catch(async (e) => fail(`the upload did not lead to /jobs/{id}: now at ${page.url()}, which says: ${await pageText(page)} (${e.message.split('\n')[0]})`));
    const jobUrl = page.url();
    const jobId = decodeURIComponent(new URL(jobUrl).pathname.split('/').pop());
    log(`uploaded ${path.basename(upload)} (${fs.statSync(upload).size} bytes) as job ${jobId}`);

    // ------------------------------------------------------------------ progress (live, no reload)
    currentStep = 'progress';
    const progress = page.locator('#job-progress');
    if ((await progress.count()) !== 1) fail(`${jobUrl} has no #job-progress`);
    // The job table says `complete`; the portal's contract said `completed`: either is done.
    const DONE = new Set(['complete', 'completed']);
    const statuses = new Set(['queued', 'processing', ...DONE, 'error', 'cancelled']);
    const deadline = Date.now() + jobTimeout;
    const seen = [];
    let last = null;
    let reloads = 0;
    for (;;) {
      let now;
      try {
        now = await progress.evaluate((el) => ({ status: el.dataset.status, percent: el.dataset.percent }), null, { timeout: 10_000 });
      } catch (e) {
        // The page reloads itself when the job finishes (to render the results): read again.
        if (++reloads > 20) fail(`#job-progress could not be read: ${e.message.split('\n')[0]}`);
        await page.waitForLoadState('load').catch(() => {});
        await page.waitForTimeout(500);
        continue;
      }
      const percent = Number(now.percent);
      if (!statuses.has(now.status)) fail(`#job-progress data-status is "${now.status}"`);
      if (!Number.isFinite(percent) || percent < 0 || percent > 100) fail(`#job-progress data-percent is "${now.percent}"`);
      if (!last || last.status !== now.status || Number(last.percent) !== percent) {
        seen.push(`${now.status} ${percent}%`);
        log(`job ${jobId}: ${now.status} ${percent}%`);
        if (last && now.status === last.status && percent < Number(last.percent)) fail(`progress went back from ${last.percent}% to ${percent}%`);
      }
      last = now;
      if (now.status === 'error' || now.status === 'cancelled') {
        fail(`the job ended ${now.status}; the page says: ${await pageText(page)}`);
      }
      if (DONE.has(now.status) && percent === 100) break;
      if (Date.now() > deadline) fail(`the job was not completed within ${jobTimeout / 1000} s; last seen ${now.status} ${percent}% (seen: ${seen.join(' → ')})`);
      await page.waitForTimeout(1000);
    }
    log(`job ${jobId} completed; progress seen live: ${seen.join(' → ')}`);
    // If the page reloads itself on completion, let that happen before looking for the results.
    await page.waitForTimeout(1500);
    await page.waitForLoadState('load');

    // ------------------------------------------------------------------ preview image
    currentStep = 'preview';
    const preview = page.locator('img#preview');
    await preview.waitFor({ state: 'attached', timeout: 60_000 }).catch(() => fail('the completed job page has no img#preview'));
    await page
      .waitForFunction(() => {
        const img = document.querySelector('img#preview');
        return img && img.complete && img.naturalWidth > 0;
      }, null, { timeout: 60_000 })
      .catch(async () => {
        const src = await preview.getAttribute('src');
        fail(`img#preview (src=${src}) did not load (naturalWidth 0)`);
      });
    const dims = await preview.evaluate((img) => `${img.naturalWidth}x${img.naturalHeight}`);
    log(`preview image ${dims}`);
    await shot('03-job-completed');

    // ------------------------------------------------------------------ results zip
    currentStep = 'download';
    const link = page.locator('a#download-zip');
    await link.waitFor({ state: 'visible', timeout: 60_000 }).catch(() => fail('the completed job page has no visible a#download-zip'));
    const [download] = await Promise.all([
      page.waitForEvent('download', { timeout: 120_000 }),
      link.click(),
    ]).catch((e) => fail(`clicking a#download-zip started no download: ${e.message.split('\n')[0]}`));
    const failure = await download.failure();
    if (failure) fail(`the zip download failed: ${failure}`);
    const zipName = download.suggestedFilename() || 'results.zip';
    const zipPath = path.join(artifacts, zipName.endsWith('.zip') ? zipName : `${zipName}.zip`);
    await download.saveAs(zipPath);
    const zip = fs.readFileSync(zipPath);
    if (zip.length <= 1024) fail(`the downloaded ${zipName} has only ${zip.length} bytes`);
    if (zip[0] !== 0x50 || zip[1] !== 0x4b) fail(`the downloaded ${zipName} is not a zip (starts with ${JSON.stringify(zip.subarray(0, 8).toString('latin1'))})`);
    log(`downloaded ${zipName}: ${zip.length} bytes`);

    // ------------------------------------------------------------------ 3D view
    currentStep = 'viewer';
    let canvas = page.locator('canvas#viewer');
    if ((await canvas.count()) === 0) {
      // The view may sit behind a link or button ("3D view") instead of on the job page.
      const opener = page.locator('a, button, summary').filter({ hasText: /3\s*D/i }).first();
      if ((await opener.count()) === 0) fail('the completed job page has no canvas#viewer and no link or button to a 3D view');
      await opener.click();
      canvas = page.locator('canvas#viewer');
      await canvas.waitFor({ state: 'attached', timeout: 30_000 }).catch(() => fail('opening the 3D view showed no canvas#viewer'));
    }
    await canvas.scrollIntoViewIfNeeded();
    const viewerStart = Date.now();
    await page
      .waitForFunction(() => ['1', 'error'].includes(document.querySelector('canvas#viewer')?.dataset.ready), null, { timeout: viewerTimeout })
      .catch(async () => {
        const status = await page.locator('#viewer-status').innerText().catch(() => '(no #viewer-status)');
        fail(`canvas#viewer did not get data-ready="1" within ${viewerTimeout / 1000} s; #viewer-status: ${status}`);
      });
    const status = (await page.locator('#viewer-status').innerText().catch(() => '')).trim();
    const ready = await canvas.getAttribute('data-ready');
    if (ready !== '1') fail(`canvas#viewer has data-ready="${ready}"; #viewer-status: ${status}`);
    const m = /(\d+)\s+meshes\s+loaded/i.exec(status);
    if (!m || Number(m[1]) < 1 || /fail|error/i.test(status)) fail(`#viewer-status says "${status}", expected "N meshes loaded" with N ≥ 1 and none failed`);
    const box = await canvas.boundingBox();
    if (!box || box.width < 50 || box.height < 50) fail(`canvas#viewer is ${box ? `${box.width}x${box.height}` : 'not visible'}`);
    await page.waitForTimeout(500); // let the compositor show the last frame
    const canvasPng = await canvas.screenshot({ path: path.join(artifacts, '04-viewer-canvas.png') });
    const colours = await distinctColours(context, canvasPng);
    if (colours < 8) fail(`canvas#viewer looks empty: ${colours} distinct colour(s) in its screenshot`);
    log(`3D view ready in ${((Date.now() - viewerStart) / 1000).toFixed(1)} s: "${status}", ${Math.round(box.width)}x${Math.round(box.height)}, ${colours >= 1000 ? '≥1000' : colours} colours`);
    await shot('05-viewer');

    // ------------------------------------------------------------------ the job in the lists
    currentStep = 'lists';
    const api = await page.request.get(`${base}/api/jobs?page=1&per_page=50`);
    if (api.status() !== 200) fail(`GET /api/jobs answered ${api.status()}`);
    const apiText = await api.text();
    try {
      JSON.parse(apiText);
    } catch {
      fail(`GET /api/jobs did not answer JSON: ${apiText.slice(0, 200)}`);
    }
    if (!apiText.includes(jobId)) fail(`GET /api/jobs does not list job ${jobId}`);
    await page.goto(`${base}/`);
    if ((await page.locator(`a[href*="/jobs/${jobId}"]`).count()) === 0) fail(`the dashboard has no link to /jobs/${jobId}`);
    await shot('06-dashboard-with-job');

    currentStep = 'console';
    const allow = process.env.KNEENODE_ALLOW_CONSOLE ? new RegExp(process.env.KNEENODE_ALLOW_CONSOLE) : null;
    const tolerated = allow ? consoleErrors.filter((e) => allow.test(e)) : [];
    if (tolerated.length > 0) log(`tolerated (KNEENODE_ALLOW_CONSOLE): ${tolerated.join('; ')}`);
    consoleErrors.splice(0, consoleErrors.length, ...consoleErrors.filter((e) => !tolerated.includes(e)));
    if (consoleErrors.length > 0) fail(`the pages logged ${consoleErrors.length} error(s):\n  ${consoleErrors.join('\n  ')}`);
    log(`passed: job ${jobId}, screenshots and ${path.basename(zipPath)} in ${artifacts}`);
  } catch (e) {
    await page.screenshot({ path: path.join(artifacts, `failed-${currentStep}.png`), fullPage: true }).catch(() => {});
    if (consoleErrors.length > 0 && currentStep !== 'console') {
      log(`the pages also logged:\n  ${consoleErrors.join('\n  ')}`);
    }
    throw e;
  } finally {
    fs.writeFileSync(path.join(artifacts, 'console.txt'), consoleLog.join('\n') + '\n');
    await browser.close().catch(() => {});
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    const msg = e instanceof StepError ? e.message : (e?.stack ?? String(e));
    const shotNote = artifacts ? ` (screenshot: ${path.join(artifacts, `failed-${currentStep}.png`)})` : '';
    process.stderr.write(`\nBROWSER TEST FAILED at step "${currentStep}"${shotNote}:\n${msg}\n`);
    process.exit(1);
  },
);
