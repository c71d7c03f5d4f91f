// 17. A real browser through a drain: headless Chromium (Debian's `chromium`, driven by
// puppeteer-core) runs the pusher-js web build on a public channel, without sign-in, so only the
// resume cookie that herald set on its first handshake identifies it. It connects through the
// round-robin balancer that follows /ready (lib/balancer.mjs) to one of two nodes on one Redis;
// events are published every 50 ms; that node is drained with SIGTERM. The browser reconnects
// (through the balancer, to the other node: held 500 ms on the way, as on a slow network, so
// events are certainly published while it is away) and receives every event that got a 200
// since it subscribed, in publish order, exactly once. A control run deletes the cookie before
// the drain: the browser then misses those events (nothing else identifies it). Screenshots of
// the page go to artifacts/17-browser-drain-*.png.
import http from 'node:http';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import puppeteer from 'puppeteer-core';

import { APP, serverSdk, startServer, uniq, withTimeout } from '../lib/harness.mjs';
import { CLUSTER, eventually, startRedis } from '../lib/cluster.mjs';
import { startBalancer } from '../lib/balancer.mjs';

const require = createRequire(import.meta.url);
const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), '..', 'artifacts');
// scripts/test installs Debian's chromium; without it this suite fails rather than skips.
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const EVERY_MS = 50;
const RECONNECT_HOLD_MS = 500;
const DRAIN_ENV = { HERALD_DRAIN__DELAY: '300ms', HERALD_DRAIN__WINDOW: '200ms', HERALD_DRAIN__DEADLINE: '3s' };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

describe('headless Chromium on a public channel through a drain (the resume cookie)', () => {
  let redis;
  let nodes = [];
  let balancer;
  let browser;
  let page;

  before(async () => {
    redis = await startRedis();
    for (let i = 0; i < 2; i++) {
      nodes.push(await startServer({ cluster: CLUSTER }, { redisUrl: redis.url, env: DRAIN_ENV }));
    }
    balancer = await startBalancer(nodes.map((n) => ({ port: n.port })));
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    });
    page = await browser.newPage();
    await page.setViewport({ width: 900, height: 640 });
  });
  after(async () => {
    await browser?.close();
    await balancer?.close();
    for (const n of nodes) await n?.stop();
    await redis?.stop();
  });

  /**
   * Connects pusher-js in the page through the balancer on a fresh public channel, publishes
   * every 50 ms through the other node, drains the browser's node (SIGTERM; the node is started
   * again on its port afterwards) with the reconnect held 500 ms, and returns what the page got.
   * `beforeDrain(page)` runs just before the SIGTERM.
   */
  async function throughDrain(name, beforeDrain = async () => {}) {
    const channel = uniq('browser-drain-');
    // A page on the loopback origin (Chromium keeps public pages off loopback), served by a node.
    await page.goto(`${nodes[1].base}/up`);
    await page.addScriptTag({ path: require.resolve('pusher-js/dist/web/pusher.js') });
    const before = [...balancer.stats.perBackend];
    await page.evaluate(
      (key, port, channel) =>
        new Promise((resolve, reject) => {
          window.seqs = [];
          window.states = [];
          window.subscribed = [];
          window.failed = [];
          window.pusher = new window.Pusher(key, {
            wsHost: '127.0.0.1',
            wsPort: port,
            forceTLS: false,
            enabledTransports: ['ws'],
            cluster: 'mt1',
            disableStats: true,
          });
          window.pusher.connection.bind('state_change', ({ current }) => window.states.push({ t: Date.now(), current }));
          const ch = window.pusher.subscribe(channel);
          ch.bind('seq', (data) => window.seqs.push(data.seq));
          ch.bind('herald:resume_failed', (data) => window.failed.push(data));
          ch.bind('pusher:subscription_succeeded', () => {
            window.subscribed.push(Date.now());
            resolve();
          });
          setTimeout(() => reject(new Error('no subscription_succeeded')), 5000);
        }),
      APP.key,
      balancer.port,
      channel,
    );
    const first = balancer.stats.perBackend.findIndex((n, i) => n > before[i]);
    assert.ok(first >= 0, 'the browser connected through the balancer');
    const other = 1 - first;
    const cookies = await page.cookies(`http://127.0.0.1:${balancer.port}/`);
    assert.ok(
      cookies.some((c) => c.name === `herald_resume_${APP.key}` && c.httpOnly),
      `herald set its HttpOnly resume cookie: ${JSON.stringify(cookies.map((c) => c.name))}`,
    );

    // Publishing through the node that stays, one event every 50 ms, each after its answer.
    const sdk = serverSdk(nodes[other], { agent: new http.Agent({ keepAlive: false }), timeout: 5000 });
    const publishes = [];
    let stopping = false;
    const publisher = (async () => {
      let seq = 0;
      while (!stopping) {
        const p = { seq: seq++, t0: Date.now(), status: null };
        publishes.push(p);
        try {
          p.status = (await sdk.trigger(channel, 'seq', { seq: p.seq })).status;
        } catch (err) {
          p.status = err.status ?? 'error';
        }
        // The publishing rate (pacing, not synchronisation).
        await sleep(Math.max(0, p.t0 + EVERY_MS - Date.now()));
      }
    })();
    try {
      await eventually(async () => (await page.evaluate(() => window.seqs.length)) >= 10, 10_000, 'the browser to get 10 events');

      // Drain the browser's node; its reconnect is held on the way.
      await beforeDrain(page);
      balancer.delayNew(RECONNECT_HOLD_MS);
      const exit = await withTimeout(nodes[first].kill('SIGTERM'), 15_000, 'the drained node to exit');
      assert.deepEqual(exit, { code: 0, sig: null });
      await page.waitForFunction(() => window.subscribed.length >= 2, { timeout: 10_000 });
      balancer.delayNew(0);
      assert.ok(balancer.stats.perBackend[other] > before[other], 'the browser reconnected to the other node');
      const back = await page.evaluate(() => window.subscribed[1]);
      await eventually(
        () => publishes.filter((p) => p.t0 > back && p.status === 200).length >= 10,
        10_000,
        '10 more accepted events',
      );
    } finally {
      stopping = true;
      await publisher;
      balancer.delayNew(0);
    }

    const accepted = publishes.filter((p) => p.status === 200).map((p) => p.seq);
    const last = accepted.at(-1);
    await page.waitForFunction((last) => window.seqs.includes(last), { timeout: 10_000 }, last);
    const { seqs: got, states, failed, subscribed } = await page.evaluate(() => ({
      seqs: window.seqs,
      states: window.states,
      failed: window.failed,
      subscribed: window.subscribed,
    }));
    // Away: from the 4200 (pusher-js leaves `connected`) to the subscription on the other node.
    const down = states.find((s, i) => i > 0 && s.current !== 'connected' && s.t >= subscribed[0]).t;
    const expected = publishes.filter((p) => p.status === 200 && p.t0 >= subscribed[0]).map((p) => p.seq);
    const away = publishes.filter((p) => p.status === 200 && p.t0 >= down && p.t0 < subscribed[1]).map((p) => p.seq);
    const gotSet = new Set(got);
    const summary = {
      channel,
      got: got.length,
      expected: expected.length,
      away: away.length,
      replayed: away.filter((s) => gotSet.has(s)).length,
      ordered: got.every((s, i) => i === 0 || s > got[i - 1]),
      failed: failed.length,
      states: states.map((s) => s.current).join(' → '),
      tail: got.join(' '),
    };
    await page.evaluate((name, summary) => {
      document.body.innerHTML = `
        <div style="font: 16px system-ui, sans-serif; padding: 24px">
          <h2>herald: pusher-js in Chromium through a drain (${name})</h2>
          <p>public channel <code>${summary.channel}</code>, no sign-in: only the resume cookie identifies the browser</p>
          <table style="border-collapse: collapse" border="1" cellpadding="6">
            <tr><td>events received</td><td>${summary.got}</td></tr>
            <tr><td>accepted since subscribing</td><td>${summary.expected}</td></tr>
            <tr><td>accepted while away (4200 to resubscribed)</td><td>${summary.away}</td></tr>
            <tr><td>of those, received (replayed)</td><td>${summary.replayed}</td></tr>
            <tr><td>in order, no duplicates</td><td>${summary.ordered}</td></tr>
            <tr><td>herald:resume_failed</td><td>${summary.failed}</td></tr>
            <tr><td>connection states</td><td>${summary.states}</td></tr>
          </table>
          <p style="word-break: break-all; font-size: 12px">${summary.tail}</p>
        </div>`;
    }, name, summary);
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, `17-browser-drain-${name}.png`) });
    const { tail, ...rest } = summary;
    console.log(`browser (${name}):`, JSON.stringify(rest));

    // The drained node comes back on its port for the next scenario.
    nodes[first] = await startServer({ cluster: CLUSTER }, { redisUrl: redis.url, env: DRAIN_ENV, port: nodes[first].port });
    await eventually(() => balancer.ready().every(Boolean), 10_000, 'both nodes ready again');
    return { got, expected, away, accepted, failed };
  }

  test('the drained browser gets every accepted event exactly once, in order, on the other node', async () => {
    const { got, expected, away, accepted, failed } = await throughDrain('cookie');
    assert.deepEqual(failed, [], 'no resume failed');
    assert.ok(away.length >= 3, `events were accepted while the browser was away (${away.length})`);
    const from = got.indexOf(expected[0]);
    assert.deepEqual(got.slice(from), expected, 'every accepted event since subscribing, in order, once');
    assert.deepEqual(
      got.filter((s) => !accepted.includes(s)),
      [],
      'nothing that was not accepted',
    );
  });

  test('control: the same browser without its cookie misses what was published while it was away', async () => {
    const { got, away } = await throughDrain('no-cookie', async (page) => {
      for (const c of await page.cookies(`http://127.0.0.1:${balancer.port}/`)) await page.deleteCookie(c);
    });
    assert.ok(away.length >= 3, `events were accepted while the browser was away (${away.length})`);
    assert.ok(
      away.some((s) => !got.includes(s)),
      'without the cookie nothing identifies a browser on a public channel: no replay',
    );
    assert.ok(got.every((s, i) => i === 0 || s > got[i - 1]), 'in order, no duplicates');
  });
});
