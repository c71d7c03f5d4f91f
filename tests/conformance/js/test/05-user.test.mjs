// 5. User sign-in, server-to-user messages, watchlist and terminating a
// user's connections, with pusher-js and the Node server SDK.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { APP, Clients, PusherServer, collect, serverSdk, startServer, subscribed, uniq, waitFor } from '../lib/harness.mjs';

const errCode = (e) => e?.data?.code ?? e?.error?.data?.code;

describe('user sign-in, server-to-user, watchlist, terminate', () => {
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
   * A connected pusher-js client that called signin() and whose automatic
   * `#server-to-user-{id}` subscription succeeded.
   */
  async function signedIn(user, { sdk: authSdk = sdk } = {}) {
    const c = await clients.connected({ sdk: authSdk, user });
    const success = waitFor(c.connection, 'message', 5000, (m) => m.event === 'pusher:signin_success');
    const s2u = waitFor(
      c.connection,
      'message',
      5000,
      (m) => m.event === 'pusher_internal:subscription_succeeded' && m.channel === `#server-to-user-${user.id}`,
    );
    c.signin();
    const ok = await success;
    assert.deepEqual(JSON.parse(ok.data.user_data), user);
    await s2u;
    assert.equal(c.user.user_data.id, user.id);
    return c;
  }

  test('signin succeeds and sendToUser reaches every connection of that user only', async () => {
    const id = uniq('user-');
    const other = uniq('other-');
    const a1 = await signedIn({ id, user_info: { name: 'A ✓' } });
    const a2 = await signedIn({ id });
    const b = await signedIn({ id: other });
    const gotB = collect(b.user, 'notice');

    const p1 = waitFor(a1.user, 'notice');
    const p2 = waitFor(a2.user, 'notice');
    const res = await sdk.sendToUser(id, 'notice', { msg: 'for you 📨' });
    assert.equal(res.status, 200);
    assert.deepEqual(await p1, { msg: 'for you 📨' });
    assert.deepEqual(await p2, { msg: 'for you 📨' });

    // Barrier: a message to the other user arrives after anything sent before.
    const mark = waitFor(b.user, 'mark');
    await sdk.sendToUser(other, 'mark', {});
    await mark;
    assert.deepEqual(gotB.items, [], 'another user must not receive it');
  });

  test('a socket that is not signed in as the user cannot subscribe to #server-to-user-{id}', async () => {
    const id = uniq('victim-');
    const victim = await signedIn({ id });
    const intruder = await clients.connected({ sdk });
    const channelName = `#server-to-user-${id}`;
    // pusher-js refuses to subscribe to '#' channels itself, so send the raw
    // pusher:subscribe frame a hostile client would send.
    const frames = [];
    intruder.connection.bind('message', (m) => m.channel === channelName && frames.push(m));
    const outcome = waitFor(
      intruder.connection,
      'message',
      5000,
      (m) =>
        m.channel === channelName &&
        ['pusher:subscription_error', 'pusher_internal:subscription_succeeded'].includes(m.event),
    );
    intruder.send_event('pusher:subscribe', { channel: channelName });
    const first = await outcome;
    assert.equal(first.event, 'pusher:subscription_error', `subscription must be refused: ${JSON.stringify(first)}`);
    assert.equal(intruder.connection.state, 'connected');

    const v = waitFor(victim.user, 'secret');
    await sdk.sendToUser(id, 'secret', { pin: 1234 });
    await v;
    // Barrier on the intruder's own connection.
    const { channel: pub } = await subscribed(intruder, uniq('barrier-'));
    const mark = waitFor(pub, 'mark');
    await sdk.trigger(pub.name, 'mark', {});
    await mark;
    assert.deepEqual(
      frames.filter((f) => f.event === 'secret'),
      [],
      'the intruder must not receive the user\'s messages',
    );
  });

  test('signin with a bad signature: pusher:error and close 4009, no reconnect', async () => {
    const badSdk = new PusherServer({
      appId: APP.id,
      key: APP.key,
      secret: 'not-the-secret',
      host: '127.0.0.1',
      port: String(server.port),
      useTLS: false,
    });
    const c = await clients.connected({ sdk: badSdk, user: { id: uniq('bad-') } });
    const frames = [];
    c.connection.bind('message', (m) => frames.push(m.event));
    const errors = collect(c.connection, 'error');
    const down = waitFor(c.connection, 'state_change', 5000, ({ current }) =>
      ['disconnected', 'failed'].includes(current),
    );
    c.signin();
    await down;
    assert.ok(
      errors.items.some((e) => errCode(e.data) === 4009),
      `expected close code 4009, errors: ${JSON.stringify(errors.items)}`,
    );
    assert.ok(frames.includes('pusher:error'), `pusher:error expected before close; frames: ${frames}`);
    assert.ok(!frames.includes('pusher:signin_success'));
    await assert.rejects(
      waitFor(c.connection, 'state_change', 2500, ({ current }) => current === 'connecting'),
      /timed out/,
      'pusher-js must not reconnect after 4009',
    );
  });

  test('watchlist: initial status, then online/offline as watched users sign in and leave', async () => {
    const watcherId = uniq('watcher-');
    const onlineFirst = uniq('w-online-');
    const later = uniq('w-later-');
    const early = await signedIn({ id: onlineFirst });

    const watcher = await clients.connected({ sdk, user: { id: watcherId, watchlist: [onlineFirst, later] } });
    const online = collect(watcher.user.watchlist, 'online');
    const offline = collect(watcher.user.watchlist, 'offline');
    const initial = waitFor(watcher.connection, 'message', 5000, (m) => m.event === 'pusher_internal:watchlist_events');
    watcher.signin();
    const first = await initial;
    assert.ok(Array.isArray(first.data?.events), `watchlist_events shape: ${JSON.stringify(first)}`);
    const initialOnline = first.data.events.filter((e) => e.name === 'online').flatMap((e) => e.user_ids);
    const initialOffline = first.data.events.filter((e) => e.name === 'offline').flatMap((e) => e.user_ids);
    assert.deepEqual(initialOnline, [onlineFirst], `initial: ${JSON.stringify(first.data)}`);
    assert.deepEqual(initialOffline, [later], `initial: ${JSON.stringify(first.data)}`);
    // pusher-js re-emits each entry on user.watchlist.
    await online.atLeast(1);
    assert.deepEqual(online.items[0].data, { name: 'online', user_ids: [onlineFirst] });

    // The other watched user signs in (on two tabs): one "online".
    const l1 = await signedIn({ id: later });
    const [, laterOnline] = await online.atLeast(2);
    assert.deepEqual(laterOnline.data, { name: 'online', user_ids: [later] });
    const l2 = await signedIn({ id: later });

    // First tab closes: still online (no "offline" for later).
    // Then the early user leaves: "offline" for it.
    const offEarly = offline.atLeast(2);
    l1.disconnect();
    early.disconnect();
    const offs = await offEarly.catch(async () => offline.items);
    assert.deepEqual(
      offs.slice(1).map((o) => o.data),
      [{ name: 'offline', user_ids: [onlineFirst] }],
      `after one of two tabs of ${later} closed and ${onlineFirst} left: ${JSON.stringify(offline.items.map((o) => o.data))}`,
    );

    // Last tab closes: now "offline" for later.
    const offLater = offline.atLeast(3);
    l2.disconnect();
    const all = await offLater;
    assert.deepEqual(all[2].data, { name: 'offline', user_ids: [later] });
    // Barrier: a server-to-user message to the watcher, sent after all of
    // the above, arrives after any further (spurious) watchlist event.
    const mark = waitFor(watcher.user, 'mark');
    await sdk.sendToUser(watcherId, 'mark', {});
    await mark;
    assert.equal(offline.items.length, 3, `offline events: ${JSON.stringify(offline.items.map((o) => o.data))}`);
    assert.equal(online.items.length, 2, `online events: ${JSON.stringify(online.items.map((o) => o.data))}`);
  });

  test('terminateUserConnections closes every connection signed in as that user with 4009', async () => {
    const id = uniq('term-');
    const other = uniq('keep-');
    const t1 = await signedIn({ id });
    const t2 = await signedIn({ id });
    const keep = await signedIn({ id: other });

    const waits = [t1, t2].map((c) => {
      const errors = collect(c.connection, 'error');
      const down = waitFor(c.connection, 'state_change', 5000, ({ current }) =>
        ['disconnected', 'failed'].includes(current),
      );
      return { c, errors, down };
    });
    const res = await sdk.terminateUserConnections(id);
    assert.equal(res.status, 200);
    for (const { c, errors, down } of waits) {
      await down;
      assert.ok(
        errors.items.some((e) => errCode(e.data) === 4009),
        `expected close 4009: ${JSON.stringify(errors.items)}`,
      );
      assert.notEqual(c.connection.state, 'connected');
    }
    // The other user is untouched.
    const still = waitFor(keep.user, 'ping-me');
    await sdk.sendToUser(other, 'ping-me', { ok: true });
    assert.deepEqual(await still, { ok: true });
    assert.equal(keep.connection.state, 'connected');
  });

  test('terminateUserConnections accepts a user id its HTTP client percent-encodes (auth0|…)', async () => {
    // The SDK signs the path with `auth0|…`; the request carries `auth0%7C…`.
    const res = await sdk.terminateUserConnections(uniq('auth0|'));
    assert.equal(res.status, 200);
  });

  test('terminate does not touch presence-only identities (not signed in)', async () => {
    const id = uniq('presence-only-');
    const name = uniq('presence-term-');
    const c = await clients.connected({ sdk, presence: () => ({ user_id: id, user_info: {} }) });
    const { channel } = await subscribed(c, name);
    await sdk.terminateUserConnections(id);
    const got = waitFor(channel, 'after');
    await sdk.trigger(name, 'after', { n: 1 });
    assert.deepEqual(await got, { n: 1 });
    assert.equal(c.connection.state, 'connected');
  });
});
