// 9. A server mounted under path_prefix = "/ws", used with pusher-js `wsPath`.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { Clients, serverSdk, startServer, subscribed, uniq, waitFor } from '../lib/harness.mjs';
import { echoFor, echoNext, echoSubscribed } from '../lib/echo.mjs';

describe('path prefix /ws', () => {
  let server;
  let clients;
  let sdk;

  before(async () => {
    server = await startServer({ top: { path_prefix: '/ws' } });
    assert.equal(server.prefix, '/ws');
    clients = new Clients(server); // adds wsPath: '/ws' to every pusher-js client
    sdk = serverSdk(server);
  });
  after(async () => {
    clients?.closeAll();
    await server?.stop();
  });

  test('pusher-js with wsPath "/ws" connects, subscribes and receives SDK triggers', async () => {
    const c = await clients.connected();
    assert.equal(c.config.wsPath, '/ws');
    // The URL pusher-js actually opened (faye-websocket client).
    const url = c.connection.connection.transport.socket.url;
    assert.match(url, new RegExp(`^ws://127\\.0\\.0\\.1:${server.port}/ws/app/app-key\\?protocol=7&client=js&`));
    assert.match(c.connection.socket_id, /^\d+\.\d+$/);
    const name = uniq('prefixed-');
    const { channel } = await subscribed(c, name);
    const got = waitFor(channel, 'hello');
    await sdk.trigger(name, 'hello', { via: 'prefix ✓' });
    assert.deepEqual(await got, { via: 'prefix ✓' });
  });

  test('private and presence channels and Echo work under the prefix', async () => {
    const p = await clients.connected({ sdk, presence: () => ({ user_id: 'px', user_info: { n: 1 } }) });
    const echo = echoFor(p);
    const priv = echo.private(uniq('pfx-'));
    await echoSubscribed(priv);
    const [here] = await echoNext((cb) => echo.join(uniq('pfx-room-')).here(cb), 5000, 'here');
    assert.deepEqual(here, [{ n: 1 }]);
    const got = echoNext((cb) => priv.listen('.ping', cb), 5000, 'listen');
    await sdk.trigger(priv.name, 'ping', { ok: 1 });
    assert.deepEqual((await got)[0], { ok: 1 });
  });

  test('HTTP API signed for the prefixed path (/ws/apps/1/...) is accepted', async () => {
    const name = uniq('prefixed-api-');
    const c = await clients.connected();
    const { channel } = await subscribed(c, name);
    // The Node SDK has no path option; make it sign and send /ws/apps/{id}/...
    const prefixed = serverSdk(server);
    const orig = prefixed.config.prefixPath.bind(prefixed.config);
    prefixed.config.prefixPath = (sub) => '/ws' + orig(sub);
    const got = waitFor(channel, 'via-prefix');
    const res = await prefixed.trigger(name, 'via-prefix', { p: true });
    assert.equal(res.status, 200);
    assert.deepEqual(await got, { p: true });
    const info = await (await prefixed.get({ path: `/channels/${name}`, params: { info: 'subscription_count' } })).json();
    assert.deepEqual(info, { occupied: true, subscription_count: 1 });
  });
});
