// 4. Client events: pusher-js channel.trigger and Laravel Echo whisper.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { Clients, collect, serverSdk, startServer, subscribed, uniq, waitFor } from '../lib/harness.mjs';
import { echoFor, echoNext, echoSubscribed } from '../lib/echo.mjs';

describe('client events', () => {
  let server;
  let clients;
  let sdk;

  before(async () => {
    server = await startServer({ apps: [{ client_events: true, max_client_events_per_second: 10 }] });
    clients = new Clients(server);
    sdk = serverSdk(server);
  });
  after(async () => {
    clients?.closeAll();
    await server?.stop();
  });

  const as = (id, info = { name: id }) => ({ sdk, presence: () => ({ user_id: id, user_info: info }) });

  /** Wait until `pusherChannel` receives an SDK-triggered marker event (ordering barrier). */
  async function barrier(pusherChannel) {
    const ev = `barrier-${Math.random().toString(36).slice(2)}`;
    const got = waitFor(pusherChannel, ev);
    await sdk.trigger(pusherChannel.name, ev, {});
    await got;
  }

  test('Echo whisper on a private channel reaches others and is not echoed to the sender', async () => {
    const room = uniq('room-');
    const pa = await clients.connected({ sdk });
    const pb = await clients.connected({ sdk });
    const ea = echoFor(pa);
    const eb = echoFor(pb);
    const chA = ea.private(room);
    const chB = eb.private(room);
    await echoSubscribed(chA);
    await echoSubscribed(chB);

    const echoedToSender = [];
    chA.listenForWhisper('typing', (d) => echoedToSender.push(d));
    const gotB = echoNext((cb) => chB.listenForWhisper('typing', cb), 5000, 'whisper at B');
    chA.whisper('typing', { name: 'Ann ✓', n: 1 });
    const [data] = await gotB;
    assert.deepEqual(data, { name: 'Ann ✓', n: 1 });

    await barrier(pa.channel(`private-${room}`));
    assert.deepEqual(echoedToSender, [], 'client event must not be echoed back to its sender');
  });

  test('pusher-js client event on a presence channel carries the sender user_id', async () => {
    const name = uniq('presence-ce-');
    const a = await clients.connected(as('alice'));
    const b = await clients.connected(as('bob'));
    const { channel: ca } = await subscribed(a, name);
    const { channel: cb } = await subscribed(b, name);
    const got = new Promise((res) => cb.bind('client-hello', (data, meta) => res({ data, meta })));
    const raw = waitFor(b.connection, 'message', 5000, (m) => m.event === 'client-hello');
    assert.equal(ca.trigger('client-hello', { text: 'hi 👋' }), true);
    const { data, meta } = await got;
    assert.deepEqual(data, { text: 'hi 👋' });
    assert.deepEqual(meta, { user_id: 'alice' });
    const frame = await raw;
    assert.equal(frame.user_id, 'alice');
    assert.equal(frame.channel, name);
  });

  test('Echo presence: here / joining / leaving and whisper with user_id', async () => {
    const room = uniq('lobby-');
    const pa = await clients.connected(as('alice', { name: 'Alice' }));
    const pb = await clients.connected(as('bob', { name: 'Bob' }));
    const ea = echoFor(pa);
    const eb = echoFor(pb);

    const chA = ea.join(room);
    const [hereA] = await echoNext((cb) => chA.here(cb), 5000, 'here (alice)');
    assert.deepEqual(hereA, [{ name: 'Alice' }]);

    const joining = echoNext((cb) => chA.joining(cb), 5000, 'joining');
    const chB = eb.join(room);
    const [hereB] = await echoNext((cb) => chB.here(cb), 5000, 'here (bob)');
    assert.deepEqual(
      hereB.map((m) => m.name).sort(),
      ['Alice', 'Bob'],
    );
    assert.deepEqual((await joining)[0], { name: 'Bob' });

    const whisper = echoNext((cb) => chA.listenForWhisper('wave', cb), 5000, 'whisper at alice');
    chB.whisper('wave', { from: 'bob' });
    const [data, meta] = await whisper;
    assert.deepEqual(data, { from: 'bob' });
    assert.deepEqual(meta, { user_id: 'bob' });

    const leaving = echoNext((cb) => chA.leaving(cb), 5000, 'leaving');
    eb.leave(room);
    assert.deepEqual((await leaving)[0], { name: 'Bob' });
  });

  test('client event on a public channel is rejected with pusher:error and not delivered', async () => {
    const name = uniq('public-ce-');
    const a = await clients.connected();
    const b = await clients.connected();
    const { channel: ca } = await subscribed(a, name);
    const { channel: cb } = await subscribed(b, name);
    const delivered = [];
    cb.bind('client-nope', (d) => delivered.push(d));
    const err = waitFor(a.connection, 'error', 5000, (e) => e?.type === 'PusherError');
    ca.trigger('client-nope', { x: 1 });
    const e = await err;
    assert.equal(typeof e.data?.code, 'number', `pusher:error should carry a code: ${JSON.stringify(e)}`);
    await barrier(cb);
    assert.deepEqual(delivered, []);
    assert.equal(a.connection.state, 'connected', 'a rejected client event must not close the socket');
  });

  test('client event to a private channel the sender is not subscribed to is rejected', async () => {
    const name = uniq('private-notsub-');
    const a = await clients.connected({ sdk });
    const b = await clients.connected({ sdk });
    const { channel: cb } = await subscribed(b, name);
    const delivered = [];
    cb.bind('client-sneak', (d) => delivered.push(d));
    const err = waitFor(a.connection, 'error', 5000, (e) => e?.type === 'PusherError');
    // Send the raw frame: a is not subscribed, so pusher-js has no channel object.
    a.send_event('client-sneak', { x: 1 }, name);
    await err;
    await barrier(cb);
    assert.deepEqual(delivered, []);
    assert.equal(a.connection.state, 'connected');
  });

  test('client event rate limit: excess events rejected with pusher:error 4301, socket stays open', async () => {
    const name = uniq('private-rate-');
    const a = await clients.connected({ sdk });
    const b = await clients.connected({ sdk });
    const { channel: ca } = await subscribed(a, name);
    const { channel: cb } = await subscribed(b, name);
    const received = collect(cb, 'client-burst');
    const errors = collect(a.connection, 'error');
    for (let i = 0; i < 25; i++) ca.trigger('client-burst', { i });
    const [first] = await errors.atLeast(1);
    assert.equal(first.data.type, 'PusherError');
    assert.equal(first.data.data.code, 4301);
    await barrier(cb);
    assert.ok(received.items.length >= 1, 'events under the limit are delivered');
    assert.ok(received.items.length <= 20, `at most ~10/s may pass, got ${received.items.length}`);
    assert.equal(a.connection.state, 'connected', '4301 is an event, never a close');
  });
});

describe('client events disabled for the app', () => {
  let server;
  let clients;
  let sdk;

  before(async () => {
    server = await startServer({ apps: [{ client_events: false }] });
    clients = new Clients(server);
    sdk = serverSdk(server);
  });
  after(async () => {
    clients?.closeAll();
    await server?.stop();
  });

  test('whisper is rejected with pusher:error 4301 and not delivered', async () => {
    const name = uniq('private-disabled-');
    const a = await clients.connected({ sdk });
    const b = await clients.connected({ sdk });
    const { channel: ca } = await subscribed(a, name);
    const { channel: cb } = await subscribed(b, name);
    const delivered = [];
    cb.bind('client-x', (d) => delivered.push(d));
    const err = waitFor(a.connection, 'error', 5000, (e) => e?.type === 'PusherError');
    ca.trigger('client-x', { x: 1 });
    assert.equal((await err).data.code, 4301);
    const mark = waitFor(cb, 'mark');
    await sdk.trigger(name, 'mark', {});
    await mark;
    assert.deepEqual(delivered, []);
    assert.equal(a.connection.state, 'connected');
  });
});
