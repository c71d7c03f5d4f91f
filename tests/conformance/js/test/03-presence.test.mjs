// 3. Presence channels: member list snapshot, multi-tab semantics,
// distinct users over the HTTP API.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { Clients, serverSdk, startServer, subscribed, uniq, waitFor } from '../lib/harness.mjs';

describe('presence', () => {
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

  const as = (id, info = { name: id }) => ({ sdk, presence: () => ({ user_id: id, user_info: info }) });

  /** Raw pusher_internal:* frames a client receives on one channel. */
  function rawFrames(client, channel) {
    const frames = [];
    client.connection.bind('message', (m) => m.channel === channel && frames.push(m));
    return frames;
  }

  /**
   * Ordering barrier for `observer`: trigger an event on `channel` via the
   * HTTP API and wait until the observer receives it. Anything the server
   * queued for the observer before the trigger has been delivered by then.
   */
  async function barrier(observerChannel, channel) {
    const ev = `barrier-${Math.random().toString(36).slice(2)}`;
    const got = waitFor(observerChannel, ev);
    await sdk.trigger(channel, ev, {});
    await got;
  }

  test('subscription_succeeded carries distinct members, count and my own entry', async () => {
    const name = uniq('presence-snap-');
    const a1 = await clients.connected(as('alice', { name: 'Alice' }));
    const a2 = await clients.connected(as('alice', { name: 'Alice' }));
    const b = await clients.connected(as('bob', { name: 'Bob', emoji: '🐝' }));
    await subscribed(a1, name);
    await subscribed(a2, name);
    await subscribed(b, name);

    const c = await clients.connected(as('carol', { name: 'Carol' }));
    const { data: members } = await subscribed(c, name);
    assert.equal(members.count, 3);
    const ids = [];
    members.each((m) => ids.push(m.id));
    assert.deepEqual(ids.sort(), ['alice', 'bob', 'carol']);
    assert.deepEqual(members.get('bob'), { id: 'bob', info: { name: 'Bob', emoji: '🐝' } });
    assert.deepEqual(members.me, { id: 'carol', info: { name: 'Carol' } });
  });

  test('member_added on join, member_removed on leave, not sent to the joiner itself', async () => {
    const name = uniq('presence-join-');
    const obs = await clients.connected(as('observer'));
    const { channel: och } = await subscribed(obs, name);
    const joiner = await clients.connected(as('dave', { name: 'Dave' }));
    const joinerFrames = rawFrames(joiner, name);

    const added = waitFor(och, 'pusher:member_added');
    const { channel: jch } = await subscribed(joiner, name);
    assert.deepEqual(await added, { id: 'dave', info: { name: 'Dave' } });
    assert.equal(och.members.count, 2);
    await barrier(jch, name);
    assert.deepEqual(
      joinerFrames.filter((f) => f.event === 'pusher_internal:member_added'),
      [],
      'the joining socket must not get its own member_added',
    );

    const removed = waitFor(och, 'pusher:member_removed');
    joiner.disconnect();
    assert.deepEqual(await removed, { id: 'dave', info: { name: 'Dave' } });
    assert.equal(och.members.count, 1);
  });

  test('multi-tab: same user on two connections -> one member_added, member_removed only after the last tab leaves', async () => {
    const name = uniq('presence-tabs-');
    const obs = await clients.connected(as('observer'));
    const { channel: och } = await subscribed(obs, name);
    const frames = rawFrames(obs, name);

    const tab1 = await clients.connected(as('erin', { name: 'Erin' }));
    const tab2 = await clients.connected(as('erin', { name: 'Erin' }));

    const added = waitFor(och, 'pusher:member_added');
    await subscribed(tab1, name);
    assert.equal((await added).id, 'erin');

    const { data: tab2Members } = await subscribed(tab2, name);
    assert.equal(tab2Members.count, 2, 'observer + erin (distinct users)');
    await barrier(och, name);
    assert.equal(
      frames.filter((f) => f.event === 'pusher_internal:member_added').length,
      1,
      `second tab of the same user must not produce another member_added: ${JSON.stringify(frames)}`,
    );

    // The first tab leaves (unsubscribe, then a subscribe round-trip on the
    // same socket proves the server processed the unsubscribe in order).
    tab1.unsubscribe(name);
    await subscribed(tab1, uniq('after-unsub-'));
    await barrier(och, name);
    assert.equal(
      frames.filter((f) => f.event === 'pusher_internal:member_removed').length,
      0,
      `member_removed sent while erin still has a tab open: ${JSON.stringify(frames)}`,
    );
    assert.equal(och.members.count, 2);
    const users = await (await sdk.get({ path: `/channels/${name}/users` })).json();
    assert.deepEqual(users.users.map((u) => u.id).sort(), ['erin', 'observer']);

    // The last tab leaves: now member_removed.
    const removed = waitFor(och, 'pusher:member_removed');
    tab2.disconnect();
    assert.equal((await removed).id, 'erin');
    await barrier(och, name);
    assert.equal(frames.filter((f) => f.event === 'pusher_internal:member_removed').length, 1);
    assert.equal(och.members.count, 1);
  });

  test('HTTP API: /users lists distinct users and info=user_count counts distinct users', async () => {
    const name = uniq('presence-api-');
    for (const id of ['u1', 'u1', 'u1', 'u2']) {
      const c = await clients.connected(as(id));
      await subscribed(c, name);
    }
    const usersRes = await sdk.get({ path: `/channels/${name}/users` });
    assert.equal(usersRes.status, 200);
    const body = await usersRes.json();
    assert.deepEqual(
      body.users.map((u) => u.id).sort(),
      ['u1', 'u2'],
      `distinct users expected: ${JSON.stringify(body)}`,
    );
    for (const u of body.users) assert.deepEqual(Object.keys(u), ['id']);

    const info = await (await sdk.get({ path: `/channels/${name}`, params: { info: 'user_count' } })).json();
    assert.equal(info.occupied, true);
    assert.equal(info.user_count, 2);

    const list = await (
      await sdk.get({ path: '/channels', params: { filter_by_prefix: 'presence-api-', info: 'user_count' } })
    ).json();
    assert.deepEqual(list.channels[name], { user_count: 2 });
  });
});
