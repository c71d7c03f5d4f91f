// 6. Cache channels: pusher:cache_miss on an empty cache, last HTTP event
// replayed to new subscribers right after subscription_succeeded.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { Clients, serverSdk, startServer, subscribed, uniq, waitFor } from '../lib/harness.mjs';

describe('cache channels', () => {
  let server;
  let clients;
  let sdk;

  before(async () => {
    server = await startServer();
    clients = new Clients(server);
    sdk = serverSdk(server);
  });
  after(async () => {
    clients?.closeAll();
    await server?.stop();
  });

  /**
   * Raw frames on `name` for client `c`, recorded from before the subscribe.
   * pusher_internal:subscription_count (this app has it on) is a broadcast
   * unrelated to the cache, so it is left out.
   */
  function record(c, name) {
    const frames = [];
    c.connection.bind(
      'message',
      (m) => m.channel === name && m.event !== 'pusher_internal:subscription_count' && frames.push(m),
    );
    return frames;
  }

  test('empty cache: subscriber gets pusher:cache_miss', async () => {
    const name = uniq('cache-miss-');
    const c = await clients.connected();
    const frames = record(c, name);
    const ch = c.subscribe(name);
    const miss = waitFor(ch, 'pusher:cache_miss');
    await waitFor(ch, 'pusher:subscription_succeeded');
    await miss;
    assert.deepEqual(
      frames.map((f) => f.event),
      ['pusher_internal:subscription_succeeded', 'pusher:cache_miss'],
    );
  });

  test('after SDK triggers, a new subscriber gets the last event right after subscription_succeeded', async () => {
    const name = uniq('cache-hit-');
    const first = await clients.connected();
    const { channel } = await subscribed(first, name);
    const got2 = waitFor(channel, 'ev2');
    await sdk.trigger(name, 'ev1', { n: 1 });
    await sdk.trigger(name, 'ev2', { n: 2, text: 'last ✓' });
    await got2;

    const late = await clients.connected();
    const frames = record(late, name);
    const ch = late.subscribe(name);
    const replay = waitFor(ch, 'ev2');
    await waitFor(ch, 'pusher:subscription_succeeded');
    assert.deepEqual(await replay, { n: 2, text: 'last ✓' });
    assert.deepEqual(
      frames.map((f) => f.event),
      ['pusher_internal:subscription_succeeded', 'ev2'],
      'only the last event is replayed, and no cache_miss',
    );
  });

  test('cache survives the channel becoming empty, and HTTP info=cache reports it', async () => {
    const name = uniq('cache-empty-');
    await sdk.trigger(name, 'stored', { v: 'x' });
    const c = await clients.connected();
    const ch = c.subscribe(name);
    const replay = waitFor(ch, 'stored');
    await waitFor(ch, 'pusher:subscription_succeeded');
    assert.deepEqual(await replay, { v: 'x' });

    const res = await sdk.get({ path: `/channels/${name}`, params: { info: 'cache' } });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.equal(body.occupied, true);
    assert.equal(body.cache?.data, JSON.stringify({ v: 'x' }), JSON.stringify(body));
    assert.equal(typeof body.cache?.ttl, 'number', JSON.stringify(body));
  });

  test('private-cache channel replays to an authorized subscriber; client events are not cached', async () => {
    const name = uniq('private-cache-');
    const a = await clients.connected({ sdk });
    const b = await clients.connected({ sdk });
    const { channel: ca } = await subscribed(a, name);
    const { channel: cb } = await subscribed(b, name);
    const whisper = waitFor(cb, 'client-typing');
    ca.trigger('client-typing', { who: 'a' });
    await whisper;

    // Only a client event so far: still a miss.
    const c = await clients.connected({ sdk });
    const chc = c.subscribe(name);
    const miss = waitFor(chc, 'pusher:cache_miss');
    await waitFor(chc, 'pusher:subscription_succeeded');
    await miss;

    const got = waitFor(cb, 'server-ev');
    await sdk.trigger(name, 'server-ev', { from: 'api' });
    await got;
    const d = await clients.connected({ sdk });
    const chd = d.subscribe(name);
    const replay = waitFor(chd, 'server-ev');
    await waitFor(chd, 'pusher:subscription_succeeded');
    assert.deepEqual(await replay, { from: 'api' });
  });

  test('presence-cache channel replays the last event', async () => {
    const name = uniq('presence-cache-');
    await sdk.trigger(name, 'hello', { p: 1 });
    const c = await clients.connected({ sdk, presence: () => ({ user_id: 'pc', user_info: {} }) });
    const ch = c.subscribe(name);
    const replay = waitFor(ch, 'hello');
    const members = await waitFor(ch, 'pusher:subscription_succeeded');
    assert.equal(members.count, 1);
    assert.deepEqual(await replay, { p: 1 });
  });
});
