// 16. Continuity as a user sees it: three herald nodes on one redis-server behind a round-robin
// TCP balancer that follows each node's /ready (lib/balancer.mjs), 24 real pusher-js clients
// (Node) on a public, a private and a presence channel, half of them signed in, and the `pusher`
// SDK publishing one event every 50 ms per channel through the balancer, each publish waiting for
// its answer. Every event carries a sequence number per channel (a new one per attempt: a 503 or
// a network error is retried as a new event).
//
// - A rolling restart (SIGTERM, drain, restart on the same port, /ready, next node): every client
//   that herald can recognise (docs/guide/continuity.md, "Delivery guarantee": its presence
//   user_id on the presence channel, its `pusher:signin` user id on the others: the harness
//   authenticates users with a synchronous customHandler, so pusher-js sends `pusher:signin`
//   before it resubscribes) receives every event that got a 200 while it was subscribed exactly
//   once and in publish order; a client herald cannot recognise (a Node client on a public or
//   private channel without sign-in) gets no replay, so it may miss what was published during its
//   reconnect, but never gets a duplicate nor a reordering. No event refused with a 503 reaches
//   anyone.
// - Redis killed for 2 s and restarted empty (no persistence): publishes get 503s during the
//   outage, and every event that got a 200 reaches every subscriber (which stayed connected);
//   the only exception the guarantee allows is an event appended just before the crash that no
//   node had read, whose subscribers got `herald:resume_failed` `log_lost`; order is kept and
//   nothing is duplicated.
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { Clients, serverSdk, startServer, uniq, withTimeout } from '../lib/harness.mjs';
import { CLUSTER, eventually, startRedis } from '../lib/cluster.mjs';
import { startBalancer } from '../lib/balancer.mjs';

// The issue's measurement used 60; 24 keeps the debug build's run short (ROLL_CLIENTS overrides).
const CLIENTS = Number(process.env.ROLL_CLIENTS ?? 24);
const EVERY_MS = 50;
// Short drain so the test stays well under a minute: the balancer polls /ready every 100 ms,
// so 300 ms of delay lets it stop sending new sockets before the node stops accepting.
const DRAIN_ENV = {
  HERALD_DRAIN__DELAY: '300ms',
  HERALD_DRAIN__WINDOW: '1s',
  HERALD_DRAIN__DEADLINE: '3s',
};
const NODE_CONFIG = { cluster: CLUSTER };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A cluster of `n` nodes on `redis`, each restartable on its own port. */
async function startCluster(redis, n) {
  const nodes = [];
  for (let i = 0; i < n; i++) {
    nodes.push(await startServer(NODE_CONFIG, { redisUrl: redis.url, env: DRAIN_ENV }));
  }
  return nodes;
}

async function untilReady(port, ms = 15_000) {
  await eventually(
    async () => (await fetch(`http://127.0.0.1:${port}/ready`, { signal: AbortSignal.timeout(500) })).status === 200,
    ms,
    `/ready on port ${port}`,
  );
}

/**
 * One run: `CLIENTS` pusher-js clients through `balancer`, each on three fresh channels,
 * publishers on each channel, and a record of everything seen.
 */
class Run {
  constructor(balancer) {
    this.balancer = balancer;
    this.server = { port: balancer.port, prefix: '' };
    this.sdk = serverSdk(this.server, { agent: new http.Agent({ keepAlive: false }), timeout: 5000 });
    this.clients = new Clients(this.server);
    const base = uniq('roll-');
    this.channels = [base, `private-${base}`, `presence-${base}`];
    this.subs = []; // one per client and channel
    this.members = [];
    this.publishes = new Map(this.channels.map((c) => [c, []]));
    this.stopping = false;
    this.publishers = [];
  }

  /** Creates the clients and waits until each is subscribed to every channel. */
  async connect() {
    const waits = [];
    for (let i = 0; i < CLIENTS; i++) {
      const id = `u${i}`;
      const signedIn = i % 2 === 0;
      const client = this.clients.pusher({
        sdk: this.sdk,
        user: { id },
        presence: () => ({ user_id: id, user_info: { name: id } }),
      });
      const member = { id, signedIn, client, states: [], signins: 0 };
      client.connection.bind('state_change', ({ current }) => member.states.push({ t: Date.now(), current }));
      client.connection.bind('message', (m) => m.event === 'pusher:signin_success' && (member.signins += 1));
      if (signedIn) client.signin();
      this.members.push(member);
      for (const name of this.channels) {
        const sub = {
          member,
          channel: name,
          // Herald recognises the client on this channel (docs/guide/continuity.md, "Delivery
          // guarantee", "Returning clients").
          identified: name.startsWith('presence-') || signedIn,
          got: [],
          succeeded: [],
          failed: [],
        };
        const ch = client.subscribe(name);
        ch.bind('seq', (data) => sub.got.push({ seq: data.seq, t: Date.now() }));
        ch.bind('herald:resume_failed', (data) => sub.failed.push({ t: Date.now(), data }));
        waits.push(
          new Promise((res, rej) => {
            const timer = setTimeout(() => rej(new Error(`no subscription_succeeded on ${name} for ${id}`)), 10_000);
            ch.bind('pusher:subscription_succeeded', () => {
              sub.succeeded.push(Date.now());
              clearTimeout(timer);
              res();
            });
            ch.bind('pusher:subscription_error', (e) => rej(new Error(`${id} on ${name}: ${JSON.stringify(e)}`)));
          }),
        );
        this.subs.push(sub);
      }
    }
    await Promise.all(waits);
  }

  /** One publisher per channel: one event every EVERY_MS, each after the previous answer. */
  startPublishing() {
    for (const name of this.channels) {
      const log = this.publishes.get(name);
      this.publishers.push(
        (async () => {
          let seq = 0;
          while (!this.stopping) {
            const entry = { seq: seq++, t0: Date.now(), t1: null, status: null };
            log.push(entry);
            try {
              const res = await this.sdk.trigger(name, 'seq', { seq: entry.seq });
              entry.status = res.status;
            } catch (err) {
              entry.status = err.status ?? `error: ${err.error?.code ?? err.error?.message ?? err.message}`;
            }
            entry.t1 = Date.now();
            // The publishing rate (pacing, not synchronisation).
            await sleep(Math.max(0, entry.t0 + EVERY_MS - Date.now()));
          }
        })(),
      );
    }
  }

  async stopPublishing() {
    this.stopping = true;
    await Promise.all(this.publishers);
  }

  accepted(name) {
    return this.publishes.get(name).filter((p) => p.status === 200);
  }

  /** Waits until every subscription got the last accepted event of its channel (or it lost it). */
  async settle(ms = 15_000) {
    const last = new Map(this.channels.map((c) => [c, this.accepted(c).at(-1)?.seq]));
    await eventually(
      () => this.subs.every((s) => s.got.some((g) => g.seq === last.get(s.channel))),
      ms,
      () => {
        const behind = this.subs.filter((s) => !s.got.some((g) => g.seq === last.get(s.channel)));
        return `every subscriber to get the last accepted event (${behind.length} behind: ${behind
          .slice(0, 5)
          .map((s) => `${s.member.id} on ${s.channel} at ${s.got.at(-1)?.seq}`)
          .join(', ')})`;
      },
    );
  }

  /**
   * Checks each subscription against the publishes: strictly increasing sequence numbers (in
   * order, no duplicates), no event that was refused, and every accepted event published after
   * its first subscription_succeeded unless `lost(sub, event)` excuses it.
   * Returns the per-subscription misses.
   */
  check(lost, inFlight = () => false) {
    const problems = [];
    const misses = [];
    for (const s of this.subs) {
      const pubs = this.publishes.get(s.channel);
      const seqs = s.got.map((g) => g.seq);
      for (let i = 1; i < seqs.length; i++) {
        if (seqs[i] <= seqs[i - 1]) {
          problems.push(`${s.member.id} on ${s.channel}: ${seqs[i]} after ${seqs[i - 1]} (duplicate or out of order)`);
        }
      }
      const got = new Set(seqs);
      for (const seq of got) {
        const p = pubs[seq];
        if (!p) problems.push(`${s.member.id} on ${s.channel}: unknown event ${seq}`);
        else if (typeof p.status === 'number' && p.status !== 200 && !inFlight(p)) {
          problems.push(`${s.member.id} on ${s.channel}: got event ${seq} whose publish was answered ${p.status}`);
        }
      }
      const from = s.succeeded[0];
      const missing = pubs.filter((p) => p.status === 200 && p.t0 >= from && !got.has(p.seq));
      for (const p of missing) {
        misses.push({ sub: s, p });
        if (!lost(s, p)) problems.push(`${s.member.id} on ${s.channel} (${s.identified ? 'identified' : 'unidentified'}) missed accepted event ${p.seq}`);
      }
    }
    return { problems, misses };
  }

  close() {
    this.clients.closeAll();
  }
}

/** Statistics of the events whose publish started in [from, to). */
function rollStats(run, from, to, misses) {
  let ok = 0;
  const other = {};
  for (const name of run.channels) {
    for (const p of run.publishes.get(name)) {
      if (p.t0 < from || p.t0 >= to) continue;
      if (p.status === 200) ok += 1;
      else other[p.status] = (other[p.status] ?? 0) + 1;
    }
  }
  // Deliveries of events published while their subscriber was between two subscriptions (replays).
  let replayed = 0;
  let reconnects = 0;
  for (const s of run.subs) {
    const pubs = run.publishes.get(s.channel);
    for (let k = 1; k < s.succeeded.length; k++) {
      const back = s.succeeded[k];
      if (back < from || back >= to) continue;
      reconnects += 1;
      const down = s.member.states.filter((x) => x.current !== 'connected' && x.t <= back).at(-1)?.t ?? back;
      replayed += s.got.filter((g) => {
        const p = pubs[g.seq];
        return p.t0 >= down && p.t1 <= back;
      }).length;
    }
  }
  const missed = misses.filter((m) => m.p.t0 >= from && m.p.t0 < to);
  return {
    accepted: ok,
    refused: other,
    resubscriptions: reconnects,
    replayed,
    missed_identified: missed.filter((m) => m.sub.identified).length,
    missed_unidentified: missed.filter((m) => !m.sub.identified).length,
  };
}

describe('rolling restart of three nodes behind a /ready-following balancer, real pusher-js', () => {
  let redis;
  let nodes;
  let balancer;
  let run;

  before(async () => {
    redis = await startRedis();
    nodes = await startCluster(redis, 3);
    balancer = await startBalancer(nodes.map((n) => ({ port: n.port })));
  });
  after(async () => {
    run?.close();
    await balancer?.close();
    for (const n of nodes ?? []) await n?.stop();
    await redis?.stop();
  });

  test('every recognised client gets every accepted event exactly once, in order; nobody gets a duplicate', async () => {
    run = new Run(balancer);
    await run.connect();
    assert.deepEqual(
      balancer.stats.perBackend.map((n) => n > 0),
      [true, true, true],
      `the balancer spread the clients: ${balancer.stats.perBackend}`,
    );
    run.startPublishing();
    // Let the publishers run a moment before the first roll.
    await eventually(() => run.channels.every((c) => run.accepted(c).length >= 10), 10_000, '10 accepted events per channel');

    const rolls = [];
    for (const [i, node] of nodes.entries()) {
      const start = Date.now();
      const before = run.subs.map((s) => s.succeeded.length);
      const exit = await withTimeout(node.kill('SIGTERM'), 15_000, `node ${i} to exit after SIGTERM`);
      const exitedAt = Date.now();
      assert.deepEqual(exit, { code: 0, sig: null }, `node ${i} exits 0 after its drain:\n${node.logs()}`);
      const restarted = await startServer(NODE_CONFIG, { redisUrl: redis.url, env: DRAIN_ENV, port: node.port });
      nodes[i] = restarted;
      await untilReady(restarted.port);
      await eventually(() => balancer.ready()[i], 5000, `the balancer to see node ${i} ready`);
      // Every client that was on the drained node is subscribed again before the next roll.
      await eventually(
        () => run.members.every((m) => m.client.connection.state === 'connected'),
        10_000,
        'every client connected again',
      );
      const moved = run.subs.filter((s, k) => s.succeeded.length > before[k]).length;
      await eventually(
        () => run.channels.every((c) => run.accepted(c).at(-1)?.t1 > Date.now() - 500),
        10_000,
        'publishes accepted again',
      );
      rolls.push({ node: i, start, exitedAt, end: Date.now(), moved });
    }
    // A last stretch of publishing after the last roll.
    const lastRoll = Date.now();
    await eventually(
      () => run.channels.every((c) => run.accepted(c).filter((p) => p.t0 > lastRoll).length >= 10),
      10_000,
      '10 more accepted events per channel',
    );
    await run.stopPublishing();
    await run.settle();

    const { problems, misses } = run.check((s) => !s.identified);
    const stats = rolls.map((r) => ({
      roll: `node ${r.node}`,
      drain_ms: r.exitedAt - r.start,
      roll_ms: r.end - r.start,
      ...rollStats(run, r.start, r.end, misses),
    }));
    const total = run.channels.reduce((n, c) => n + run.publishes.get(c).length, 0);
    const accepted = run.channels.reduce((n, c) => n + run.accepted(c).length, 0);
    const deliveries = run.subs.reduce((n, s) => n + s.got.length, 0);
    console.log('rolling restart, per roll:');
    console.table(stats);
    console.log(
      `publishes: ${total}, accepted: ${accepted}, deliveries: ${deliveries}, ` +
        `identified subscriptions: ${run.subs.filter((s) => s.identified).length}/${run.subs.length}, ` +
        `balancer connections per node: ${balancer.stats.perBackend}, refused: ${balancer.stats.refused}`,
    );
    const failed = run.subs.filter((s) => s.failed.length > 0);
    assert.deepEqual(
      failed.map((s) => `${s.member.id} on ${s.channel}: ${JSON.stringify(s.failed)}`),
      [],
      'no resume failed during a rolling restart',
    );
    assert.deepEqual(problems, []);
    for (const r of stats) assert.ok(r.resubscriptions > 0, `clients moved during ${r.roll}`);
    assert.ok(
      stats.reduce((n, r) => n + r.replayed, 0) > 0,
      'some events were published while clients were reconnecting, and replayed',
    );
    assert.ok(
      run.members.filter((m) => m.signedIn).every((m) => m.signins >= 2),
      'signed-in clients signed in again after moving',
    );
    run.close();
    run = null;
  });

  test('redis killed for 2 s and restarted empty: 503s meanwhile; every 200 is delivered or its subscriber is told', async () => {
    run = new Run(balancer);
    await run.connect();
    run.startPublishing();
    await eventually(() => run.channels.every((c) => run.accepted(c).length >= 10), 10_000, '10 accepted events per channel');

    const killedAt = Date.now();
    await redis.stop('SIGKILL');
    await eventually(
      () => run.channels.every((c) => run.publishes.get(c).some((p) => p.t0 > killedAt && p.status === 503)),
      5000,
      'a 503 on every channel while redis is down',
    );
    // The outage lasts 2 s (its length, not synchronisation).
    await sleep(Math.max(0, killedAt + 2000 - Date.now()));
    const restartedAt = Date.now();
    await redis.start();
    const redisReadyAt = Date.now();
    await eventually(
      () => run.channels.every((c) => run.accepted(c).some((p) => p.t0 > restartedAt)),
      10_000,
      'publishes accepted again after redis is back',
    );
    // From redis answering PING to the first publish answered 200 (on any channel).
    const backAfter = Math.min(
      ...run.channels.map((c) => run.accepted(c).find((p) => p.t0 > restartedAt).t1 - redisReadyAt),
    );
    const lastOutage = Date.now();
    await eventually(
      () => run.channels.every((c) => run.accepted(c).filter((p) => p.t0 > lastOutage).length >= 10),
      10_000,
      '10 more accepted events per channel',
    );
    await run.stopPublishing();
    await run.settle();

    // What the guarantee lets Redis lose (restarted without persistence): an event appended just
    // before the crash that no node had read yet; the subscribers are told (log_lost). So an
    // event is excused only if it was answered in the last second before the kill and its
    // subscriber was told; events accepted after Redis is back are never excused.
    const told = (s) => s.failed.some((f) => f.data?.reason === 'log_lost');
    // A publish in flight when Redis died may have been appended (and read by the nodes) with
    // its answer lost: it gets a 503 yet is delivered (docs/guide/continuity.md, "Delivery
    // guarantee": the outcome of a 503 answered to a broken connection is unknown; a retry may
    // duplicate it). Only those.
    const inFlight = (p) => p.t0 <= killedAt && p.t1 >= killedAt;
    const { problems, misses } = run.check(
      (s, p) => told(s) && p.t1 >= killedAt - 1000 && p.t1 <= killedAt,
      inFlight,
    );
    const stats = rollStats(run, killedAt, lastOutage, misses);
    console.log('redis blip:');
    console.table([
      {
        outage_ms: restartedAt - killedAt,
        redis_start_ms: redisReadyAt - restartedAt,
        first_200_after_ready_ms: backAfter,
        ...stats,
        told_log_lost: run.subs.filter(told).length,
      },
    ]);
    assert.deepEqual(problems, []);
    // docs/internals/cluster.md, "Gaps": cross-node delivery is back within a second of Redis
    // (reader backoff 50-500 ms); a debug build on a loaded box gets some slack.
    assert.ok(backAfter < 3000, `publishes accepted ${backAfter} ms after redis was back`);
    assert.ok(Object.keys(stats.refused).includes('503'), `publishes were refused with 503: ${JSON.stringify(stats.refused)}`);
    for (const s of run.subs) {
      assert.deepEqual(
        s.failed.filter((f) => f.data?.reason !== 'log_lost'),
        [],
        `${s.member.id} on ${s.channel}: only log_lost`,
      );
    }
    for (const m of run.members) assert.equal(m.client.connection.state, 'connected', `${m.id} stayed connected`);
  });
});
