// dashboard.mjs: drives the dashboard (GET /) in headless Chromium for tests/dashboard/run.
//
// The daemon runs with auth_reads, four registered clients and no model yet. This script opens
// the page, checks its headers, gives a wrong then the right admin token, checks the empty
// federation, then creates DASH_READY_FILE so that run starts the three clients, and waits for
// the daemon to stop after max_rounds = 3. Without reloading, the page must then show what the
// clients' arithmetic implies (dash_client.c): model version 4, train_loss 25.5, 6.375, 1.59375
// for the three training rounds (mean((w - t)^2) with w = 0, t/2, 3t/4 and t = 1..8), evaluation
// loss 25.5 / 4^(v-1) and accuracy 1 / (1 + loss) for model version v, exactly one rejected update
// (site-c's NaN in the second training round), one chart point per committed round, the client
// table, and a model download whose tensor is 7t/8 and whose bytes hash to the model's SHA-256.
// site-a reports an evaluation metric named "<img src=/xss onerror=alert(1)>": the page must
// show that name as text (no <img> element, no request for /xss, no dialog).
// Throughout: no console error except the 401s before the token was given, no uncaught
// exception, no request to any other origin. A full-page screenshot is kept as an artifact.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const BASE = new URL(env('DASH_URL'));
const TOKEN = env('DASH_TOKEN');
const READY = env('DASH_READY_FILE');
const ART = env('DASH_ARTIFACTS');
const TIMEOUT_MS = Number(process.env.DASH_TIMEOUT_S || 120) * 1000;
const T = [1, 2, 3, 4, 5, 6, 7, 8];
const lossOf = (v) => 25.5 / 4 ** (v - 1); // mean(((1 - 2^(1-v)) t - t)^2) = 25.5 / 4^(v-1)

let failures = 0;
function check(ok, what) {
  console.log(`${ok ? '  ok  ' : '  FAIL'} ${what}`);
  if (!ok) failures++;
}
const near = (a, b, tol = 1e-9) => Math.abs(a - b) <= tol * Math.max(1, Math.abs(b));

async function api(p) {
  const r = await fetch(new URL(p, BASE), { headers: { Authorization: `Bearer ${TOKEN}` } });
  if (!r.ok) throw new Error(`${p}: HTTP ${r.status}`);
  return r.json();
}

async function until(what, fn, ms = TIMEOUT_MS) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

const browser = await chromium.launch({
  executablePath: process.env.DASH_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--no-first-run', '--disable-gpu'],
});
let code = 1;
try {
  const context = await browser.newContext({ acceptDownloads: true,
                                             viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  let phase = 'before-login';
  const consoleErrors = [];
  const pageErrors = [];
  const requests = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push({ phase, text: m.text() }); });
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  const dialogs = [];
  page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss(); });
  context.on('request', (r) => requests.push(r.url()));

  // ---- the page and its headers ----
  const resp = await page.goto(BASE.href);
  const h = resp.headers();
  check(resp.status() === 200, 'GET / answers 200');
  check(h['content-type'] === 'text/html; charset=utf-8', `Content-Type is ${h['content-type']}`);
  const csp = h['content-security-policy'] || '';
  check(/default-src 'none'/.test(csp) && /connect-src 'self'/.test(csp) &&
        /script-src 'sha256-[A-Za-z0-9+/]{43}='/.test(csp), `CSP: ${csp}`);

  // ---- auth_reads: the page asks for the token ----
  await page.locator('#login').waitFor({ state: 'visible' });
  check(true, 'the page asks for the admin token (auth_reads)');
  await page.fill('#token', 'not-the-admin-token');
  await page.click('#login button');
  await until('the refused-token message', async () =>
    (await page.textContent('#login-error')).includes('refused'), 10000);
  check(true, 'a wrong token is refused and the form asks again');
  await page.fill('#token', TOKEN);
  phase = 'after-login';
  await page.click('#login button');
  await page.locator('#login').waitFor({ state: 'hidden' });
  await until('a first successful poll', async () =>
    Number(await page.getAttribute('body', 'data-polls')) >= 1, 10000);
  check(await page.evaluate(() => sessionStorage.getItem('fedcoord.admin_token')) === TOKEN,
        'the token is kept in sessionStorage');
  check(await page.evaluate(() => localStorage.length) === 0, 'nothing in localStorage');

  // ---- the empty federation, before any client connects ----
  check(await page.textContent('#st-model-version') === 'none yet', 'no model yet');
  check(await page.textContent('#st-round') === 'none yet', 'no round yet');
  const names0 = await page.$$eval('#clients tbody tr', (rows) => rows.map((r) => r.dataset.client));
  check(JSON.stringify(names0.slice().sort()) ===
        JSON.stringify(['site-a', 'site-b', 'site-c', 'site-idle']),
        `the client table lists the registered clients: ${names0}`);
  fs.writeFileSync(READY, 'ready\n');

  // ---- the federation runs; the page updates itself ----
  const seenVersions = new Set();
  const seenRounds = new Set();
  const status = await until('the daemon to stop after max_rounds', async () => {
    seenVersions.add(await page.textContent('#st-model-version'));
    seenRounds.add(await page.textContent('#st-round'));
    const s = await api('/v1/status');
    return s.state === 'STOPPED' ? s : null;
  });
  const list = (await api('/v1/rounds?limit=100')).rounds;
  const det = [];
  for (const r of list) det.push(await api(`/v1/rounds/${r.id}`));
  det.sort((a, b) => a.id - b.id);
  const committed = det.filter((d) => d.state === 'committed');
  const train = committed.filter((d) => d.config.kind === 'train');
  const evals = committed.filter((d) => d.config.kind === 'evaluate');
  check(status.model && status.model.version === 4, `the daemon holds model version 4`);
  check(train.length === 3, `3 committed training rounds (${train.map((d) => d.id)})`);
  check(evals.length >= 3, `evaluation rounds committed: ${evals.map((d) => d.id)}`);

  const points = (chart, series) => page.$$eval(
    `#${chart} [data-series="${series}"]`,
    (els) => els.map((e) => ({ round: Number(e.dataset.round), value: Number(e.dataset.value) })));
  await until('the page to chart every committed round', async () =>
    (await points('chart-duration', 'committed')).length === committed.length &&
    (await page.textContent('#st-state')) === 'STOPPED', 15000);
  const live = (set) => [...set].filter((v) => /^[0-9]+$/.test(v));
  check(live(seenVersions).length >= 2 && live(seenRounds).length >= 2,
        `without a reload the page showed model versions ${live(seenVersions)} and rounds ` +
        `${live(seenRounds)} while they ran`);

  // status panel
  check(await page.textContent('#st-model-version') === '4', 'status shows model version 4');
  check(await page.textContent('#st-model-sha') === status.model.sha256, 'status shows its SHA-256');
  const lastId = String(status.round ? status.round.id : det[det.length - 1].id);
  check(await page.textContent('#st-round') === lastId, `status shows the current round ${lastId}`);

  // charts: one point per committed round, values from the hand calculation
  const ids = (xs) => JSON.stringify(xs.map((x) => x.round ?? x.id).sort((a, b) => a - b));
  const tl = await points('chart-loss', 'train loss');
  const el = await points('chart-loss', 'evaluation loss');
  check(ids(tl) === ids(train), `loss chart: one train point per training round ${ids(tl)}`);
  check(ids(el) === ids(evals), `loss chart: one point per evaluation round ${ids(el)}`);
  tl.sort((a, b) => a.round - b.round);
  check(tl.length === 3 && near(tl[0].value, 25.5) && near(tl[1].value, 6.375) &&
        near(tl[2].value, 1.59375), `train losses ${tl.map((p) => p.value)} = 25.5, 6.375, 1.59375`);
  const evalVersion = new Map(evals.map((d) => [d.id, d.config.model_version]));
  check(el.every((p) => near(p.value, lossOf(evalVersion.get(p.round)))),
        `evaluation losses ${el.map((p) => p.value)} = 25.5 / 4^(v-1)`);
  const acc = await points('chart-accuracy', 'evaluation accuracy');
  check(ids(acc) === ids(evals), `accuracy chart: one point per evaluation round ${ids(acc)}`);
  check(acc.every((p) => near(p.value, 1 / (1 + lossOf(evalVersion.get(p.round))))),
        `accuracies ${acc.map((p) => p.value.toFixed(6))} = 1 / (1 + loss)`);
  check(evalVersion.get(evals[evals.length - 1].id) === 4, 'the last evaluation is of version 4');
  const dur = await points('chart-duration', 'committed');
  check(ids(dur) === ids(committed) && dur.every((p) => p.value >= 0),
        `duration chart: one point per committed round ${ids(dur)}`);
  const accd = await points('chart-updates', 'accepted');
  const rej = await points('chart-updates', 'rejected');
  check(ids(accd) === ids(committed) && ids(rej) === ids(committed),
        'updates chart: accepted and rejected bars for every committed round');
  const rejRounds = rej.filter((p) => p.value > 0);
  check(rejRounds.length === 1 && rejRounds[0].value === 1 && rejRounds[0].round === train[1].id,
        `one rejected update, in the second training round (${train[1].id})`);
  const accIn = (id) => accd.find((p) => p.round === id).value;
  check(accIn(train[0].id) === 3 && accIn(train[1].id) === 2 && accIn(train[2].id) === 3,
        'accepted updates per training round: 3, 2, 3');

  // client table
  const rows = await page.$$eval('#clients tbody tr', (trs) => trs.map((tr) => ({
    name: tr.dataset.client, cells: [...tr.cells].map((c) => c.textContent) })));
  const row = (n) => rows.find((r) => r.name === n);
  check(rows.length === 4, 'the client table has the 4 registered clients');
  check(row('site-c').cells[4] === '1' && row('site-a').cells[4] === '0',
        'site-c shows 1 rejection, site-a none');
  check(row('site-idle').cells[1] === 'no' && row('site-idle').cells[2] === '0',
        'site-idle never connected and took part in no round');

  // model versions and the download (with the token, through fetch)
  const versions = await page.$$eval('#models tbody tr', (trs) => trs.map((t) => Number(t.dataset.version)));
  check(JSON.stringify(versions) === '[4,3,2,1]', `model versions listed: ${versions}`);
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.click('#models tr[data-version="4"] a'),
  ]);
  const file = path.join(ART, 'model-v4.safetensors');
  await download.saveAs(file);
  const bytes = fs.readFileSync(file);
  const hlen = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + hlen).toString('utf8'));
  const data = bytes.subarray(8 + hlen);
  const w = [];
  for (let i = 0; i < 8; i++) w.push(data.readFloatLE(4 * i));
  check(header.w && header.w.dtype === 'F32' && JSON.stringify(header.w.shape) === '[8]' &&
        JSON.stringify(w) === JSON.stringify(T.map((t) => 0.875 * t)),
        `downloaded model v4: w = ${w} = 7t/8`);
  check(createHash('sha256').update(data).digest('hex') === status.model.sha256,
        'the downloaded bytes hash to the model SHA-256');

  // markup from a client stays text
  const HTML = '<img src=/xss onerror=alert(1)>';
  const metricCells = await page.$$eval('#rounds tbody tr td:nth-child(8)', (tds) => tds.map((t) => t.textContent));
  check(metricCells.filter((t) => t.includes(HTML)).length === evals.length,
        'the markup metric name is shown as text in every evaluation round');
  check(await page.locator('img').count() === 0 && dialogs.length === 0 &&
        !requests.some((u) => new URL(u).pathname === '/xss'),
        'and it never became an element, a request or a dialog');

  // ---- the whole session ----
  const shot = path.join(ART, 'dashboard.png');
  await page.screenshot({ path: shot, fullPage: true });
  check(fs.statSync(shot).size > 10000, `screenshot kept: ${shot}`);
  const stray = consoleErrors.filter((e) => !(e.phase === 'before-login' && / 401 /.test(e.text)));
  check(stray.length === 0, `no console errors after login (${JSON.stringify(stray)})`);
  check(pageErrors.length === 0, `no uncaught exceptions (${pageErrors})`);
  const foreign = requests.filter((u) => {
    const x = new URL(u);
    if (x.protocol === 'data:') return false;
    if (x.protocol === 'blob:') return !u.startsWith(`blob:${BASE.origin}/`);
    return x.origin !== BASE.origin;
  });
  check(requests.length > 10 && foreign.length === 0,
        `${requests.length} requests, none outside ${BASE.origin} (${foreign})`);
  code = failures ? 1 : 0;
} catch (e) {
  console.log(`  FAIL ${e.stack || e}`);
} finally {
  await browser.close();
}
console.log(code ? `dashboard: ${failures} check(s) failed` : 'dashboard: all checks passed');
process.exit(code);
