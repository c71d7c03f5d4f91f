// 14. The console at /console in headless Chromium (Debian's `chromium`, driven by puppeteer-core;
// no browser is downloaded): the page is served with a strict CSP, loads fast, makes no request
// off the node, signs in with the admin token (a wrong one shows the 401), shows the connection
// count of real pusher-js clients, shows an event published with the Node SDK in the live log
// within 1 s (and renders hostile names as text), sends a test event, shows presence members,
// and creates an app from the page. Screenshots of each page go to artifacts/ (gitignored).
//
// Creating an app needs a writable app store: herald runs on a real Postgres (lib/postgres.mjs,
// the app store's tests' helper) and the page creates, rotates, edits, disables and deletes an
// app. A second node on the file store (read-only) shows that the page disables its write
// controls and says why, and that a forced submit shows the API's 409.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import puppeteer from 'puppeteer-core';

import { startPostgres } from '../lib/postgres.mjs';

import { APP, Clients, serverSdk, startServer, subscribed, uniq, waitFor } from '../lib/harness.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = join(HERE, '..', 'artifacts');
// scripts/test installs Debian's chromium; without it this suite fails rather than skips.
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const TOKEN = 'console-test-token-0123456789';
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
  "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
const CLIENTS = 5;

/** Starts herald with `env` added to its environment (startServer passes process.env on). */
async function startWithEnv(env, opts = {}, serverOpts = {}) {
  const saved = {};
  for (const [k, v] of Object.entries(env)) {
    saved[k] = process.env[k];
    process.env[k] = v;
  }
  try {
    return await startServer(opts, serverOpts);
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

async function signIn(page, base, token = TOKEN) {
  await page.goto(`${base}/console`);
  await page.waitForSelector('#token');
  await page.type('#token', token);
  await page.click('#login button[type=submit]');
}

/** Text of every row of a table body. */
function rows(page, selector) {
  return page.$$eval(`${selector} tbody tr`, (trs) => trs.map((tr) => tr.innerText));
}

describe('the console', () => {
  let server;
  let pg;
  let sdk;
  let clients;
  let browser;
  let page;
  const requests = [];
  const problems = [];
  const failed = [];
  const bases = []; // the nodes this test started: the only hosts a page may reach

  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    const env = { HERALD_ADMIN__TOKEN: TOKEN };
    // The app store's helper: a real Postgres on a free port ({ url, destroy() }).
    pg = await startPostgres();
    env.HERALD_APP_STORE__URL = pg.url;
    server = await startWithEnv(env);
    bases.push(server.base);
    {
      // A fresh database has no apps: add the suite's default app through the admin API.
      const res = await fetch(`${server.base}/admin/api/apps`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ id: APP.id, key: APP.key, secret: APP.secret, client_events: true }),
      });
      assert.ok(res.status === 201 || res.status === 409, `creating the default app: ${res.status}`);
    }
    sdk = serverSdk(server);
    clients = new Clients(server);
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    });
    page = await browser.newPage();
    await page.setViewport({ width: 1366, height: 768 });
    page.on('request', (r) => requests.push(r.url()));
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      // Failed responses are logged as errors too: they are checked one by one below.
      if (m.type() === 'error' && !/^Failed to load resource/.test(m.text())) problems.push(`console: ${m.text()}`);
    });
    page.on('response', (r) => {
      if (r.status() >= 400) failed.push(`${r.request().method()} ${r.url().slice(server.base.length)} ${r.status()}`);
    });
    page.on('dialog', (d) => {
      problems.push(`dialog opened: ${d.message()}`);
      d.dismiss();
    });
  });

  after(async () => {
    await browser?.close();
    clients?.closeAll();
    await server?.stop();
    await pg?.destroy();
  });

  test('is off without an admin token', async () => {
    const plain = await startServer();
    try {
      for (const path of ['/console', '/console/console.js']) {
        const res = await fetch(`${plain.base}${path}`);
        assert.equal(res.status, 404, path);
      }
    } finally {
      await plain.stop();
    }
  });

  test('serves the page, script and style with a strict CSP', async () => {
    for (const [path, type] of [
      ['/console', 'text/html'],
      ['/console/', 'text/html'],
      ['/console/console.js', 'text/javascript'],
      ['/console/console.css', 'text/css'],
    ]) {
      const res = await fetch(`${server.base}${path}`);
      assert.equal(res.status, 200, path);
      assert.ok(res.headers.get('content-type').startsWith(type), `${path}: ${res.headers.get('content-type')}`);
      assert.equal(res.headers.get('content-security-policy'), CSP, path);
      assert.equal(res.headers.get('x-content-type-options'), 'nosniff', path);
      assert.equal(res.headers.get('referrer-policy'), 'no-referrer', path);
      assert.equal(res.headers.get('cache-control'), 'no-cache', path);
      const body = await res.text();
      if (type === 'text/html') {
        // No inline script or style (the CSP would refuse them anyway).
        assert.doesNotMatch(body, /<script(?![^>]*\bsrc=)[^>]*>/i);
        assert.doesNotMatch(body, /<style|\sstyle=/i);
      }
      if (type === 'text/javascript') assert.doesNotMatch(body, /innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(/);
    }
  });

  test('loads in well under a second and a wrong token shows the 401', async () => {
    // A first navigation, in another tab, warms the browser up (its own start-up is not the
    // page's load time).
    const warm = await browser.newPage();
    await warm.goto(`${server.base}/up`);
    await warm.close();
    await page.goto(`${server.base}/console`);
    await page.waitForSelector('#token');
    const loaded = await page.evaluate(() => performance.getEntriesByType('navigation')[0].loadEventEnd);
    assert.ok(loaded > 0 && loaded < 1000, `page load took ${loaded} ms`);
    await page.type('#token', 'not-the-token');
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#login-error:not([hidden])', { timeout: 5000 });
    const text = await page.$eval('#login-error', (e) => e.textContent);
    assert.match(text, /401/);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('herald.admin.token')), null);
    await page.screenshot({ path: join(ARTIFACTS, 'console-login-401.png') });
  });

  test('signs in and shows the connection count of pusher-js clients', async () => {
    await Promise.all(Array.from({ length: CLIENTS }, () => clients.connected()));
    await page.$eval('#token', (e) => (e.value = ''));
    await page.type('#token', TOKEN);
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#nodes tbody tr td', { timeout: 5000 });
    // The page polls every 2 s.
    await page.waitForFunction(
      (n) => document.getElementById('stat-connections')?.textContent === String(n),
      { timeout: 6000 },
      CLIENTS,
    );
    const nodes = await rows(page, '#nodes');
    assert.equal(nodes.length, 1);
    assert.match(nodes[0], new RegExp(`this node\\s+${CLIENTS}\\b`));
    // Let the chart gather a few samples before the screenshot.
    await page.waitForFunction(
      () => (document.querySelector('.chart path.line')?.getAttribute('d') ?? '').split('L').length >= 4,
      { timeout: 10000 },
    );
    await page.screenshot({ path: join(ARTIFACTS, 'console-overview.png'), fullPage: true });
  });

  test('an event published with the Node SDK shows in the live log within 1 s', async () => {
    await page.evaluate((id) => (location.hash = `#/apps/${id}`), APP.id);
    await page.waitForSelector('#log-status.ok', { timeout: 5000 });
    const channel = uniq('orders-');
    const listener = await clients.connected();
    await subscribed(listener, channel);

    const event = 'order.shipped';
    const started = Date.now();
    await Promise.all([
      sdk.trigger(channel, event, { id: 42 }),
      page.waitForFunction(
        (channel, event) =>
          [...document.querySelectorAll('#log tbody tr')].some(
            (tr) => tr.cells.length > 3 && tr.cells[2].textContent === channel && tr.cells[3].textContent === event,
          ),
        { timeout: 1000 },
        channel,
        event,
      ),
    ]);
    const took = Date.now() - started;
    assert.ok(took < 1000, `the event took ${took} ms to show`);

    // Filters: a channel filter that does not match hides it; the socket filter finds the
    // listener's subscription.
    await page.type('#filter-channel', 'no-such-channel');
    await page.waitForFunction(() => document.querySelector('#log tbody tr.empty'), { timeout: 1000 });
    await page.$eval('#filter-channel', (e) => (e.value = ''));
    await page.type('#filter-channel', channel);
    await page.type('#filter-socket', listener.connection.socket_id);
    const shown = await rows(page, '#log');
    assert.ok(shown.some((r) => /subscribed/.test(r)), shown.join('\n'));
    assert.ok(shown.every((r) => r.includes(channel)), shown.join('\n'));
    for (const f of ['#filter-channel', '#filter-socket']) await page.$eval(f, (e) => (e.value = ''));
    await page.$eval('#filter-socket', (e) => e.dispatchEvent(new Event('input')));

    // Pause holds the view; resume shows what came meanwhile.
    await page.click('#log-pause');
    await sdk.trigger(channel, 'while-paused', {});
    await page.waitForFunction(() => /\b1 new event\b/.test(document.getElementById('log-paused').textContent), { timeout: 2000 });
    assert.ok(!(await rows(page, '#log')).some((r) => r.includes('while-paused')));
    await page.click('#log-pause');
    await page.waitForFunction(() => document.querySelector('#log tbody').textContent.includes('while-paused'), { timeout: 1000 });
    // Newest on top.
    const order = (await rows(page, '#log')).filter((r) => r.includes(channel) && /published/.test(r));
    assert.ok(order.length >= 2 && order[0].includes('while-paused') && order[1].includes(event), order.join('\n'));
  });

  test('hostile channel data and event names are shown as text, never run', async () => {
    const channel = uniq('xss-');
    const listener = await clients.connected();
    await subscribed(listener, channel);
    const event = '<img src=x onerror="window.__pwned=1">';
    await sdk.trigger(channel, event, '<script>window.__pwned=2</script>');
    await page.waitForFunction(
      (event) => [...document.querySelectorAll('#log tbody tr')].some((tr) => tr.cells[3]?.textContent === event),
      { timeout: 2000 },
      event,
    );
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.equal(await page.$('#log img'), null);
  });

  test('the test-event form publishes to the channel and presence members show', async () => {
    const channel = uniq('presence-room-');
    const member = await clients.connected({ sdk, presence: () => ({ user_id: 'ada', user_info: { name: 'Ada' } }) });
    const { channel: ch } = await subscribed(member, channel);
    const heard = waitFor(ch, 'console-test');
    for (const [sel, value] of [
      ['#test-channel', channel],
      ['#test-event', 'console-test'],
      ['#test-data', '{"from":"console"}'],
    ]) {
      await page.$eval(sel, (e) => (e.value = ''));
      await page.type(sel, value);
    }
    await page.click('#test-send');
    assert.deepEqual(await heard, { from: 'console' });
    await page.waitForFunction(() => /^Sent console-test on /.test(document.getElementById('test-result').textContent), { timeout: 2000 });

    // The channel list (polled) shows the presence channel; a click shows its members.
    const rowHandle = await page.waitForFunction(
      (name) => [...document.querySelectorAll('#channels tbody tr')].find((tr) => tr.cells[0].textContent.startsWith(name)),
      { timeout: 5000 },
      channel,
    );
    await rowHandle.asElement().click();
    await page.waitForSelector('#members-table tbody tr td', { timeout: 5000 });
    const members = await rows(page, '#members-table');
    assert.equal(members.length, 1);
    assert.match(members[0], /ada\s+\{"name":"Ada"\}/);
    await page.screenshot({ path: join(ARTIFACTS, 'console-app.png'), fullPage: true });
  });

  test('with the file store the write controls are off, say why, and a forced create shows the 409', async () => {
    const plain = await startWithEnv({ HERALD_ADMIN__TOKEN: TOKEN });
    bases.push(plain.base);
    const ro = await browser.newPage();
    const refused = [];
    try {
      await ro.setViewport({ width: 1366, height: 768 });
      ro.on('request', (r) => requests.push(r.url()));
      ro.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
      ro.on('response', (r) => r.status() >= 400 && refused.push(`${r.request().method()} ${r.url().slice(plain.base.length)} ${r.status()}`));
      await signIn(ro, plain.base);
      await ro.waitForSelector('#nodes tbody tr td', { timeout: 5000 });
      await ro.evaluate(() => (location.hash = '#/apps'));
      await ro.waitForSelector(`#apps tbody tr[data-app="${APP.id}"]`, { timeout: 5000 });
      assert.equal(await ro.$eval('#new-app', (b) => b.disabled), true);
      assert.match(await ro.$eval('#read-only', (e) => e.textContent), /read-only/i);
      const buttons = await ro.$$eval(`#apps tr[data-app="${APP.id}"] button`, (bs) => bs.map((b) => [b.textContent, b.disabled, b.title]));
      assert.equal(buttons.length, 4);
      for (const [label, disabled, title] of buttons) {
        assert.ok(disabled, label);
        assert.match(title, /read-only/, label);
      }
      await ro.screenshot({ path: join(ARTIFACTS, 'console-apps-read-only.png'), fullPage: true });
      // Forced through anyway, the API's 409 is shown.
      await ro.$eval('#new-app', (b) => {
        b.disabled = false;
        b.click();
      });
      await ro.type('#create-id', 'console-made');
      await ro.click('#create-submit');
      await ro.waitForSelector('#create-error:not([hidden])', { timeout: 5000 });
      assert.match(await ro.$eval('#create-error', (e) => e.textContent), /\(409\)/);
      assert.deepEqual(refused, ['POST /admin/api/apps 409']);
    } finally {
      await ro.close();
      await plain.stop();
    }
  });

  test(
    'apps page: create, rotate, edit, disable and delete an app from the page',
    async () => {
      await page.evaluate(() => (location.hash = '#/apps'));
      await page.waitForSelector(`#apps tbody tr[data-app="${APP.id}"]`, { timeout: 5000 });
      await page.screenshot({ path: join(ARTIFACTS, 'console-apps.png'), fullPage: true });
      await page.click('#new-app');
      await page.type('#create-id', 'console-made');
      await page.click('#create-submit');
      await page.waitForSelector('#secret-value', { timeout: 5000 });
      const secret = await page.$eval('#secret-value', (e) => e.textContent);
      assert.match(secret, /^[0-9a-f]{32}$/);
      await page.screenshot({ path: join(ARTIFACTS, 'console-app-created.png') });
      await page.keyboard.press('Escape');
      const row = 'tr[data-app="console-made"]';
      await page.waitForSelector(`#apps tbody ${row}`, { timeout: 5000 });
      // The API has it, without its secret.
      const get = async () => {
        const res = await fetch(`${server.base}/admin/api/apps/console-made`, { headers: { Authorization: `Bearer ${TOKEN}` } });
        return { status: res.status, app: await res.json() };
      };
      let { status, app } = await get();
      assert.equal(status, 200);
      assert.equal(app.id, 'console-made');
      assert.equal(app.secret, undefined);

      // Rotate (confirmed): a new secret, shown once.
      await page.click(`${row} button::-p-text(Rotate secret)`);
      await page.click('.modal .btn-danger');
      await page.waitForSelector('#secret-value', { timeout: 5000 });
      const rotated = await page.$eval('#secret-value', (e) => e.textContent);
      assert.match(rotated, /^[0-9a-f]{32}$/);
      assert.notEqual(rotated, secret);
      await page.keyboard.press('Escape');

      // Edit a limit, then disable (confirmed).
      await page.click(`${row} button::-p-text(Edit)`);
      await page.$eval('#edit-max-connections', (e) => (e.value = ''));
      await page.type('#edit-max-connections', '10');
      await page.click('#edit-form button[type=submit]');
      await page.waitForFunction(() => !document.querySelector('.modal'), { timeout: 5000 });
      ({ app } = await get());
      assert.equal(app.max_connections, 10);
      await page.click(`${row} button::-p-text(Disable)`);
      await page.click('.modal .btn-danger');
      await page.waitForSelector(`${row} .pill-gray`, { timeout: 5000 });
      ({ app } = await get());
      assert.equal(app.enabled, false);

      // Delete (confirmed).
      await page.click(`${row} button::-p-text(Delete)`);
      await page.click('.modal .btn-danger');
      await page.waitForFunction((sel) => !document.querySelector(sel), { timeout: 5000 }, `#apps ${row}`);
      ({ status } = await get());
      assert.equal(status, 404);
  },
  );

  test('a flood is sampled, and the log keeps at most 500 rows', async () => {
    await page.evaluate((id) => (location.hash = `#/apps/${id}`), APP.id);
    await page.waitForSelector('#log-status.ok', { timeout: 5000 });
    const channel = uniq('flood-');
    const listener = await clients.connected();
    await subscribed(listener, channel);
    // 2000 events in batches of 10, as fast as the node takes them: more than the stream
    // carries per second.
    const batches = Array.from({ length: 200 }, (_, b) =>
      Array.from({ length: 10 }, (_, i) => ({ channel, name: 'flood', data: String(b * 10 + i) })),
    );
    for (let i = 0; i < batches.length; i += 20) {
      await Promise.all(batches.slice(i, i + 20).map((batch) => sdk.triggerBatch(batch)));
    }
    await page.waitForSelector('#log-sampled:not([hidden])', { timeout: 5000 });
    assert.match(await page.$eval('#log-sampled', (e) => e.textContent), /Sampled/);
    const count = await page.$$eval('#log tbody tr', (trs) => trs.length);
    assert.ok(count <= 500, `${count} rows`);
  });

  test('is usable on a phone', async () => {
    const phone = await browser.newPage();
    try {
      await phone.setViewport({ width: 390, height: 844, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
      phone.on('request', (r) => requests.push(r.url()));
      await signIn(phone, server.base);
      await phone.waitForFunction(() => document.querySelectorAll('.chart svg').length === 2, { timeout: 5000 });
      await phone.waitForSelector('#nodes tbody tr td', { timeout: 5000 });
      // Nothing but the tables (which scroll inside their card) is wider than the screen.
      const wide = await phone.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(wide <= 390, `the page is ${wide} px wide`);
      await phone.screenshot({ path: join(ARTIFACTS, 'console-overview-phone.png'), fullPage: true });
    } finally {
      await phone.close();
    }
  });

  test('no request left the node, and nothing broke the CSP', () => {
    assert.ok(requests.length > 0);
    const off = requests.filter((u) => !bases.some((b) => u.startsWith(`${b}/`)) && !u.startsWith('data:'));
    assert.deepEqual(off, []);
    assert.deepEqual(problems, []);
    // The only refusal on the main page: the wrong token.
    assert.deepEqual(failed, ['GET /admin/api/nodes 401']);
    assert.ok(existsSync(join(ARTIFACTS, 'console-overview.png')));
  });
});
