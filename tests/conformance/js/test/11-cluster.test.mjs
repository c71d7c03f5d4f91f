// 11. Cluster: three herald nodes on one private redis-server, real pusher-js
// and Echo clients spread over the nodes, the Node SDK talking to any node.
// Replication is asynchronous: before asserting on events, tests poll a node's
// HTTP API until it reports the expected state.
import { EventEmitter } from 'node:events';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { Clients, collect, serverSdk, subscribed, uniq, waitFor } from '../lib/harness.mjs';
import { echoFor, echoNext, echoSubscribed } from '../lib/echo.mjs';
import { apiGet, eventually, startNode, startNodes, startRedis, untilSubscriptions, untilUsers } from '../lib/cluster.mjs';
import { is, quiet, startReceiver } from '../lib/webhooks.mjs';

const errCode = (e) => e?.data?.code ?? e?.error?.data?.code;
const names = (members) => members.map((m) => m.name).sort();
// Proving a cancelled webhook: past the 1 s leave delay plus the sender's tick.
const SILENCE_MS = 1800;

describe('cluster of three nodes on one redis', () => {
  let redis;
  let A, B, C;
  let cA, cB, cC;
  let sdkA, sdkB, sdkC;

  before(async () => {
    redis = await startRedis();
    [A, B, C] = await startNodes(redis, 3);
    [cA, cB, cC] = [A, B, C].map((n) => new Clients(n));
    [sdkA, sdkB, sdkC] = [A, B, C].map((n) => serverSdk(n));
  });
  after(async () => {
    for (const c of [cA, cB, cC]) c?.closeAll();
    for (const n of [A, B, C]) await n?.stop();
    await redis?.stop();
  });

  const as = (sdk, id) => ({ sdk, presence: () => ({ user_id: id, user_info: { name: id } }) });

  /** Echo presence member with its here/joining/leaving callbacks recorded. */
  function echoMember(pusherClient, room) {
    const echo = echoFor(pusherClient);
    const ch = echo.join(room);
    const ev = new EventEmitter();
    const joining = collect(ev, 'joining');
    const leaving = collect(ev, 'leaving');
    ch.joining((m) => ev.emit('joining', m));
    ch.leaving((m) => ev.emit('leaving', m));
    const here = echoNext((cb) => ch.here(cb), 5000, `Echo here in ${room}`).then(([m]) => m);
    return {
      echo,
      ch,
      here,
      joined: () => joining.items.map((i) => i.data.name),
      left: () => leaving.items.map((i) => i.data.name),
      joining,
      leaving,
    };
  }

  /**
   * Ordering barrier: an SDK trigger through `sdk` on `channel`, awaited on
   * each pusher-js client. The node delivers to its own sockets in order, so
   * anything it sent them before has arrived by then.
   */
  async function barrier(sdk, channel, ...pusherClients) {
    const ev = `barrier-${Math.random().toString(36).slice(2)}`;
    const got = pusherClients.map((p) => waitFor(p.channel(channel), ev));
    await sdk.trigger(channel, ev, {});
    await Promise.all(got);
  }

  async function signedIn(clients, sdk, id) {
    const c = await clients.connected({ sdk, user: { id } });
    const s2u = waitFor(
      c.connection,
      'message',
      5000,
      (m) => m.event === 'pusher_internal:subscription_succeeded' && m.channel === `#server-to-user-${id}`,
    );
    c.signin();
    await s2u;
    return c;
  }

  test('SDK trigger on one node reaches subscribers on every node exactly once', async () => {
    const name = uniq('cl-pub-');
    const subs = [await cA.connected(), await cB.connected(), await cC.connected()];
    for (const s of subs) await subscribed(s, name);
    for (const sdk of [sdkA, sdkB, sdkC]) await untilSubscriptions(sdk, name, 3);

    const logs = subs.map((s) => collect(s.channel(name), 'news'));
    await sdkA.trigger(name, 'news', { from: 'A', text: 'über ✓' });
    await sdkB.trigger(name, 'news', { from: 'B' });
    for (const log of logs) {
      const got = await log.atLeast(2);
      assert.deepEqual(got.map((i) => i.data.from).sort(), ['A', 'B']);
    }
    await barrier(sdkA, name, ...subs);
    await barrier(sdkB, name, ...subs);
    for (const log of logs) assert.equal(log.items.length, 2, 'each event exactly once on every node');
    assert.deepEqual(logs[1].items.find((i) => i.data.from === 'A').data, { from: 'A', text: 'über ✓' });
  });

  test('socket_id exclusion works across nodes', async () => {
    const name = uniq('cl-excl-');
    const a = await cA.connected();
    const b = await cB.connected();
    await subscribed(a, name);
    await subscribed(b, name);
    await untilSubscriptions(sdkA, name, 2);
    await untilSubscriptions(sdkB, name, 2);
    const atA = collect(a.channel(name), 'ex');
    const atB = collect(b.channel(name), 'ex');

    // Triggered on A, excluding the socket on B.
    await sdkA.trigger(name, 'ex', { n: 1 }, { socket_id: b.connection.socket_id });
    // Triggered on B, excluding the socket on A.
    await sdkB.trigger(name, 'ex', { n: 2 }, { socket_id: a.connection.socket_id });
    await atA.atLeast(1);
    await atB.atLeast(1);
    await barrier(sdkA, name, a, b);
    await barrier(sdkB, name, a, b);
    assert.deepEqual(atA.items.map((i) => i.data), [{ n: 1 }]);
    assert.deepEqual(atB.items.map((i) => i.data), [{ n: 2 }]);
  });

  test('Echo whisper crosses nodes and is not echoed to the sender', async () => {
    const room = uniq('cl-room-');
    const pa = await cA.connected({ sdk: sdkA });
    const pb = await cB.connected({ sdk: sdkB });
    const chA = echoFor(pa).private(room);
    const chB = echoFor(pb).private(room);
    await echoSubscribed(chA);
    await echoSubscribed(chB);
    await untilSubscriptions(sdkA, `private-${room}`, 2);
    await untilSubscriptions(sdkB, `private-${room}`, 2);

    const echoedA = [];
    chA.listenForWhisper('typing', (d) => echoedA.push(d));
    const echoedB = [];
    const atB = echoNext((cb) => chB.listenForWhisper('typing', cb), 5000, 'whisper at B');
    chA.whisper('typing', { who: 'a', n: 1 });
    assert.deepEqual((await atB)[0], { who: 'a', n: 1 });
    chB.listenForWhisper('typing', (d) => d.who === 'b' && echoedB.push(d));

    const atA = echoNext(
      (cb) => chA.listenForWhisper('typing', (d) => d.who === 'b' && cb(d)),
      5000,
      'whisper at A',
    );
    chB.whisper('typing', { who: 'b' });
    assert.deepEqual((await atA)[0], { who: 'b' });

    await barrier(sdkA, `private-${room}`, pa);
    await barrier(sdkB, `private-${room}`, pb);
    assert.deepEqual(
      echoedA.filter((d) => d.who === 'a'),
      [],
      'a whisper is not echoed to its sender',
    );
    assert.deepEqual(echoedB, [], 'B got its own whisper back');
  });

  test('Echo presence across nodes: here/joining, a user with tabs on two nodes leaves only with the last tab', async () => {
    const room = uniq('cl-lobby-');
    const ch = `presence-${room}`;

    const pAlice = await cA.connected(as(sdkA, 'alice'));
    const alice = echoMember(pAlice, room);
    assert.deepEqual(names(await alice.here), ['alice']);
    await untilUsers(sdkB, ch, ['alice']);

    const pCarol = await cB.connected(as(sdkB, 'carol'));
    const carol = echoMember(pCarol, room);
    assert.deepEqual(names(await carol.here), ['alice', 'carol'], 'here on B lists the member on A');
    await alice.joining.atLeast(1);
    assert.deepEqual(alice.joined(), ['carol']);

    // bob: one tab on B, then a second tab on A.
    const pBob1 = await cB.connected(as(sdkB, 'bob'));
    const bob1 = echoMember(pBob1, room);
    assert.deepEqual(names(await bob1.here), ['alice', 'bob', 'carol']);
    await alice.joining.atLeast(2);
    await carol.joining.atLeast(1);
    const pBob2 = await cA.connected(as(sdkA, 'bob'));
    const bob2 = echoMember(pBob2, room);
    assert.deepEqual(names(await bob2.here), ['alice', 'bob', 'carol']);
    await untilSubscriptions(sdkA, ch, 4);
    await untilSubscriptions(sdkB, ch, 4);
    await barrier(sdkA, ch, pAlice, pCarol);
    await barrier(sdkB, ch, pAlice, pCarol);
    assert.deepEqual(alice.joined(), ['carol', 'bob'], 'the second tab is no new member');
    assert.deepEqual(carol.joined(), ['bob']);

    // Closing bob's tab on B: bob is still present through his tab on A.
    pBob1.disconnect();
    await untilSubscriptions(sdkA, ch, 3);
    await untilSubscriptions(sdkB, ch, 3);
    await barrier(sdkA, ch, pAlice, pCarol);
    await barrier(sdkB, ch, pAlice, pCarol);
    assert.deepEqual(alice.left(), [], 'no leaving while bob has a tab on A');
    assert.deepEqual(carol.left(), [], 'no leaving while bob has a tab on A');
    await untilUsers(sdkA, ch, ['alice', 'bob', 'carol']);
    await untilUsers(sdkB, ch, ['alice', 'bob', 'carol']);

    // Closing the last tab (on A): leaving on both nodes, once.
    pBob2.disconnect();
    await alice.leaving.atLeast(1);
    await carol.leaving.atLeast(1);
    await untilUsers(sdkA, ch, ['alice', 'carol']);
    await untilUsers(sdkB, ch, ['alice', 'carol']);
    await barrier(sdkA, ch, pAlice, pCarol);
    await barrier(sdkB, ch, pAlice, pCarol);
    assert.deepEqual(alice.left(), ['bob']);
    assert.deepEqual(carol.left(), ['bob']);
    void bob2;
  });

  test('HTTP API on node A answers for connections on node B: /channels, /users, sendToUser, terminateUserConnections', async () => {
    const pub = uniq('cl-api-');
    const pres = `presence-${uniq('cl-api-')}`;
    const onB = await cB.connected(as(sdkB, 'uB'));
    await subscribed(onB, pub);
    await subscribed(onB, pres);
    await untilSubscriptions(sdkA, pub, 1);
    await untilUsers(sdkA, pres, ['uB']);

    const list = await apiGet(sdkA, '/channels', { filter_by_prefix: 'cl-api-', info: 'subscription_count' });
    assert.deepEqual(list.channels[pub], { subscription_count: 1 });
    const plist = await apiGet(sdkA, '/channels', { filter_by_prefix: 'presence-cl-api-', info: 'user_count' });
    assert.deepEqual(plist.channels[pres], { user_count: 1 });
    const one = await apiGet(sdkA, `/channels/${pres}`, { info: 'user_count,subscription_count' });
    assert.deepEqual(one, { occupied: true, user_count: 1, subscription_count: 1 });
    const users = await apiGet(sdkA, `/channels/${pres}/users`);
    assert.deepEqual(users, { users: [{ id: 'uB' }] });

    // sendToUser on A reaches the user's connections on B and on A.
    const id = uniq('cl-user-');
    const marker = uniq('cl-mark-');
    const u1 = await signedIn(cB, sdkB, id);
    const u2 = await signedIn(cA, sdkA, id);
    const bystander = await signedIn(cB, sdkB, uniq('cl-other-'));
    for (const c of [u1, u2, bystander]) await subscribed(c, marker);
    // The marker subscriptions were announced after the sign-ins.
    await untilSubscriptions(sdkA, marker, 3);
    await untilSubscriptions(sdkC, marker, 3);
    const n1 = collect(u1.user, 'notice');
    const n2 = collect(u2.user, 'notice');
    const nb = collect(bystander.user, 'notice');
    const res = await sdkC.sendToUser(id, 'notice', { msg: 'from C 📨' });
    assert.equal(res.status, 200);
    assert.deepEqual((await n1.atLeast(1))[0].data, { msg: 'from C 📨' });
    assert.deepEqual((await n2.atLeast(1))[0].data, { msg: 'from C 📨' });
    await barrier(sdkC, marker, u1, u2, bystander);
    assert.equal(n1.items.length, 1);
    assert.equal(n2.items.length, 1);
    assert.deepEqual(nb.items, []);

    // terminateUserConnections on A closes the user's sockets on B and A.
    const downs = [u1, u2].map((c) => {
      const errors = collect(c.connection, 'error');
      const down = waitFor(c.connection, 'state_change', 5000, ({ current }) =>
        ['disconnected', 'failed', 'unavailable'].includes(current),
      );
      return { c, errors, down };
    });
    const term = await sdkA.terminateUserConnections(id);
    assert.equal(term.status, 200);
    for (const { errors, down } of downs) {
      await down;
      assert.ok(
        errors.items.some((e) => errCode(e.data) === 4009),
        `expected close 4009: ${JSON.stringify(errors.items)}`,
      );
    }
    await untilSubscriptions(sdkA, marker, 1);
    assert.equal(bystander.connection.state, 'connected', 'another user is not terminated');
    await barrier(sdkA, marker, bystander);
  });

  test('kill -9 of a node: its presence members leave on the other nodes exactly once, within 10 s', async () => {
    const room = uniq('cl-kill-');
    const ch = `presence-${room}`;
    const pAlice = await cA.connected(as(sdkA, 'alice'));
    const alice = echoMember(pAlice, room);
    await alice.here;
    const pCarol = await cB.connected(as(sdkB, 'carol'));
    const carol = echoMember(pCarol, room);
    await carol.here;
    // dan only on C; erin on C and on A.
    const pDan = await cC.connected(as(sdkC, 'dan'));
    await subscribed(pDan, ch);
    const pErinC = await cC.connected(as(sdkC, 'erin'));
    await subscribed(pErinC, ch);
    const pErinA = await cA.connected(as(sdkA, 'erin'));
    await subscribed(pErinA, ch);
    for (const sdk of [sdkA, sdkB]) {
      await untilUsers(sdk, ch, ['alice', 'carol', 'dan', 'erin']);
      await untilSubscriptions(sdk, ch, 5);
    }

    const killedAt = Date.now();
    const exit = await C.kill('SIGKILL');
    assert.equal(exit.sig, 'SIGKILL');
    cC.closeAll(); // stop pusher-js reconnecting to the dead port

    await alice.leaving.atLeast(1, 10_000);
    await carol.leaving.atLeast(1, 10_000);
    const took = Date.now() - killedAt;
    assert.ok(took < 10_000, `members removed after ${took} ms`);
    await untilUsers(sdkA, ch, ['alice', 'carol', 'erin']);
    await untilUsers(sdkB, ch, ['alice', 'carol', 'erin']);
    await untilSubscriptions(sdkA, ch, 3);
    await untilSubscriptions(sdkB, ch, 3);
    await barrier(sdkA, ch, pAlice, pCarol);
    await barrier(sdkB, ch, pAlice, pCarol);
    assert.deepEqual(alice.left(), ['dan'], 'erin still has a tab on A; dan leaves once');
    assert.deepEqual(carol.left(), ['dan']);
    for (const n of [A, B]) {
      assert.equal(n.exited, null);
      assert.equal((await fetch(`${n.base}/up`)).status, 200);
    }
  });

  test('redis restarted empty: no crash, broadcasts across nodes resume, presence converges again', async () => {
    const pub = uniq('cl-outage-');
    const a = await cA.connected();
    const b = await cB.connected();
    await subscribed(a, pub);
    await subscribed(b, pub);
    await untilSubscriptions(sdkA, pub, 2);
    await untilSubscriptions(sdkB, pub, 2);

    const room = uniq('cl-outage-room-');
    const ch = `presence-${room}`;
    const pAlice = await cA.connected(as(sdkA, 'alice'));
    const alice = echoMember(pAlice, room);
    await alice.here;
    const pBob = await cB.connected(as(sdkB, 'bob'));
    const bob = echoMember(pBob, room);
    await bob.here;
    const pDave = await cB.connected(as(sdkB, 'dave'));
    await subscribed(pDave, ch);
    await untilUsers(sdkA, ch, ['alice', 'bob', 'dave']);
    await untilUsers(sdkB, ch, ['alice', 'bob', 'dave']);
    await alice.joining.atLeast(2);

    await redis.stop();

    // While redis is down a publish is refused with 503 and Retry-After (never a 200 for an
    // event that is not on the cluster's log), so the SDK throws; membership changes happen on B.
    await assert.rejects(sdkA.trigger(pub, 'refused', { n: 1 }), (err) => {
      assert.equal(err.status, 503, `expected a 503, got ${err}`);
      return true;
    });
    pDave.disconnect();
    await bob.leaving.atLeast(1);
    const pCarol = await cB.connected(as(sdkB, 'carol'));
    await subscribed(pCarol, ch);
    await bob.joining.atLeast(2);
    assert.deepEqual(bob.left(), ['dave']);
    for (const n of [A, B]) {
      assert.equal(n.exited, null, 'a node exited while redis was down');
      assert.equal((await fetch(`${n.base}/up`)).status, 200);
    }

    await redis.start();

    // Broadcasts resume in both directions (retrying while publishes are still refused).
    async function until(sdk, to, event) {
      const got = collect(to.channel(pub), event);
      let i = 0;
      await eventually(
        async () => {
          if (got.items.length > 0) return true;
          try {
            await sdk.trigger(pub, event, { i: i++ });
          } catch (err) {
            if (err.status !== 503) throw err; // Still reconnecting to redis.
          }
          return got.items.length > 0;
        },
        15_000,
        `${event} across nodes after the redis restart`,
        250,
      );
    }
    await until(sdkA, b, 'resumed-a-to-b');
    await until(sdkB, a, 'resumed-b-to-a');

    // Presence converges: carol joined and dave left during the outage.
    await untilUsers(sdkA, ch, ['alice', 'bob', 'carol'], 15_000);
    await untilUsers(sdkB, ch, ['alice', 'bob', 'carol'], 15_000);
    await untilSubscriptions(sdkA, pub, 2, 15_000);
    await eventually(() => alice.joined().includes('carol') && alice.left().includes('dave'), 10_000, () =>
      `alice's Echo to see carol join and dave leave (joined ${alice.joined()}, left ${alice.left()})`,
    );
    await barrier(sdkA, ch, pAlice, pBob);
    await barrier(sdkB, ch, pAlice, pBob);
    assert.deepEqual(alice.joined().sort(), ['bob', 'carol', 'dave'], 'each join seen once');
    assert.deepEqual(alice.left(), ['dave'], 'bob must not flap out and back');
    assert.deepEqual(bob.left(), ['dave'], 'alice must not flap out and back');

    // New joins after the restart replicate normally.
    const pFrank = await cA.connected(as(sdkA, 'frank'));
    await subscribed(pFrank, ch);
    await eventually(() => bob.joined().includes('frank'), 5000, 'bob to see frank join');
    await untilUsers(sdkB, ch, ['alice', 'bob', 'carol', 'frank']);
    for (const n of [A, B]) assert.equal(n.exited, null);
  });
});

describe('cluster webhooks: decided once for the whole cluster', () => {
  let redis;
  let recv;
  let A, B;
  let cA, cB;
  let sdkA, sdkB;

  before(async () => {
    redis = await startRedis();
    recv = await startReceiver();
    [A, B] = await startNodes(redis, 2, {
      top: { webhook_url: recv.url },
      webhooks: { leave_delay: '1s', retry_initial: '200ms', retry_window: '30s', timeout: '2s' },
    });
    [cA, cB] = [A, B].map((n) => new Clients(n));
    [sdkA, sdkB] = [A, B].map((n) => serverSdk(n));
  });
  after(async () => {
    for (const c of [cA, cB]) c?.closeAll();
    for (const n of [A, B]) await n?.stop();
    await redis?.stop();
    await recv?.close();
  });

  const as = (sdk, id) => ({ sdk, presence: () => ({ user_id: id, user_info: { name: id } }) });
  const count = (pred) => recv.matching(pred).length;

  test('subscribers on two nodes: one channel_occupied, one channel_vacated', async () => {
    const name = uniq('cl-wh-occ-');
    const a = await cA.connected();
    const b = await cB.connected();
    await subscribed(a, name);
    await recv.waitEvent(is('channel_occupied', name), 5000, 'channel_occupied');
    await subscribed(b, name);
    await untilSubscriptions(sdkA, name, 2);
    await untilSubscriptions(sdkB, name, 2);
    a.disconnect();
    await untilSubscriptions(sdkB, name, 1);
    b.disconnect();
    await recv.waitEvent(is('channel_vacated', name), 5000, 'channel_vacated');
    await quiet(300);
    assert.equal(count(is('channel_occupied', name)), 1);
    assert.equal(count(is('channel_vacated', name)), 1);
    assert.deepEqual(recv.invalid, []);
  });

  test('a user with tabs on two nodes: one member_added, member_removed after the last tab', async () => {
    const ch = `presence-${uniq('cl-wh-tabs-')}`;
    const t1 = await cA.connected(as(sdkA, 'tom'));
    await subscribed(t1, ch);
    await recv.waitEvent(is('member_added', ch), 5000, 'member_added');
    const t2 = await cB.connected(as(sdkB, 'tom'));
    await subscribed(t2, ch);
    await untilSubscriptions(sdkA, ch, 2);
    t1.disconnect();
    await untilSubscriptions(sdkB, ch, 1);
    await quiet(SILENCE_MS);
    assert.equal(count(is('member_added', ch)), 1, 'the tab on the other node is no new member');
    assert.equal(count(is('member_removed', ch)), 0, 'tom still has a tab on B');
    t2.disconnect();
    await recv.waitEvent(is('member_removed', ch), 5000, 'member_removed');
    await quiet(300);
    assert.equal(count(is('member_removed', ch)), 1);
    assert.equal(count(is('channel_vacated', ch)), 1);
  });

  test('reload onto another node within leave_delay: nothing sent', async () => {
    const ch = `presence-${uniq('cl-wh-reload-')}`;
    const first = await cA.connected(as(sdkA, 'rob'));
    await subscribed(first, ch);
    await recv.waitEvent(is('member_added', ch), 5000, 'member_added');
    await recv.waitEvent(is('channel_occupied', ch), 5000, 'channel_occupied');
    first.disconnect();
    const second = await cB.connected(as(sdkB, 'rob'));
    await subscribed(second, ch);
    await quiet(SILENCE_MS);
    assert.equal(count(is('member_removed', ch)), 0, 'member_removed must be cancelled by the rejoin on B');
    assert.equal(count(is('channel_vacated', ch)), 0, 'channel_vacated must be cancelled by the rejoin on B');
    assert.equal(count(is('member_added', ch)), 1);
    assert.equal(count(is('channel_occupied', ch)), 1);
    second.disconnect();
    await recv.waitEvent(is('member_removed', ch), 5000, 'member_removed');
  });

  test('kill -9 of a node: member_removed once for its users only, channel not vacated', async () => {
    const ch = `presence-${uniq('cl-wh-kill-')}`;
    const C = await startNode(redis, {
      top: { webhook_url: recv.url },
      webhooks: { leave_delay: '1s', retry_initial: '200ms', retry_window: '30s', timeout: '2s' },
    });
    const cC = new Clients(C);
    const sdkC = serverSdk(C);
    try {
      const stay = await cA.connected(as(sdkA, 'ann'));
      await subscribed(stay, ch);
      const kim = await cC.connected(as(sdkC, 'kim'));
      await subscribed(kim, ch);
      const leeC = await cC.connected(as(sdkC, 'lee'));
      await subscribed(leeC, ch);
      const leeA = await cA.connected(as(sdkA, 'lee'));
      await subscribed(leeA, ch);
      await untilSubscriptions(sdkA, ch, 4);
      await untilSubscriptions(sdkB, ch, 4);
      for (const u of ['ann', 'kim', 'lee']) await recv.waitEvent(is('member_added', ch, { user_id: u }), 5000, `member_added ${u}`);

      await C.kill('SIGKILL');
      cC.closeAll();
      await recv.waitEvent(is('member_removed', ch, { user_id: 'kim' }), 10_000, 'member_removed kim');
      await untilUsers(sdkA, ch, ['ann', 'lee']);
      await untilUsers(sdkB, ch, ['ann', 'lee']);
      await quiet(SILENCE_MS);
      assert.equal(count(is('member_removed', ch, { user_id: 'kim' })), 1, 'one member_removed for the cluster');
      assert.equal(count(is('member_removed', ch, { user_id: 'lee' })), 0, 'lee still has a socket on A');
      assert.equal(count(is('channel_vacated', ch)), 0);
      for (const u of ['ann', 'kim', 'lee']) assert.equal(count(is('member_added', ch, { user_id: u })), 1);
    } finally {
      cC.closeAll();
      await C.stop();
    }
  });
});
