// 12. permessage-deflate with Node's `ws`: a client offering it (ws's default offer, the same as
// Chromium's) and one without it, on one channel, receive the same events; what the deflate
// client sends compressed (client events included) is inflated and delivered.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import WebSocket from 'ws';

import { APP, serverSdk, startServer, uniq, withTimeout } from '../lib/harness.mjs';

/** A raw Pusher client over `ws`, with every message it received. */
async function connect(server, perMessageDeflate) {
  const url = `ws://127.0.0.1:${server.port}/app/${APP.key}?protocol=7&client=node-ws&version=8`;
  const ws = new WebSocket(url, { perMessageDeflate });
  let answer = '';
  ws.once('upgrade', (res) => (answer = res.headers['sec-websocket-extensions'] ?? ''));
  const messages = [];
  const waiters = [];
  ws.on('message', (data) => {
    const msg = JSON.parse(data.toString());
    messages.push(msg);
    for (const w of [...waiters]) {
      if (w.pred(msg)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(msg);
      }
    }
  });
  const client = {
    ws,
    messages,
    next(pred, what) {
      const seen = messages.find(pred);
      if (seen) {
        messages.splice(messages.indexOf(seen), 1);
        return Promise.resolve(seen);
      }
      return withTimeout(
        new Promise((resolve) => waiters.push({ pred, resolve })),
        5000,
        what,
      ).then((m) => {
        messages.splice(messages.indexOf(m), 1);
        return m;
      });
    },
    send(msg) {
      ws.send(JSON.stringify(msg));
    },
  };
  const established = await client.next((m) => m.event === 'pusher:connection_established', 'connection_established');
  client.socketId = JSON.parse(established.data).socket_id;
  client.answer = answer;
  return client;
}

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

describe('permessage-deflate (Node ws)', () => {
  let server;
  let sdk;
  const sockets = [];

  before(async () => {
    server = await startServer();
    sdk = serverSdk(server);
  });
  after(async () => {
    for (const s of sockets) s.ws.terminate();
    await server?.stop();
  });

  test('ws clients with and without deflate on one channel receive the same events', async () => {
    // threshold 0: the client compresses everything it sends, as browsers do.
    const deflated = await connect(server, { threshold: 0 });
    const plain = await connect(server, false);
    sockets.push(deflated, plain);
    assert.equal(deflated.ws.extensions, 'permessage-deflate');
    assert.equal(
      deflated.answer,
      'permessage-deflate; server_no_context_takeover; client_no_context_takeover',
    );
    assert.equal(plain.ws.extensions, '');
    assert.equal(plain.answer, '');

    const channel = uniq('deflate-');
    for (const c of [deflated, plain]) {
      c.send({ event: 'pusher:subscribe', data: { channel } });
      await c.next((m) => m.event === 'pusher_internal:subscription_succeeded', 'subscribed');
    }
    const events = [order(1), { tiny: true }, order(2), 'x'.repeat(5000)];
    for (const [i, data] of events.entries()) {
      await sdk.trigger(channel, `e${i}`, data);
    }
    const got = async (c) => {
      const out = [];
      for (let i = 0; i < events.length; i++) {
        out.push(await c.next((m) => m.event === `e${i}`, `e${i}`));
      }
      return out;
    };
    const [a, b] = await Promise.all([got(deflated), got(plain)]);
    assert.deepEqual(a, b);
    assert.deepEqual(JSON.parse(a[0].data), events[0]);
    assert.equal(a[3].data, events[3]);
  });

  test('compressed client messages are inflated: ping, and a client event to a plain peer', async () => {
    const deflated = await connect(server, { threshold: 0 });
    const plain = await connect(server, false);
    sockets.push(deflated, plain);
    deflated.send({ event: 'pusher:ping', data: {} });
    await deflated.next((m) => m.event === 'pusher:pong', 'pong');

    const channel = uniq('private-deflate-');
    for (const c of [deflated, plain]) {
      const { auth } = sdk.authorizeChannel(c.socketId, channel);
      c.send({ event: 'pusher:subscribe', data: { channel, auth } });
      await c.next((m) => m.event === 'pusher_internal:subscription_succeeded', 'subscribed');
    }
    const data = order(3);
    deflated.send({ event: 'client-moved', channel, data });
    const heard = await plain.next((m) => m.event === 'client-moved', 'client event');
    assert.deepEqual(typeof heard.data === 'string' ? JSON.parse(heard.data) : heard.data, data);
  });
});
