// 1. Connection handshake with the real pusher-js client.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { Clients, startServer, waitFor } from '../lib/harness.mjs';

describe('connection', () => {
  let server;
  let clients;

  before(async () => {
    server = await startServer();
    clients = new Clients(server);
  });
  after(async () => {
    clients?.closeAll();
    await server?.stop();
  });

  test('pusher-js connects: connection_established, socket_id format, state connected', async () => {
    const c = clients.pusher();
    // pusher-js starts connecting synchronously in its constructor.
    assert.equal(c.connection.state, 'connecting');
    const states = [];
    c.connection.bind('state_change', ({ current }) => states.push(current));
    const ev = await waitFor(c.connection, 'connected', 5000);
    assert.match(ev.socket_id, /^\d+\.\d+$/);
    assert.equal(c.connection.socket_id, ev.socket_id);
    assert.equal(c.connection.state, 'connected');
    assert.deepEqual(states, ['connected']);
    // activity_timeout from the handshake (30s default) is honoured: the
    // client's activity timeout is min(120s client default, server value).
    assert.ok(c.connection.activityTimeout > 0 && c.connection.activityTimeout <= 120000);
  });

  test('two connections get distinct socket ids', async () => {
    const a = await clients.connected();
    const b = await clients.connected();
    assert.notEqual(a.connection.socket_id, b.connection.socket_id);
  });

  test('unknown app key: error 4001, connection ends disconnected/failed, no reconnect', async () => {
    const c = clients.pusher({ key: 'no-such-key' });
    const states = [];
    c.connection.bind('state_change', ({ current }) => states.push(current));
    const err = await waitFor(c.connection, 'error', 5000);
    // pusher-js wraps the handshake error: { type: 'WebSocketError', error: { type: 'PusherError', data: { code } } }
    const code = err?.error?.data?.code ?? err?.data?.code;
    assert.equal(code, 4001, `error event: ${JSON.stringify(err)}`);
    if (!['disconnected', 'failed'].includes(c.connection.state)) {
      await waitFor(c.connection, 'state_change', 5000, ({ current }) =>
        ['disconnected', 'failed'].includes(current),
      );
    }
    assert.ok(['disconnected', 'failed'].includes(c.connection.state), c.connection.state);
    // pusher-js treats 4001 as "refused": it must not try again. Watch for
    // longer than pusher-js's 1 s backoff to see that no reconnect happens.
    const reconnect = waitFor(c.connection, 'state_change', 2500, ({ current }) => current === 'connecting');
    await assert.rejects(reconnect, /timed out/);
    assert.ok(!states.includes('connected'), `states: ${states}`);
    assert.ok(!states.includes('connecting'), `reconnected; states: ${states}`);
  });
});

describe('liveness with a short activity_timeout', () => {
  let server;
  let clients;

  before(async () => {
    server = await startServer({ top: { activity_timeout: '1s', pong_timeout: '2s' } });
    clients = new Clients(server);
  });
  after(async () => {
    clients?.closeAll();
    await server?.stop();
  });

  test('handshake activity_timeout is used by pusher-js; its pings get pongs and the socket stays up', async () => {
    const c = await clients.connected();
    assert.equal(c.connection.activityTimeout, 1000, 'min(120 s, server activity_timeout 1 s)');
    const changes = [];
    c.connection.bind('state_change', ({ current }) => changes.push(current));
    let pongs = 0;
    const threePongs = waitFor(c.connection, 'message', 8000, (m) => m.event === 'pusher:pong' && ++pongs === 3);
    await threePongs;
    assert.equal(c.connection.state, 'connected');
    assert.deepEqual(changes, [], 'no disconnect/reconnect while pings are answered');
  });
});
