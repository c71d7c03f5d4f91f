// 15. Apps kept in Postgres (app_store.url): two herald nodes on one Redis
// and one Postgres. An app created through the admin API on node 1 is served
// by node 2 within 2 s (pusher-js connects with its key); rotating its secret
// makes the old signature fail in the Node SDK; disabling it closes the
// pusher-js socket with 4003; with Postgres stopped the known apps keep
// working (connect and publish) and /ready stays 200, saying so.
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { Clients, PusherServer, collect, subscribed, uniq, waitFor } from '../lib/harness.mjs';
import { eventually, startNode, startRedis } from '../lib/cluster.mjs';
import { startPostgres } from '../lib/postgres.mjs';

const TOKEN = `admin-${randomBytes(8).toString('hex')}`;
/** Every node sees a change within this long (the bound). */
const PROPAGATION_MS = 2000;
const errCode = (e) => e?.data?.code ?? e?.error?.data?.code;

async function adminApi(node, method, path, body) {
  const res = await fetch(`${node.base}/admin/api${path}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10000),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, body: json };
}

/** Writes apps through node 1's admin API. */
function appWriter(node) {
  return {
    async create(fields) {
      const { status, body } = await adminApi(node, 'POST', '/apps', fields);
      assert.equal(status, 201, `POST /admin/api/apps: ${JSON.stringify(body)}`);
      assert.equal(body.app.secret, undefined, 'the app view never carries the secret');
      return { id: body.app.id, key: body.app.key, secret: body.secret };
    },
    async rotate(id) {
      const { status, body } = await adminApi(node, 'POST', `/apps/${id}/rotate-secret`);
      assert.equal(status, 200, `rotate-secret: ${JSON.stringify(body)}`);
      return body.secret;
    },
    async setEnabled(id, enabled) {
      const { status, body } = await adminApi(node, 'PATCH', `/apps/${id}`, { enabled });
      assert.equal(status, 200, `PATCH enabled=${enabled}: ${JSON.stringify(body)}`);
      assert.equal(body.enabled, enabled);
    },
  };
}

function sdkFor(node, app, secret = app.secret) {
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret,
    host: '127.0.0.1',
    port: String(node.port),
    useTLS: false,
  });
}

/** One pusher-js attempt: the client once connected, or null once refused. */
async function attempt(clients, key) {
  const c = clients.pusher({ key });
  if (c.connection.state === 'connected') return c;
  const { current } = await waitFor(c.connection, 'state_change', 5000, ({ current }) =>
    ['connected', 'disconnected', 'failed', 'unavailable'].includes(current),
  );
  if (current === 'connected') return c;
  c.disconnect();
  return null;
}

async function readyBody(node) {
  const res = await fetch(`${node.base}/ready`, { signal: AbortSignal.timeout(5000) });
  return { status: res.status, body: await res.json() };
}

describe('apps in Postgres, two nodes on one Redis', () => {
  let redis, pg;
  let one, two;
  let clients2;
  let writer;
  let app;

  before(async () => {
    redis = await startRedis();
    pg = await startPostgres();
    const config = { top: { app_store: { url: pg.url }, admin: { token: TOKEN } } };
    one = await startNode(redis, config);
    two = await startNode(redis, config);
    clients2 = new Clients(two);
    writer = appWriter(one);
  });
  after(async () => {
    clients2?.closeAll();
    for (const n of [one, two]) await n?.stop();
    await redis?.stop();
    await pg?.destroy();
  });

  test('an app created on node 1 connects with pusher-js on node 2 within 2 s', async () => {
    const start = Date.now();
    app = await writer.create({ client_events: true });
    const c = await eventually(() => attempt(clients2, app.key), PROPAGATION_MS, `node 2 serving key ${app.key}`, 20);
    const took = Date.now() - start;
    assert.ok(took < PROPAGATION_MS, `node 2 served the new app after ${took} ms`);
    // The app is a row in Postgres, its secret stored as given.
    assert.equal(pg.sql(`SELECT app_key || ' ' || secret FROM herald_apps WHERE id = '${app.id}'`), `${app.key} ${app.secret}`);
    // It works cluster-wide: a publish through node 1 reaches the socket on node 2.
    const name = uniq('store-');
    const { channel } = await subscribed(c, name);
    const got = collect(channel, 'hello');
    await eventually(async () => {
      const res = await sdkFor(one, app).get({ path: `/channels/${name}`, params: { info: 'subscription_count' } });
      return (await res.json()).subscription_count === 1;
    }, 5000, `node 1 seeing the subscription to ${name}`);
    await sdkFor(one, app).trigger(name, 'hello', { n: 1 });
    assert.deepEqual((await got.atLeast(1))[0].data, { n: 1 });
  });

  test('rotating the secret makes the old signature fail on node 2 within 2 s', async () => {
    const old = app.secret;
    const start = Date.now();
    app.secret = await writer.rotate(app.id);
    assert.notEqual(app.secret, old);
    const name = uniq('rot-');
    await eventually(
      async () => {
        try {
          await sdkFor(two, app, old).trigger(name, 'ev', {});
          return false;
        } catch (e) {
          return e.status === 401;
        }
      },
      PROPAGATION_MS,
      'node 2 refusing the old secret with 401',
      20,
    );
    assert.ok(Date.now() - start < PROPAGATION_MS);
    // The new secret works on both nodes.
    for (const node of [one, two]) {
      const res = await sdkFor(node, app).trigger(name, 'ev', {});
      assert.equal(res.status, 200);
    }
  });

  test('disabling the app closes its pusher-js socket on node 2 with 4003', async () => {
    const c = await attempt(clients2, app.key);
    assert.ok(c, 'connected before the change');
    const errors = collect(c.connection, 'error');
    const down = waitFor(c.connection, 'state_change', PROPAGATION_MS + 500, ({ current }) =>
      ['disconnected', 'failed'].includes(current),
    );
    const start = Date.now();
    await writer.setEnabled(app.id, false);
    await down;
    assert.ok(Date.now() - start < PROPAGATION_MS, `closed after ${Date.now() - start} ms`);
    assert.ok(
      errors.items.some((e) => errCode(e.data) === 4003),
      `expected 4003, errors: ${JSON.stringify(errors.items)}`,
    );
    await assert.rejects(
      waitFor(c.connection, 'state_change', 1500, ({ current }) => current === 'connecting'),
      /timed out/,
      'pusher-js must not reconnect to a disabled app',
    );
    // A new socket is refused with 4003 too; enabling brings the app back.
    assert.equal(await attempt(clients2, app.key), null);
    await writer.setEnabled(app.id, true);
    await eventually(() => attempt(clients2, app.key), PROPAGATION_MS, 'node 2 serving the re-enabled app', 20);
  });

  test('with Postgres stopped the apps keep working and /ready says so', async () => {
    await pg.stop();
    try {
      for (const node of [one, two]) {
        await eventually(async () => (await readyBody(node)).body.app_store?.ok === false, 10000, 'the outage in /ready');
        const { status, body } = await readyBody(node);
        assert.equal(status, 200, `an outage never makes a node unready: ${JSON.stringify(body)}`);
        assert.equal(body.ready, true);
        assert.equal(body.app_store.kind, 'postgres');
      }
      const c = await attempt(clients2, app.key);
      assert.ok(c, 'pusher-js connects to node 2 during the outage');
      const name = uniq('outage-');
      const { channel } = await subscribed(c, name);
      const got = collect(channel, 'still-here');
      await eventually(async () => {
        const res = await sdkFor(one, app).get({ path: `/channels/${name}`, params: { info: 'subscription_count' } });
        return (await res.json()).subscription_count === 1;
      }, 5000, `node 1 seeing the subscription to ${name}`);
      await sdkFor(one, app).trigger(name, 'still-here', { ok: true });
      assert.deepEqual((await got.atLeast(1))[0].data, { ok: true });
      const res = await adminApi(one, 'POST', '/apps', {});
      assert.equal(res.status, 503, `a write while the database is down: ${JSON.stringify(res.body)}`);
    } finally {
      await pg.start();
    }
    for (const node of [one, two]) {
      await eventually(async () => (await readyBody(node)).body.app_store?.ok === true, 10000, 'recovery in /ready');
    }
    // Changes flow again.
    const next = await writer.create({});
    await eventually(() => attempt(clients2, next.key), PROPAGATION_MS, 'node 2 serving an app created after the outage', 20);
  });
});
