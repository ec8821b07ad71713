// End-to-end check of the web console in a real headless Chromium, driven by
// playwright-core. Started by server/tests/console_browser.rs against a real
// gateway; can also be run by hand:
//
//   FRAMEGATE_URL=http://127.0.0.1:8080 FRAMEGATE_KEY=… FRAMEGATE_Y4M=clip.y4m \
//   FRAMEGATE_IMAGE=server/tests/data/dog.jpg node console/e2e/console.e2e.mjs
//
// Steps: sign in; live demo with Chromium's fake camera playing the Y4M clip
// (fps and frame width as chosen) until detections arrive, then for a bounded
// time; stop; wait until /v1/usage has the session's frames, open the usage
// page and read what it shows; one-shot detect by setting the file input;
// open the keys and plan pages; with FRAMEGATE_E2E_ALSO set, a second live
// run over that transport (same fps, width and time); with FRAMEGATE_E2E_ONLY_LIVE
// set, only the sign-in and the first live run. Screenshots and results.json go to
// FRAMEGATE_E2E_OUT; the last stdout line is `RESULT {json}`. Exits non-zero
// with a message when a step fails.

import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name, def) => {
  const v = process.env[name] ?? def;
  if (v === undefined) throw new Error(`${name} is required`);
  return v;
};
const URL_BASE = env('FRAMEGATE_URL').replace(/\/$/, '');
const KEY = env('FRAMEGATE_KEY');
const Y4M = env('FRAMEGATE_Y4M');
const IMAGE = env('FRAMEGATE_IMAGE');
const OUT = env('FRAMEGATE_E2E_OUT', 'target/console-e2e');
const CHROMIUM = env('FRAMEGATE_CHROMIUM', '/usr/bin/chromium');
const FPS = env('FRAMEGATE_E2E_FPS', '4');
const WIDTH = env('FRAMEGATE_E2E_WIDTH', '320');
const STREAM_SECS = Number(env('FRAMEGATE_E2E_SECONDS', '15'));
// The live demo's transport selector: auto | webtransport | websocket.
const TRANSPORT = env('FRAMEGATE_E2E_TRANSPORT', 'auto');
const ALSO = env('FRAMEGATE_E2E_ALSO', '');
// Set: sign in and one live run, nothing else (the gateway-asks-to-wait test).
const ONLY_LIVE = env('FRAMEGATE_E2E_ONLY_LIVE', '') !== '';
// Set: accept the gateway's self-signed development certificate (an
// `https://` FRAMEGATE_URL on loopback).
const IGNORE_CERT = env('FRAMEGATE_E2E_IGNORE_CERT', '') !== '';
// Extra Chromium flags, space-separated.
const EXTRA_ARGS = env('FRAMEGATE_E2E_CHROMIUM_ARGS', '').split(' ').filter(Boolean);
// A busy 2-core machine: every wait is generous.
const SLOW = 90_000;

mkdirSync(OUT, { recursive: true });
const userDataDir = mkdtempSync(join(tmpdir(), 'framegate-chromium-'));
const log = (...a) => console.log(`[e2e ${new Date().toISOString().slice(11, 19)}]`, ...a);
const result = { url: URL_BASE, fps: Number(FPS), width: Number(WIDTH), seconds: STREAM_SECS, transport: TRANSPORT };
const consoleErrors = [];

async function usageApi(from, to, granularity) {
  const r = await fetch(`${URL_BASE}/v1/usage?from=${from}&to=${to}&granularity=${granularity}`, {
    headers: { Authorization: `Bearer ${KEY}` },
  });
  if (!r.ok) throw new Error(`/v1/usage answered ${r.status}`);
  return r.json();
}

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1100, height: 760 },
  ignoreHTTPSErrors: IGNORE_CERT,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    `--use-file-for-fake-video-capture=${Y4M}`,
    ...EXTRA_ARGS,
  ],
  timeout: SLOW,
});
let failed = null;
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(SLOW);
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(m.text());
  });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  const st = () => page.evaluate(() => JSON.parse(JSON.stringify(window.__framegate)));

  // ---- sign in (the page itself needs no key) ----
  log('open', `${URL_BASE}/console/`);
  await page.goto(`${URL_BASE}/console/`);
  // The HTTP version the page came over (`h2` over https: the WebSocket then
  // opens on the same connection with an extended CONNECT, RFC 8441).
  result.pageProtocol = await page.evaluate(() => performance.getEntriesByType('navigation')[0]?.nextHopProtocol ?? '');
  await page.fill('#api-key', KEY);
  await page.click('#sign-in button[type=submit]');
  await page.waitForSelector('#nav:not([hidden])');
  result.signedInAs = await page.textContent('#who');
  log('signed in:', result.signedInAs);
  // The key lives in memory only: no storage, no cookies; a reload signs out.
  result.keyStorage = {
    ...(await page.evaluate(() => ({
      localStorage: localStorage.length,
      sessionStorage: sessionStorage.length,
      documentCookie: document.cookie,
    }))),
    cookies: (await context.cookies()).length,
  };
  if (JSON.stringify(result.keyStorage) !== JSON.stringify({ localStorage: 0, sessionStorage: 0, documentCookie: '', cookies: 0 })) {
    throw new Error(`the key left memory: ${JSON.stringify(result.keyStorage)}`);
  }
  await page.reload();
  await page.waitForSelector('#api-key');
  result.reloadSignsOut = await page.isHidden('#nav');
  if (!result.reloadSignsOut) throw new Error('still signed in after a reload');
  await page.fill('#api-key', KEY);
  await page.click('#sign-in button[type=submit]');
  await page.waitForSelector('#nav:not([hidden])');

  // ---- live demo ----
  const liveRun = async (transport, screenshot) => {
    await page.evaluate(() => (location.hash = '#/live'));
    await page.waitForSelector('#start');
    await page.selectOption('#fps', FPS);
    await page.selectOption('#width', WIDTH);
    await page.selectOption('#transport', transport);
    // What the message line showed while streaming: each time the gateway's
    // busy notice went up, and each time the line was emptied (the notice
    // taken down once answers resume).
    await page.evaluate(() => {
      const el = document.querySelector('#live-message');
      window.__messageSeen = { busy: 0, cleared: 0 };
      new MutationObserver(() => {
        const text = el.textContent ?? '';
        if (text.includes('The gateway is busy')) window.__messageSeen.busy += 1;
        else if (text.trim() === '') window.__messageSeen.cleared += 1;
      }).observe(el, { childList: true, subtree: true, characterData: true });
    });
    await page.click('#start');
    await page.waitForFunction(
      () => window.__framegate.live.answered >= 3 || window.__framegate.live.lastError !== '',
      null,
      { timeout: SLOW },
    );
    const early = (await st()).live;
    if (early.answered < 3) throw new Error(`live demo over ${transport}: ${early.lastError}`);
    log('detections arriving over', early.transport, early.transportFallback ? `(fallback: ${early.transportFallback})` : '', '; streaming for', STREAM_SECS, 's');
    const t0 = Date.now();
    // Bounded: STREAM_SECS, then stop. A detection of the clip's dog or bicycle
    // must have been drawn by then.
    while (Date.now() - t0 < STREAM_SECS * 1000) await page.waitForTimeout(1000);
    await page.waitForFunction(
      () => window.__framegate.live.lastBoxes.some((b) => b.label === 'dog' || b.label === 'bicycle'),
      null,
      { timeout: 30_000 },
    );
    await page.waitForTimeout(600); // one stats refresh
    if (screenshot) await page.screenshot({ path: join(OUT, screenshot) });
    const shown = {
      fps: await page.textContent('#stat-fps'),
      p50: await page.textContent('#stat-p50'),
      p99: await page.textContent('#stat-p99'),
      usage: await page.textContent('#stat-usage'),
      transport: await page.textContent('#stat-transport'),
      held: await page.textContent('#stat-held'),
      message: await page.textContent('#live-message'),
      messageSeen: await page.evaluate(() => window.__messageSeen),
      labels: await page.$$eval('#live-boxes tr[data-label]', (rows) => rows.map((r) => r.dataset.label)),
    };
    await page.click('#stop');
    await page.waitForFunction(() => !window.__framegate.live.running, null, { timeout: 30_000 });
    const live = (await st()).live;
    log('live:', JSON.stringify({ transport: live.transport, sent: live.sent, answered: live.answered, dropped: live.dropped, skipped: live.skipped, held: live.held, heldMs: Math.round(live.heldMs), resumed: live.resumed, fps: live.fps, latencyMs: live.latencyMs, usageFrames: live.usageFrames }));
    if (!(live.answered > 0 && live.fps > 0 && live.latencyMs.count > 0)) throw new Error('live demo showed no answers, fps or latency');
    if (!/ms$/.test(shown.p50 ?? '')) throw new Error(`latency not shown: ${shown.p50}`);
    if (!shown.labels.some((l) => l === 'dog' || l === 'bicycle')) throw new Error(`no dog/bicycle row in the page: ${shown.labels}`);
    return { ...live, shown };
  };
  result.live = await liveRun(TRANSPORT, 'live.png');
  const live = result.live;
  if (!ONLY_LIVE) {
    // ---- usage: the page shows what /v1/usage says, once the session is flushed ----
    const now = Math.floor(Date.now() / 1000);
    const to = (Math.floor(now / 3600) + 1) * 3600;
    const from = to - 24 * 3600;
    const deadline = Date.now() + 30_000;
    let api;
    for (;;) {
      api = await usageApi(from, to, 'hour');
      if (api.frames >= live.usageFrames || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    await page.evaluate(() => (location.hash = '#/usage'));
    await page.waitForSelector('#usage-totals');
    await page.screenshot({ path: join(OUT, 'usage.png') });
    const usage = (await st()).usage;
    const usageAgain = await usageApi(usage.from, usage.to, usage.granularity);
    result.usage = {
      page: {
        from: usage.from,
        to: usage.to,
        granularity: usage.granularity,
        frames: usage.frames,
        pixels: usage.pixels,
        framesText: await page.textContent('#usage-frames'),
        pixelsText: await page.textContent('#usage-pixels'),
        bars: await page.$$eval('#usage-chart rect[data-frames]', (rs) => rs.map((r) => Number(r.dataset.frames))),
      },
      api: { frames: usageAgain.frames, pixels: usageAgain.pixels, buckets: usageAgain.buckets },
    };
    log('usage page:', usage.frames, 'frames; API:', usageAgain.frames);
    if (usage.frames !== usageAgain.frames || usage.pixels !== usageAgain.pixels) throw new Error('usage page differs from /v1/usage');

    // ---- one-shot detect by file ----
    await page.evaluate(() => (location.hash = '#/detect'));
    await page.setInputFiles('#detect-file', IMAGE);
    await page.waitForSelector('#detect-result table.boxes');
    await page.screenshot({ path: join(OUT, 'detect.png') });
    result.detect = {
      state: (await st()).detect,
      labels: await page.$$eval('#detect-result tr[data-label]', (rows) => rows.map((r) => r.dataset.label)),
    };
    log('detect labels:', result.detect.labels.join(', '));

    // ---- keys and plan (self-service endpoints may be absent: a clear message) ----
    await page.evaluate(() => (location.hash = '#/keys'));
    await page.waitForSelector('#keys-table, #keys-list .notice, #keys-unsupported, #keys-message .notice');
    result.keys = {
      unsupported: (await page.$('#keys-unsupported')) !== null,
      text: (await page.textContent('#app'))?.slice(0, 400),
    };
    if (!result.keys.unsupported) {
      // Self-service keys exist: create one (shown once), then revoke it.
      page.on('dialog', (d) => void d.accept());
      await page.fill('#key-name', 'console-e2e');
      await page.click('#key-form button[type=submit]');
      await page.waitForSelector('#new-key');
      const newKey = (await page.textContent('#new-key')) ?? '';
      const newId = (await page.textContent('#key-created p')) ?? '';
      await page.waitForSelector('#keys-table');
      const rows = await page.$$eval('#keys-table tr[data-key-id]', (rs) =>
        rs.map((r) => ({ id: r.dataset.keyId, name: r.cells[1].textContent, revoked: r.cells[5].textContent })),
      );
      const mine = rows.find((r) => r.name === 'console-e2e' && newId.includes(r.id));
      result.keys.created = { keyLength: newKey.length, listed: Boolean(mine) };
      if (!newKey || !mine) throw new Error(`created key not shown/listed: ${JSON.stringify(rows)}`);
      await page.click(`#keys-table tr[data-key-id="${mine.id}"] button.revoke`);
      await page.waitForFunction(
        (id) => {
          const r = document.querySelector(`#keys-table tr[data-key-id="${id}"]`);
          return !r || r.cells[5].textContent !== '–'; // gone, or marked revoked
        },
        mine.id,
        { timeout: 30_000 },
      );
      result.keys.revoked = true;
    }
    await page.screenshot({ path: join(OUT, 'keys.png') });
    await page.evaluate(() => (location.hash = '#/plan'));
    await page.waitForSelector('#plan-table, #plan-unsupported, #plan-result .notice.error');
    result.plan = {
      unsupported: (await page.$('#plan-unsupported')) !== null,
      text: (await page.textContent('#plan-result'))?.slice(0, 400),
    };
    await page.screenshot({ path: join(OUT, 'plan.png') });

    // ---- the live demo again, over the other transport ----
    if (ALSO) result.liveAlso = await liveRun(ALSO, `live-${ALSO}.png`);
  }
} catch (e) {
  failed = e;
  try {
    const p = context.pages()[0];
    if (p) await p.screenshot({ path: join(OUT, 'failure.png') });
  } catch {
    // best effort
  }
} finally {
  await context.close().catch(() => undefined);
  rmSync(userDataDir, { recursive: true, force: true });
}
result.consoleErrors = consoleErrors;
result.error = failed ? String(failed.stack ?? failed) : null;
writeFileSync(join(OUT, 'results.json'), JSON.stringify(result, null, 2));
console.log(`RESULT ${JSON.stringify(result)}`);
if (failed) {
  console.error(`e2e failed: ${failed.message}\nbrowser console errors:\n${consoleErrors.join('\n')}`);
  process.exit(1);
}
