// 10. Webhooks: a real HTTP receiver validated with the official Node SDK
// (`pusher.webhook(...).isValid()`), real pusher-js clients causing the events.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { APP, Clients, freePort, serverSdk, startServer, subscribed, uniq, waitFor } from '../lib/harness.mjs';
import { is, quiet, startReceiver, webhookSdk } from '../lib/webhooks.mjs';

const LEAVE_DELAY_MS = 1000;
// Proving a delayed webhook was cancelled: wait past the leave delay plus the
// sender's 100 ms tick and some margin.
const SILENCE_MS = LEAVE_DELAY_MS + 800;
// A leave webhook may not arrive earlier than this after the leave (the
// server measures from when it processed the leave, a little after we did).
const MIN_DELAY_MS = LEAVE_DELAY_MS - 150;

const WEBHOOK_TIMING = { leave_delay: '1s', retry_initial: '200ms', retry_window: '30s', timeout: '2s' };

describe('webhooks (webhook_url, all event types)', () => {
  let server;
  let clients;
  let sdk;
  let recv;

  before(async () => {
    recv = await startReceiver();
    server = await startServer({ top: { webhook_url: recv.url }, webhooks: WEBHOOK_TIMING });
    clients = new Clients(server);
    sdk = serverSdk(server);
  });
  after(async () => {
    clients?.closeAll();
    await server?.stop();
    await recv?.close();
  });

  const as = (id, info = { name: id }) => ({ sdk, presence: () => ({ user_id: id, user_info: info }) });
  const count = (pred) => recv.matching(pred).length;

  test('every request is signed: X-Pusher-Key, X-Pusher-Signature valid for the SDK, invalid with a wrong secret', async () => {
    const name = uniq('wh-sig-');
    const c = await clients.connected();
    await subscribed(c, name);
    const ev = await recv.waitEvent(is('channel_occupied', name), 5000, 'channel_occupied');
    const req = ev.request;
    assert.equal(req.method, 'POST');
    assert.equal(req.headers['x-pusher-key'], APP.key);
    assert.match(req.headers['x-pusher-signature'], /^[0-9a-f]{64}$/);
    assert.equal(req.headers['content-type'], 'application/json');
    assert.equal(req.valid, true);
    const body = JSON.parse(req.rawBody);
    assert.equal(typeof body.time_ms, 'number');
    assert.ok(Math.abs(body.time_ms - Date.now()) < 60_000, `time_ms ${body.time_ms} is not now`);
    assert.ok(Array.isArray(body.events) && body.events.length === 1, `max_batch = 1: ${req.rawBody}`);

    // Negative controls: the same request does not validate with a wrong
    // secret, nor with a tampered body, nor under another key.
    const hook = { headers: req.headers, rawBody: req.rawBody };
    assert.equal(webhookSdk('wrong-secret').webhook(hook).isValid(), false, 'wrong secret must not validate');
    assert.equal(
      webhookSdk().webhook({ ...hook, rawBody: req.rawBody.replace(name, `${name}x`) }).isValid(),
      false,
      'tampered body must not validate',
    );
    assert.equal(
      webhookSdk().webhook({ ...hook, headers: { ...req.headers, 'x-pusher-key': 'other-key' } }).isValid(),
      false,
    );
    assert.deepEqual(recv.invalid, [], 'every request herald sent must validate');
  });

  test('channel_occupied on the first subscriber, channel_vacated leave_delay after the last one leaves', async () => {
    const name = uniq('wh-occ-');
    const a = await clients.connected();
    const b = await clients.connected();
    await subscribed(a, name);
    const occ = await recv.waitEvent(is('channel_occupied', name), 5000, 'channel_occupied');
    assert.deepEqual(recv.strip(occ), { name: 'channel_occupied', channel: name });
    await subscribed(b, name);

    a.unsubscribe(name);
    await subscribed(a, uniq('wh-other-')); // the unsubscribe was processed
    const left = Date.now();
    b.disconnect();
    const vac = await recv.waitEvent(is('channel_vacated', name), 5000, 'channel_vacated');
    assert.deepEqual(recv.strip(vac), { name: 'channel_vacated', channel: name });
    assert.ok(vac.at - left >= MIN_DELAY_MS, `channel_vacated came ${vac.at - left} ms after the leave`);
    assert.equal(count(is('channel_occupied', name)), 1);
    assert.equal(count(is('channel_vacated', name)), 1);
  });

  test('subscription_count follows public channel subscriptions, none for presence channels', async () => {
    const name = uniq('wh-count-');
    const sc = (n) => is('subscription_count', name, { subscription_count: n });
    const a = await clients.connected();
    const b = await clients.connected();
    await subscribed(a, name);
    const one = await recv.waitEvent(sc(1), 5000, 'subscription_count 1');
    assert.deepEqual(recv.strip(one), { name: 'subscription_count', channel: name, subscription_count: 1 });
    await subscribed(b, name);
    await recv.waitEvent(sc(2), 5000, 'subscription_count 2');
    a.disconnect();
    await recv.waitCount(sc(1), 2, 5000, 'subscription_count back to 1');
    b.disconnect();
    await recv.waitEvent(sc(0), 5000, 'subscription_count 0');

    const pres = uniq('presence-wh-count-');
    const p = await clients.connected(as('pat'));
    await subscribed(p, pres);
    await recv.waitEvent(is('member_added', pres), 5000, 'member_added');
    p.disconnect();
    // channel_vacated is delayed by leave_delay; any subscription_count would
    // have been queued before it.
    await recv.waitEvent(is('channel_vacated', pres), 5000, 'channel_vacated (presence)');
    assert.deepEqual(recv.matching((e) => e.name === 'subscription_count' && e.channel === pres), []);
  });

  test('member_added at once, member_removed and channel_vacated leave_delay after the user leaves', async () => {
    const name = uniq('presence-wh-mem-');
    const alice = await clients.connected(as('alice'));
    await subscribed(alice, name);
    const added = await recv.waitEvent(is('member_added', name), 5000, 'member_added');
    assert.deepEqual(recv.strip(added), { name: 'member_added', channel: name, user_id: 'alice' });
    await recv.waitEvent(is('channel_occupied', name), 5000, 'channel_occupied');

    const left = Date.now();
    alice.disconnect();
    const removed = await recv.waitEvent(is('member_removed', name), 5000, 'member_removed');
    assert.deepEqual(recv.strip(removed), { name: 'member_removed', channel: name, user_id: 'alice' });
    assert.ok(removed.at - left >= MIN_DELAY_MS, `member_removed came ${removed.at - left} ms after the leave`);
    await recv.waitEvent(is('channel_vacated', name), 5000, 'channel_vacated');
  });

  test('page reload within leave_delay: no member_removed, no channel_vacated, no second member_added', async () => {
    const name = uniq('presence-wh-reload-');
    const first = await clients.connected(as('rita'));
    await subscribed(first, name);
    await recv.waitEvent(is('member_added', name), 5000, 'member_added');
    await recv.waitEvent(is('channel_occupied', name), 5000, 'channel_occupied');

    // The "reload": the old page's socket goes, the new page's socket joins
    // well within the leave delay.
    first.disconnect();
    const second = await clients.connected(as('rita'));
    const { data: members } = await subscribed(second, name);
    assert.equal(members.count, 1);
    await quiet(SILENCE_MS);
    assert.equal(count(is('member_removed', name)), 0, 'member_removed must be cancelled by the rejoin');
    assert.equal(count(is('channel_vacated', name)), 0, 'channel_vacated must be cancelled by the rejoin');
    assert.equal(count(is('member_added', name)), 1, 'the rejoin must not send another member_added');
    assert.equal(count(is('channel_occupied', name)), 1, 'the rejoin must not send another channel_occupied');

    // Leaving for good is reported once.
    second.disconnect();
    await recv.waitEvent(is('member_removed', name), 5000, 'member_removed');
    await recv.waitEvent(is('channel_vacated', name), 5000, 'channel_vacated');
    await quiet(300);
    assert.equal(count(is('member_removed', name)), 1);
    assert.equal(count(is('channel_vacated', name)), 1);
  });

  test('multi-tab user: one member_added, member_removed only after the last tab closes', async () => {
    const name = uniq('presence-wh-tabs-');
    const tab1 = await clients.connected(as('tess'));
    const tab2 = await clients.connected(as('tess'));
    await subscribed(tab1, name);
    await subscribed(tab2, name);
    await recv.waitEvent(is('member_added', name), 5000, 'member_added');

    tab1.disconnect();
    await quiet(SILENCE_MS);
    assert.equal(count(is('member_added', name)), 1, 'the second tab must not send member_added');
    assert.equal(count(is('member_removed', name)), 0, 'tess still has a tab open');
    assert.equal(count(is('channel_vacated', name)), 0);

    const left = Date.now();
    tab2.disconnect();
    const removed = await recv.waitEvent(is('member_removed', name), 5000, 'member_removed');
    assert.equal(removed.user_id, 'tess');
    assert.ok(removed.at - left >= MIN_DELAY_MS);
    await quiet(300);
    assert.equal(count(is('member_removed', name)), 1);
  });

  test('client_event: event, data as a string, socket_id; user_id on presence channels', async () => {
    const priv = uniq('private-wh-ce-');
    const a = await clients.connected({ sdk });
    const b = await clients.connected({ sdk });
    const { channel: ca } = await subscribed(a, priv);
    const { channel: cb } = await subscribed(b, priv);
    const got = waitFor(cb, 'client-typing');
    ca.trigger('client-typing', { text: 'héllo ✓', n: 1 });
    assert.deepEqual(await got, { text: 'héllo ✓', n: 1 });
    const ev = await recv.waitEvent(is('client_event', priv), 5000, 'client_event (private)');
    const { data, ...rest } = recv.strip(ev);
    assert.deepEqual(rest, {
      name: 'client_event',
      channel: priv,
      event: 'client-typing',
      socket_id: a.connection.socket_id,
    });
    assert.equal(typeof data, 'string', 'client_event data is a string');
    assert.deepEqual(JSON.parse(data), { text: 'héllo ✓', n: 1 });

    const pres = uniq('presence-wh-ce-');
    const alice = await clients.connected(as('alice'));
    const bob = await clients.connected(as('bob'));
    const { channel: pa } = await subscribed(alice, pres);
    await subscribed(bob, pres);
    pa.trigger('client-wave', { hi: true });
    const pev = await recv.waitEvent(is('client_event', pres), 5000, 'client_event (presence)');
    assert.equal(pev.user_id, 'alice');
    assert.equal(pev.socket_id, alice.connection.socket_id);
    assert.equal(pev.event, 'client-wave');
    assert.deepEqual(JSON.parse(pev.data), { hi: true });
  });

  test('cache_miss: sent for an empty cache channel, once per channel within the dedup window', async () => {
    const name = uniq('cache-wh-');
    const a = await clients.connected();
    const missA = waitFor(a.connection, 'message', 5000, (m) => m.event === 'pusher:cache_miss' && m.channel === name);
    await subscribed(a, name);
    await missA;
    const ev = await recv.waitEvent(is('cache_miss', name), 5000, 'cache_miss');
    assert.deepEqual(recv.strip(ev), { name: 'cache_miss', channel: name });

    const b = await clients.connected();
    const missB = waitFor(b.connection, 'message', 5000, (m) => m.event === 'pusher:cache_miss' && m.channel === name);
    await subscribed(b, name);
    await missB; // the client still gets its cache_miss event
    await quiet(800);
    assert.equal(count(is('cache_miss', name)), 1, 'cache_miss webhooks are deduplicated per channel');

    // A channel with a cached event is no miss.
    const warm = uniq('cache-wh-warm-');
    await sdk.trigger(warm, 'ev', { v: 1 });
    const c = await clients.connected();
    const { channel: cw } = await subscribed(c, warm);
    void cw;
    await recv.waitEvent(is('channel_occupied', warm), 5000, 'channel_occupied (warm)');
    await quiet(300);
    assert.equal(count(is('cache_miss', warm)), 0);
  });

  test('no request failed validation', () => {
    assert.deepEqual(recv.invalid.map((r) => r.rawBody), []);
    assert.ok(recv.requests.length > 0);
  });
});

describe('webhooks: retries', () => {
  let server;
  let clients;
  let recv;

  before(async () => {
    // The first two requests fail with 500, everything after succeeds.
    recv = await startReceiver({ respond: (n) => (n < 2 ? 500 : 200) });
    server = await startServer({
      webhooks: WEBHOOK_TIMING,
      apps: [{ webhooks: [{ url: recv.url, event_types: ['channel_occupied'] }] }],
    });
    clients = new Clients(server);
  });
  after(async () => {
    clients?.closeAll();
    await server?.stop();
    await recv?.close();
  });

  test('a receiver failing twice with 500 gets the event retried with backoff and delivered once', async () => {
    const name = uniq('wh-retry-');
    const c = await clients.connected();
    await subscribed(c, name);
    const ev = await recv.waitEvent(is('channel_occupied', name), 8000, 'channel_occupied after retries');
    assert.deepEqual(recv.strip(ev), { name: 'channel_occupied', channel: name });
    const attempts = recv.requests.filter((r) => r.rawBody.includes(name));
    assert.deepEqual(
      attempts.map((r) => r.status),
      [500, 500, 200],
      'two failed attempts, then the successful one',
    );
    for (const r of attempts) {
      assert.equal(r.valid, true, 'every attempt is signed');
      assert.deepEqual(r.events, [{ name: 'channel_occupied', channel: name }]);
    }
    const gap1 = attempts[1].at - attempts[0].at;
    const gap2 = attempts[2].at - attempts[1].at;
    assert.ok(gap1 >= 180, `first retry after retry_initial (200 ms), got ${gap1} ms`);
    assert.ok(gap2 >= 380, `second retry after twice that, got ${gap2} ms`);
    await quiet(600);
    assert.equal(recv.matching(is('channel_occupied', name)).length, 1, 'delivered exactly once');
  });
});

describe('webhooks: a target that is down, per-app targets with filters and headers', () => {
  let server;
  let clients;
  let sdk;
  let recv;

  before(async () => {
    recv = await startReceiver();
    const deadPort = await freePort(); // nothing listens there
    server = await startServer({
      webhooks: WEBHOOK_TIMING,
      apps: [
        {
          webhooks: [
            { url: `http://127.0.0.1:${deadPort}/hook` },
            {
              url: recv.url,
              event_types: ['member_added', 'member_removed'],
              channel_prefix: 'presence-',
              channel_suffix: '-x',
              headers: { 'X-Token': 'abc' },
            },
          ],
        },
      ],
    });
    clients = new Clients(server);
    sdk = serverSdk(server);
  });
  after(async () => {
    clients?.closeAll();
    await server?.stop();
    await recv?.close();
  });

  const as = (id) => ({ sdk, presence: () => ({ user_id: id, user_info: { name: id } }) });

  test('sockets are unaffected while a webhook target is unreachable', async () => {
    const name = uniq('wh-down-');
    const a = await clients.connected({ sdk });
    const b = await clients.connected({ sdk });
    const t0 = Date.now();
    const { channel: ca } = await subscribed(a, `private-${name}`);
    const { channel: cb } = await subscribed(b, `private-${name}`);
    assert.ok(Date.now() - t0 < 2000, 'subscriptions are not slowed down by webhooks');

    const got = waitFor(cb, 'server-ev');
    await sdk.trigger(`private-${name}`, 'server-ev', { n: 1 });
    assert.deepEqual(await got, { n: 1 });
    const ce = waitFor(cb, 'client-ev');
    ca.trigger('client-ev', { n: 2 });
    assert.deepEqual(await ce, { n: 2 });

    // Presence join and leave reach other members immediately (the webhook
    // delay never applies to the protocol's own events).
    const pres = uniq('presence-wh-down-');
    const obs = await clients.connected(as('obs'));
    const { channel: och } = await subscribed(obs, pres);
    const joiner = await clients.connected(as('jo'));
    const added = waitFor(och, 'pusher:member_added');
    await subscribed(joiner, pres);
    assert.equal((await added).id, 'jo');
    const removed = waitFor(och, 'pusher:member_removed', 900);
    joiner.disconnect();
    assert.equal((await removed).id, 'jo');
    // Many more events while the target keeps failing.
    for (let i = 0; i < 20; i++) {
      const c = await clients.connected();
      await subscribed(c, uniq('wh-down-many-'));
      c.disconnect();
    }
    const last = waitFor(cb, 'server-ev');
    await sdk.trigger(`private-${name}`, 'server-ev', { n: 3 });
    assert.deepEqual(await last, { n: 3 });
    assert.equal(a.connection.state, 'connected');
    assert.equal(b.connection.state, 'connected');
  });

  test('a filtered target gets only its event types on matching channels, with its extra headers', async () => {
    const match = `${uniq('presence-wh-f-')}-x`;
    const wrongSuffix = uniq('presence-wh-f-');
    const u = await clients.connected(as('fay'));
    await subscribed(u, wrongSuffix);
    await subscribed(u, match);
    const added = await recv.waitEvent(is('member_added', match), 5000, 'member_added (filtered target)');
    assert.equal(added.request.headers['x-token'], 'abc');
    assert.equal(added.request.valid, true);
    u.disconnect();
    await recv.waitEvent(is('member_removed', match), 5000, 'member_removed (filtered target)');
    // channel_vacated is queued at the same moment as member_removed.
    await quiet(300);
    assert.deepEqual(
      recv.delivered.filter((e) => e.channel === match).map((e) => e.name),
      ['member_added', 'member_removed'],
    );
    assert.deepEqual(recv.matching((e) => e.channel === wrongSuffix), [], 'channel_suffix filter');
    assert.deepEqual(recv.invalid, []);
  });
});
