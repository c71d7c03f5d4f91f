// Shared helpers for the herald conformance suite.
//
// Every test file starts its own herald process(es) on free loopback ports
// (startServer), drives them with the real pusher-js / laravel-echo clients
// and the real `pusher` Node server SDK, and tears everything down at the end.
// All waits are event driven with a timeout that fails the test (waitFor);
// nothing sleeps to synchronise.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import Pusher from 'pusher-js';
import PusherServer from 'pusher';
import Echo from 'laravel-echo';

export { Pusher, PusherServer, Echo };

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = resolve(HERE, '..', '..', '..', '..');

export const APP = Object.freeze({ id: '1', key: 'app-key', secret: 'app-secret' });
export const DEFAULT_TIMEOUT = 5000;

/** Path of the herald binary: $HERALD_BIN, else target/release, else target/debug. */
export function heraldBinary() {
  const candidates = [];
  if (process.env.HERALD_BIN) {
    const p = resolve(process.env.HERALD_BIN);
    if (!existsSync(p)) throw new Error(`HERALD_BIN=${process.env.HERALD_BIN} does not exist`);
    return p;
  }
  candidates.push(join(REPO_ROOT, 'target', 'release', 'herald'));
  candidates.push(join(REPO_ROOT, 'target', 'debug', 'herald'));
  for (const c of candidates) if (existsSync(c)) return c;
  throw new Error(
    `herald binary not found (looked at ${candidates.join(', ')}); ` +
      'build it with `cargo build --release -p herald-server` or set HERALD_BIN',
  );
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

function tomlValue(v) {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(', ')}]`;
  if (v && typeof v === 'object') {
    return `{ ${Object.entries(v)
      .map(([k, x]) => `${JSON.stringify(k)} = ${tomlValue(x)}`)
      .join(', ')} }`;
  }
  throw new Error(`unsupported TOML value ${v}`);
}

function tomlTable(obj) {
  return Object.entries(obj)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k} = ${tomlValue(v)}`)
    .join('\n');
}

/**
 * Build a herald config file. `top` holds top-level keys, `limits`,
 * `webhooks` and `cluster` the tables of those names, `apps` a list of
 * [[apps]] tables (defaults to the one default app with client events and
 * subscription_count on); an app's `webhooks` list becomes [[apps.webhooks]].
 */
export function buildConfig({ top = {}, limits = {}, webhooks = {}, cluster = {}, apps } = {}) {
  const appList = apps ?? [{}];
  const parts = [];
  const topKeys = tomlTable(top);
  if (topKeys) parts.push(topKeys);
  for (const [name, table] of [
    ['limits', limits],
    ['webhooks', webhooks],
    ['cluster', cluster],
  ]) {
    const keys = tomlTable(table);
    if (keys) parts.push(`[${name}]\n${keys}`);
  }
  // Stop fast: no drain pacing in tests.
  parts.push('[drain]\ndelay = "0s"\nwindow = "0s"\ndeadline = "1s"');
  for (const { webhooks: targets = [], ...a } of appList) {
    parts.push(
      '[[apps]]\n' +
        tomlTable({
          id: APP.id,
          key: APP.key,
          secret: APP.secret,
          client_events: true,
          subscription_count: true,
          ...a,
        }),
    );
    for (const t of targets) parts.push(`[[apps.webhooks]]\n${tomlTable(t)}`);
  }
  return parts.join('\n\n') + '\n';
}

/**
 * Start herald on a free port (or on `port`) and wait until GET /up answers 200.
 * `redisUrl` joins it to a cluster (--redis-url); `env` adds environment variables
 * (`HERALD_DRAIN__WINDOW`, ...: the environment overrides the config file).
 * Returns { port, base, stop(), kill(signal), logs() }.
 */
export async function startServer(configOpts = {}, { readyTimeout = 15000, redisUrl, port: fixedPort, env = {} } = {}) {
  const bin = heraldBinary();
  const dir = mkdtempSync(join(tmpdir(), 'herald-conf-'));
  const cfgPath = join(dir, 'herald.toml');
  writeFileSync(cfgPath, buildConfig(configOpts));

  let lastErr;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = fixedPort ?? (await freePort());
    const args = ['start', '--host', '127.0.0.1', '--port', String(port), '--config', cfgPath];
    if (redisUrl) args.push('--redis-url', redisUrl);
    const child = spawn(bin, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1', RUST_LOG: process.env.RUST_LOG ?? 'warn', ...env },
    });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    let exited = null;
    const exitPromise = new Promise((r) => child.once('exit', (code, sig) => r((exited = { code, sig }))));

    const prefix = configOpts.top?.path_prefix ?? '';
    const base = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + readyTimeout;
    let ready = false;
    while (Date.now() < deadline && !exited) {
      try {
        const r = await fetch(`${base}/up`, { signal: AbortSignal.timeout(1000) });
        if (r.status === 200) {
          ready = true;
          break;
        }
      } catch {
        /* not listening yet */
      }
      // Poll interval for process readiness (not test synchronisation).
      await Promise.race([new Promise((r) => setTimeout(r, 50)), exitPromise]);
    }
    if (ready) {
      const server = {
        port,
        base,
        prefix,
        configPath: cfgPath,
        logs: () => output,
        async stop() {
          if (exited) return;
          child.kill('SIGTERM');
          const t = setTimeout(() => child.kill('SIGKILL'), 3000);
          await exitPromise;
          clearTimeout(t);
          rmSync(dir, { recursive: true, force: true });
        },
        /** Send `signal` (e.g. SIGKILL) and wait for the process to exit. */
        async kill(signal = 'SIGKILL') {
          if (exited) return exited;
          child.kill(signal);
          const res = await exitPromise;
          rmSync(dir, { recursive: true, force: true });
          return res;
        },
        get exited() {
          return exited;
        },
      };
      return server;
    }
    child.kill('SIGKILL');
    await exitPromise;
    lastErr = new Error(
      `herald did not become ready on port ${port} (exit=${JSON.stringify(exited)}):\n${output}`,
    );
  }
  throw lastErr;
}

/**
 * Resolve with the arguments of the next `event` on a pusher-js style
 * (bind/unbind) or Node style (on/off) emitter; reject after `ms`.
 * `predicate(data)` may filter which emission counts.
 */
export function waitFor(emitter, event, ms = DEFAULT_TIMEOUT, predicate = () => true) {
  const on = (emitter.bind ?? emitter.on).bind(emitter);
  const off = (emitter.unbind ?? emitter.off).bind(emitter);
  return new Promise((res, rej) => {
    const handler = (...args) => {
      let ok;
      try {
        ok = predicate(...args);
      } catch (e) {
        cleanup();
        rej(e);
        return;
      }
      if (ok) {
        cleanup();
        res(args[0]);
      }
    };
    const timer = setTimeout(() => {
      cleanup();
      rej(new Error(`timed out after ${ms} ms waiting for "${event}"`));
    }, ms);
    const cleanup = () => {
      clearTimeout(timer);
      off(event, handler);
    };
    on(event, handler);
  });
}

/** Fail if `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, what) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, rej) => {
      t = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

/**
 * Records every emission of `event` on a bind-style emitter so a test can
 * await "the n-th one" and also assert on the total count later.
 */
export function collect(emitter, event) {
  const items = [];
  const waiters = [];
  const on = (emitter.bind ?? emitter.on).bind(emitter);
  on(event, (data, meta) => {
    items.push({ data, meta });
    for (const w of [...waiters]) {
      if (items.length >= w.n) {
        waiters.splice(waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.res(items.slice());
      }
    }
  });
  return {
    items,
    /** Resolve once at least `n` have been seen. */
    atLeast(n, ms = DEFAULT_TIMEOUT) {
      if (items.length >= n) return Promise.resolve(items.slice());
      return new Promise((res, rej) => {
        const w = { n, res };
        w.timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          rej(new Error(`timed out after ${ms} ms waiting for ${n} x "${event}" (got ${items.length})`));
        }, ms);
        waiters.push(w);
      });
    },
  };
}

/** The official Node server SDK pointed at `server`. */
export function serverSdk(server, extra = {}) {
  return new PusherServer({
    appId: APP.id,
    key: APP.key,
    secret: APP.secret,
    host: '127.0.0.1',
    port: String(server.port),
    useTLS: false,
    ...extra,
  });
}

/**
 * Tracks the clients a test file creates so `closeAll()` can disconnect them.
 */
export class Clients {
  constructor(server) {
    this.server = server;
    this.list = [];
  }

  /**
   * A pusher-js client. `sdk` (a server SDK) authorizes private/presence
   * channels and user sign-in via customHandlers; `presence(channelName)`
   * returns the presence channel_data ({user_id, user_info}); `user` is the
   * sign-in user data.
   */
  pusher({ sdk, presence, user, key = APP.key, options = {} } = {}) {
    const s = this.server;
    const opts = {
      cluster: 'mt1',
      wsHost: '127.0.0.1',
      wsPort: s.port,
      forceTLS: false,
      enabledTransports: ['ws'],
      disableStats: true,
      ...(s.prefix ? { wsPath: s.prefix } : {}),
    };
    if (sdk) {
      opts.channelAuthorization = {
        customHandler: ({ socketId, channelName }, cb) => {
          try {
            const data = channelName.startsWith('presence-') ? presence?.(channelName) : undefined;
            cb(null, sdk.authorizeChannel(socketId, channelName, data));
          } catch (e) {
            cb(e, null);
          }
        },
      };
      opts.userAuthentication = {
        customHandler: ({ socketId }, cb) => {
          try {
            cb(null, sdk.authenticateUser(socketId, user ?? { id: 'u1' }));
          } catch (e) {
            cb(e, null);
          }
        },
      };
    }
    const client = new Pusher(key, { ...opts, ...options });
    this.list.push(client);
    return client;
  }

  /** A pusher-js client, resolved once connected. */
  async connected(opts = {}, ms = DEFAULT_TIMEOUT) {
    const c = this.pusher(opts);
    if (c.connection.state !== 'connected') await waitFor(c.connection, 'connected', ms);
    return c;
  }

  closeAll() {
    for (const c of this.list) {
      try {
        c.disconnect();
      } catch {
        /* already gone */
      }
    }
    this.list = [];
  }
}

/** Subscribe and resolve with the pusher-js channel once subscription_succeeded arrives. */
export function subscribed(client, name, ms = DEFAULT_TIMEOUT) {
  const ch = client.subscribe(name);
  return new Promise((res, rej) => {
    const ok = (data) => {
      done();
      res({ channel: ch, data });
    };
    const bad = (e) => {
      done();
      rej(new Error(`subscription to ${name} failed: ${JSON.stringify(e)}`));
    };
    const timer = setTimeout(() => {
      done();
      rej(new Error(`timed out after ${ms} ms waiting for subscription_succeeded on ${name}`));
    }, ms);
    const done = () => {
      clearTimeout(timer);
      ch.unbind('pusher:subscription_succeeded', ok);
      ch.unbind('pusher:subscription_error', bad);
    };
    ch.bind('pusher:subscription_succeeded', ok);
    ch.bind('pusher:subscription_error', bad);
  });
}

/** `n` distinct-ish channel names for a test, so tests never share state. */
let seq = 0;
export function uniq(prefix) {
  seq += 1;
  return `${prefix}${process.pid}-${Date.now().toString(36)}-${seq}`;
}
