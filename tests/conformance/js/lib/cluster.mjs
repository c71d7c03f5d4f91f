// Cluster helpers: a private redis-server per test file and herald nodes
// joined to it with --redis-url. Replication between nodes is asynchronous,
// so tests poll a node's HTTP API (eventually) before asserting on events.
import { spawn } from 'node:child_process';
import { connect } from 'node:net';

import { freePort, startServer } from './harness.mjs';

/** Fast failure detection for tests. */
export const CLUSTER = Object.freeze({ heartbeat_interval: '200ms', node_timeout: '2s' });

function redisPing(port) {
  return new Promise((res) => {
    const sock = connect({ host: '127.0.0.1', port });
    let buf = '';
    const done = (ok) => {
      sock.destroy();
      res(ok);
    };
    sock.setTimeout(500, () => done(false));
    sock.on('error', () => done(false));
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      buf += d;
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG'));
    });
  });
}

/**
 * Start `redis-server` (REDIS_SERVER or redis-server on PATH) on a free
 * port without persistence. `stop()` ends it (its data is gone), `start()`
 * starts it again on the same port.
 */
export async function startRedis() {
  const bin = process.env.REDIS_SERVER ?? 'redis-server';
  const port = await freePort();
  let child = null;
  let exitPromise = null;
  let output = '';

  const redis = {
    port,
    url: `redis://127.0.0.1:${port}`,
    logs: () => output,
    async start(readyTimeout = 10000) {
      if (child) return;
      child = spawn(bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      child.stdout.on('data', (d) => (output += d));
      child.stderr.on('data', (d) => (output += d));
      let exited = false;
      exitPromise = new Promise((r) =>
        child.once('exit', () => {
          exited = true;
          r();
        }),
      );
      const deadline = Date.now() + readyTimeout;
      while (Date.now() < deadline && !exited) {
        if (await redisPing(port)) return;
        // Poll interval for process readiness (not test synchronisation).
        await new Promise((r) => setTimeout(r, 50));
      }
      const out = output;
      await redis.stop();
      throw new Error(`redis-server did not become ready on port ${port}:\n${out}`);
    },
    async stop(signal = 'SIGTERM') {
      if (!child) return;
      const c = child;
      const exited = exitPromise;
      child = null;
      c.kill(signal);
      const t = setTimeout(() => c.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
    },
  };
  await redis.start();
  return redis;
}

/** Start `n` herald nodes on one redis. */
export async function startNodes(redis, n, configOpts = {}) {
  const nodes = [];
  for (let i = 0; i < n; i++) nodes.push(await startNode(redis, configOpts));
  return nodes;
}

export function startNode(redis, configOpts = {}) {
  return startServer({ ...configOpts, cluster: { ...CLUSTER, ...configOpts.cluster } }, { redisUrl: redis.url });
}

/**
 * Poll `fn` (sync or async) until it returns a truthy value, every `every`
 * ms; reject after `ms` with `what` (a string, or a function called at the
 * timeout) and the last value seen.
 */
export async function eventually(fn, ms, what, every = 50) {
  const deadline = Date.now() + ms;
  let last;
  let lastErr;
  while (Date.now() < deadline) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      lastErr = e;
    }
    await new Promise((r) => setTimeout(r, every));
  }
  throw new Error(
    `timed out after ${ms} ms waiting for ${typeof what === 'function' ? what() : what}; last: ${JSON.stringify(last)}${lastErr ? ` (${lastErr})` : ''}`,
  );
}

/** GET a signed HTTP API path through the Node SDK and parse the JSON body. */
export async function apiGet(sdk, path, params = {}) {
  const res = await sdk.get({ path, params });
  if (res.status !== 200) throw new Error(`GET ${path} -> ${res.status}`);
  return res.json();
}

/** Wait until `sdk`'s node reports `channel` with subscription_count `n`. */
export function untilSubscriptions(sdk, channel, n, ms = 5000) {
  let seen;
  return eventually(
    async () => {
      seen = await apiGet(sdk, `/channels/${channel}`, { info: 'subscription_count' });
      return (seen.subscription_count ?? 0) === n ? seen : false;
    },
    ms,
    () => `subscription_count ${n} on ${channel} (node said ${JSON.stringify(seen)})`,
  );
}

/** Wait until `sdk`'s node lists exactly `ids` (sorted) as the presence channel's users. */
export function untilUsers(sdk, channel, ids, ms = 5000) {
  const want = JSON.stringify([...ids].sort());
  let seen;
  return eventually(
    async () => {
      const body = await apiGet(sdk, `/channels/${channel}/users`);
      seen = body.users.map((u) => u.id).sort();
      return JSON.stringify(seen) === want ? seen : false;
    },
    ms,
    () => `users ${want} on ${channel} (node said ${JSON.stringify(seen)})`,
  );
}
