// 8. The HTTP API driven through the official `pusher` Node server SDK.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { APP, Clients, PusherServer, collect, serverSdk, startServer, subscribed, uniq, waitFor } from '../lib/harness.mjs';

describe('HTTP API via the Node server SDK', () => {
  let server;
  let clients;
  let sdk;

  before(async () => {
    server = await startServer({ apps: [{ max_message_size: 10240, max_batch_size: 10 }] });
    clients = new Clients(server);
    sdk = serverSdk(server);
  });
  after(async () => {
    clients?.closeAll();
    await server?.stop();
  });

  const as = (id) => ({ sdk, presence: () => ({ user_id: id, user_info: { id } }) });

  /** Expect the SDK call to fail with HTTP `status`; returns the RequestError. */
  async function rejectsWith(promise, status) {
    try {
      const res = await promise;
      assert.fail(`expected HTTP ${status}, got ${res.status}: ${await res.text()}`);
    } catch (e) {
      if (e.name !== 'PusherRequestError') throw e;
      assert.equal(e.status, status, `expected ${status}, got ${e.status} (${e.body ?? e.message})`);
      return e;
    }
  }

  test('trigger to one channel: 200 with a JSON object body, event delivered', async () => {
    const name = uniq('api-one-');
    const c = await clients.connected();
    const { channel } = await subscribed(c, name);
    const got = waitFor(channel, 'one');
    const res = await sdk.trigger(name, 'one', { a: 1 });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /application\/json/);
    const body = await res.json();
    assert.equal(typeof body, 'object');
    assert.ok(body !== null && !Array.isArray(body));
    assert.deepEqual(await got, { a: 1 });
  });

  test('trigger to many channels reaches each, including a 100-channel publish', async () => {
    const names = Array.from({ length: 100 }, () => uniq('api-many-'));
    const a = await clients.connected();
    const b = await clients.connected();
    const { channel: ca } = await subscribed(a, names[0]);
    const { channel: cb } = await subscribed(b, names[99]);
    const ga = waitFor(ca, 'many');
    const gb = waitFor(cb, 'many');
    const res = await sdk.trigger(names, 'many', 'to all ✓');
    assert.equal(res.status, 200);
    assert.equal(await ga, 'to all ✓');
    assert.equal(await gb, 'to all ✓');
  });

  test('socket_id excludes that connection only', async () => {
    const name = uniq('api-excl-');
    const a = await clients.connected();
    const b = await clients.connected();
    const { channel: ca } = await subscribed(a, name);
    const { channel: cb } = await subscribed(b, name);
    const atA = collect(ca, 'excl');
    const gotB = waitFor(cb, 'excl');
    await sdk.trigger(name, 'excl', { n: 1 }, { socket_id: a.connection.socket_id });
    assert.deepEqual(await gotB, { n: 1 });
    // Barrier: a later event on the same channel reaches A after the first would have.
    const mark = waitFor(ca, 'mark');
    await sdk.trigger(name, 'mark', {});
    await mark;
    assert.deepEqual(atA.items, [], 'the excluded socket must not receive the event');
  });

  test('triggerBatch delivers every item; socket_id per item; info per item', async () => {
    const n1 = uniq('api-batch-');
    const n2 = uniq('api-batch-');
    const pres = uniq('presence-batch-');
    const a = await clients.connected(as('ua'));
    const b = await clients.connected(as('ub'));
    const { channel: a1 } = await subscribed(a, n1);
    const { channel: b1 } = await subscribed(b, n1);
    const { channel: b2 } = await subscribed(b, n2);
    await subscribed(a, pres);
    const { channel: bp } = await subscribed(b, pres);

    const atA = collect(a1, 'b1');
    const gb1 = waitFor(b1, 'b1');
    const gb2 = waitFor(b2, 'b2');
    const gbp = waitFor(bp, 'bp');
    const res = await sdk.triggerBatch([
      { channel: n1, name: 'b1', data: { i: 1 }, socket_id: a.connection.socket_id, info: 'subscription_count' },
      { channel: n2, name: 'b2', data: 'two' },
      { channel: pres, name: 'bp', data: { i: 3 }, info: 'user_count' },
    ]);
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.deepEqual(await gb1, { i: 1 });
    assert.equal(await gb2, 'two');
    assert.deepEqual(await gbp, { i: 3 });
    assert.ok(Array.isArray(body.batch), `batch with info must answer {batch:[...]}: ${JSON.stringify(body)}`);
    assert.equal(body.batch.length, 3);
    assert.equal(body.batch[0].subscription_count, 2, JSON.stringify(body));
    assert.equal(body.batch[2].user_count, 2, JSON.stringify(body));

    const mark = waitFor(a1, 'mark');
    await sdk.trigger(n1, 'mark', {});
    await mark;
    assert.deepEqual(atA.items, [], 'batch item socket_id exclusion');
  });

  test('triggerBatch over max_batch_size is rejected with 400', async () => {
    const name = uniq('api-bigbatch-');
    const batch = Array.from({ length: 11 }, (_, i) => ({ channel: name, name: 'x', data: { i } }));
    await rejectsWith(sdk.triggerBatch(batch), 400);
  });

  test('trigger with info returns per-channel counts', async () => {
    const pub = uniq('api-info-');
    const pres = uniq('presence-info-');
    for (const id of ['i1', 'i1', 'i2']) {
      const c = await clients.connected(as(id));
      await subscribed(c, pub);
      await subscribed(c, pres);
    }
    const r1 = await (await sdk.trigger(pub, 'x', {}, { info: 'subscription_count' })).json();
    assert.deepEqual(r1, { channels: { [pub]: { subscription_count: 3 } } });
    const r2 = await (await sdk.trigger(pres, 'x', {}, { info: 'user_count' })).json();
    assert.deepEqual(r2, { channels: { [pres]: { user_count: 2 } } });
  });

  test('GET /channels: filter_by_prefix, info=user_count, occupied channels only', async () => {
    const tag = uniq('lst').replace(/-/g, '');
    const presA = `presence-${tag}-a`;
    const presB = `presence-${tag}-b`;
    const pub = `${tag}-public`;
    const users = { [presA]: ['x', 'y', 'y'], [presB]: ['z'] };
    for (const [ch, ids] of Object.entries(users)) {
      for (const id of ids) {
        const c = await clients.connected(as(id));
        await subscribed(c, ch);
      }
    }
    const pc = await clients.connected();
    await subscribed(pc, pub);

    const res = await sdk.get({ path: '/channels', params: { filter_by_prefix: `presence-${tag}`, info: 'user_count' } });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {
      channels: { [presA]: { user_count: 2 }, [presB]: { user_count: 1 } },
    });

    const plain = await (await sdk.get({ path: '/channels', params: { filter_by_prefix: tag } })).json();
    assert.deepEqual(plain, { channels: { [pub]: {} } });

    // user_count only makes sense for presence- prefixes.
    await rejectsWith(sdk.get({ path: '/channels', params: { filter_by_prefix: tag, info: 'user_count' } }), 400);

    // Once everyone leaves, the channel is no longer listed.
    pc.unsubscribe(pub);
    await subscribed(pc, uniq('after-unsub-'));
    const gone = await (await sdk.get({ path: '/channels', params: { filter_by_prefix: tag } })).json();
    assert.deepEqual(gone, { channels: {} });
  });

  test('GET /channels/{ch}: occupied, subscription_count, user_count, 400 for user_count on a non-presence channel', async () => {
    const pub = uniq('api-ch-');
    const pres = uniq('presence-ch-');
    const empty = uniq('api-empty-');
    for (const id of ['c1', 'c1', 'c2']) {
      const c = await clients.connected(as(id));
      await subscribed(c, pub);
      await subscribed(c, pres);
    }
    const r1 = await (await sdk.get({ path: `/channels/${pub}`, params: { info: 'subscription_count' } })).json();
    assert.deepEqual(r1, { occupied: true, subscription_count: 3 });
    const r2 = await (await sdk.get({ path: `/channels/${pres}`, params: { info: 'user_count' } })).json();
    assert.deepEqual(r2, { occupied: true, user_count: 2 });
    const r3 = await (await sdk.get({ path: `/channels/${empty}` })).json();
    assert.equal(r3.occupied, false, JSON.stringify(r3));

    await rejectsWith(sdk.get({ path: `/channels/${pub}`, params: { info: 'user_count' } }), 400);
    // subscription_count counts connections, also on a presence channel.
    const r4 = await (await sdk.get({ path: `/channels/${pres}`, params: { info: 'user_count,subscription_count' } })).json();
    assert.deepEqual(r4, { occupied: true, user_count: 2, subscription_count: 3 });
  });

  test('GET /channels/{ch}/users: distinct users; 400 for a non-presence channel', async () => {
    const pres = uniq('presence-users-');
    for (const id of ['p1', 'p2', 'p2', 'p3']) {
      const c = await clients.connected(as(id));
      await subscribed(c, pres);
    }
    const res = await sdk.get({ path: `/channels/${pres}/users` });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.deepEqual(
      body.users.map((u) => u.id).sort(),
      ['p1', 'p2', 'p3'],
    );
    await rejectsWith(sdk.get({ path: `/channels/${uniq('public-')}/users` }), 400);
  });

  test('subscription_count events reach pusher-js as pusher:subscription_count', async () => {
    const name = uniq('count-');
    const a = await clients.connected();
    const ch = a.subscribe(name);
    const first = waitFor(ch, 'pusher:subscription_count', 5000, (d) => d.subscription_count === 1);
    await waitFor(ch, 'pusher:subscription_succeeded');
    await first;
    const second = waitFor(ch, 'pusher:subscription_count', 5000, (d) => d.subscription_count === 2);
    const b = await clients.connected();
    await subscribed(b, name);
    await second;
    assert.equal(ch.subscriptionCount, 2);
    const third = waitFor(ch, 'pusher:subscription_count', 5000, (d) => d.subscription_count === 1);
    b.disconnect();
    await third;
  });

  test('wrong secret is rejected with 401 and nothing is delivered', async () => {
    const name = uniq('api-401-');
    const c = await clients.connected();
    const { channel } = await subscribed(c, name);
    const seen = collect(channel, 'forged');
    const bad = new PusherServer({
      appId: APP.id,
      key: APP.key,
      secret: 'wrong-secret',
      host: '127.0.0.1',
      port: String(server.port),
      useTLS: false,
    });
    await rejectsWith(bad.trigger(name, 'forged', {}), 401);
    await rejectsWith(bad.get({ path: '/channels' }), 401);
    const mark = waitFor(channel, 'mark');
    await sdk.trigger(name, 'mark', {});
    await mark;
    assert.deepEqual(seen.items, []);
  });

  test('a signature older than the timestamp window (600 s) is rejected with 401', async () => {
    const realNow = Date.now;
    Date.now = () => realNow() - 700 * 1000;
    let p;
    try {
      p = sdk.trigger(uniq('api-stale-'), 'stale', {});
    } finally {
      Date.now = realNow;
    }
    await rejectsWith(p, 401);
  });

  test('data over max_message_size is rejected with 413', async () => {
    await rejectsWith(sdk.trigger(uniq('api-big-'), 'big', 'x'.repeat(10241)), 413);
  });

  test('terminate_connections for a user with no connections answers 200', async () => {
    const res = await sdk.terminateUserConnections(uniq('nobody-'));
    assert.equal(res.status, 200);
  });
});
