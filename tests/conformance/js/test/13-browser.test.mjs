// 13. Headless Chromium (Debian's `chromium`, driven by puppeteer-core; no browser is downloaded)
// running the pusher-js web build: the browser's own WebSocket negotiates permessage-deflate
// (read from the handshake response), events of every channel type arrive intact, and a client
// event the browser sends (compressed, as browsers compress every message) reaches a Node
// pusher-js client that negotiated nothing.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

import puppeteer from 'puppeteer-core';

import { APP, Clients, serverSdk, startServer, subscribed, uniq, waitFor } from '../lib/harness.mjs';

const require = createRequire(import.meta.url);
// scripts/test installs Debian's chromium; without it this suite fails rather than skips.
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const ANSWER = 'permessage-deflate; server_no_context_takeover; client_no_context_takeover';

/** A model with its relations, as a Laravel broadcast carries it (about 1 KB). */
function order(n) {
  return {
    order: {
      id: n,
      status: 'shipped',
      total: '119.94',
      user: { id: 7, name: 'Ada Lovelace', email: 'ada@example.com' },
      items: Array.from({ length: 6 }, (_, i) => ({
        id: 1000 + i,
        product_id: 300 + i,
        name: `Product ${i}`,
        quantity: i + 1,
        unit_price: '19.99',
        created_at: '2026-01-05T10:00:00.000000Z',
      })),
    },
  };
}

function header(headers, name) {
  const key = Object.keys(headers).find((k) => k.toLowerCase() === name);
  return key === undefined ? undefined : headers[key];
}

describe('headless Chromium with the pusher-js web build', () => {
  let server;
  let sdk;
  let clients;
  let browser;
  let page;
  const handshakes = [];

  before(async () => {
    server = await startServer();
    sdk = serverSdk(server);
    clients = new Clients(server);
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    });
    page = await browser.newPage();
    const cdp = await page.createCDPSession();
    await cdp.send('Network.enable');
    cdp.on('Network.webSocketWillSendHandshakeRequest', (e) => handshakes.push({ request: e.request.headers }));
    cdp.on('Network.webSocketHandshakeResponseReceived', (e) => handshakes.push({ response: e.response.headers }));
    // A page on the loopback origin: Chromium blocks a public page (about:blank counts) from
    // reaching loopback (Local Network Access).
    await page.goto(`${server.base}/up`);
    await page.addScriptTag({ path: require.resolve('pusher-js/dist/web/pusher.js') });
    await page.exposeFunction('authorizeChannel', (socketId, channel) =>
      channel.startsWith('presence-')
        ? sdk.authorizeChannel(socketId, channel, { user_id: 'browser', user_info: { name: 'Chromium' } })
        : sdk.authorizeChannel(socketId, channel),
    );
    await page.evaluate(
      (key, port) =>
        new Promise((resolve, reject) => {
          window.received = [];
          window.pusher = new window.Pusher(key, {
            wsHost: '127.0.0.1',
            wsPort: port,
            forceTLS: false,
            enabledTransports: ['ws'],
            cluster: 'mt1',
            channelAuthorization: {
              customHandler: ({ socketId, channelName }, cb) =>
                window.authorizeChannel(socketId, channelName).then(
                  (auth) => cb(null, auth),
                  (err) => cb(err, null),
                ),
            },
          });
          window.pusher.connection.bind('connected', resolve);
          setTimeout(() => reject(new Error('pusher-js did not connect')), 5000);
        }),
      APP.key,
      server.port,
    );
  });
  after(async () => {
    await browser?.close();
    clients?.closeAll();
    await server?.stop();
  });

  test('Chromium offers permessage-deflate and herald accepts it without context takeover', () => {
    const request = handshakes.find((h) => h.request)?.request ?? {};
    const response = handshakes.find((h) => h.response)?.response ?? {};
    assert.match(header(request, 'sec-websocket-extensions') ?? '', /permessage-deflate/);
    assert.equal(header(response, 'sec-websocket-extensions'), ANSWER);
  });

  test('events of every channel type arrive intact', async () => {
    const names = [uniq('pub-'), uniq('private-'), uniq('presence-'), uniq('cache-')];
    await page.evaluate(
      (names) =>
        Promise.all(
          names.map(
            (name) =>
              new Promise((resolve, reject) => {
                const ch = window.pusher.subscribe(name);
                ch.bind('order.shipped', (data) => window.received.push({ channel: name, data }));
                ch.bind('pusher:subscription_succeeded', resolve);
                ch.bind('pusher:subscription_error', (e) => reject(new Error(JSON.stringify(e))));
              }),
          ),
        ),
      names,
    );
    const sent = names.map((_, i) => order(i));
    for (const [i, name] of names.entries()) {
      await sdk.trigger(name, 'order.shipped', sent[i]);
    }
    await page.waitForFunction((n) => window.received.length >= n, { timeout: 5000 }, names.length);
    const received = await page.evaluate(() => window.received);
    for (const [i, name] of names.entries()) {
      const got = received.find((r) => r.channel === name);
      assert.ok(got, `nothing on ${name}`);
      assert.deepEqual(got.data, sent[i], name);
    }
  });

  test('a client event from the browser (compressed) reaches a Node client without deflate', async () => {
    const channel = uniq('private-chat-');
    const node = await clients.connected({ sdk });
    const { channel: ch } = await subscribed(node, channel);
    await page.evaluate(
      (name) =>
        new Promise((resolve) => {
          window.pusher.subscribe(name).bind('pusher:subscription_succeeded', resolve);
        }),
      channel,
    );
    const heard = waitFor(ch, 'client-moved');
    const data = order(99);
    await page.evaluate((name, data) => window.pusher.channel(name).trigger('client-moved', data), channel, data);
    const got = await heard;
    assert.deepEqual(got, data);
  });
});
