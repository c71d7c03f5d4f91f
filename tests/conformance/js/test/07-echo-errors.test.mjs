// 7. Subscription failures surface as channel-scoped pusher:subscription_error,
// which Laravel Echo's `.error()` callback receives; the socket stays up.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { APP, Clients, PusherServer, serverSdk, startServer, subscribed, uniq, waitFor } from '../lib/harness.mjs';
import { echoFor, echoNext, echoSubscribed } from '../lib/echo.mjs';

describe('subscription errors through Laravel Echo', () => {
  let server;
  let clients;
  let sdk;
  let wrongSdk;

  before(async () => {
    server = await startServer();
    clients = new Clients(server);
    sdk = serverSdk(server);
    // Same key, wrong secret: produces well-formed but invalid signatures.
    wrongSdk = new PusherServer({
      appId: APP.id,
      key: APP.key,
      secret: 'wrong-secret',
      host: '127.0.0.1',
      port: String(server.port),
      useTLS: false,
    });
  });
  after(async () => {
    clients?.closeAll();
    await server?.stop();
  });

  /** pusher-js client whose channel authorizer is `authorize(socketId, channelName)`. */
  function withAuthorizer(authorize) {
    return clients.connected({
      options: {
        channelAuthorization: {
          customHandler: ({ socketId, channelName }, cb) => cb(null, authorize(socketId, channelName)),
        },
      },
    });
  }

  function assertAuthError(err) {
    assert.equal(err?.type, 'AuthError', JSON.stringify(err));
    assert.equal(err?.status, 401, JSON.stringify(err));
    assert.equal(typeof err?.error, 'string', JSON.stringify(err));
  }

  test('private channel signed with a wrong secret: Echo .error() is called, socket stays connected', async () => {
    const p = await withAuthorizer((sid, ch) => wrongSdk.authorizeChannel(sid, ch));
    const echo = echoFor(p);
    const room = uniq('secret-room-');
    const subscribedCalls = [];
    const ch = echo.private(room).subscribed(() => subscribedCalls.push(1));
    const [err] = await echoNext((cb) => ch.error(cb), 5000, 'Echo .error()');
    assertAuthError(err);
    assert.deepEqual(subscribedCalls, []);
    assert.equal(p.connection.state, 'connected');

    // The same socket can still subscribe to other channels and receive events.
    const { channel: pub } = await subscribed(p, uniq('still-alive-'));
    const got = waitFor(pub, 'ok');
    await sdk.trigger(pub.name, 'ok', { alive: true });
    assert.deepEqual(await got, { alive: true });
    // ...and nothing published to the refused channel reaches it.
    const leaked = [];
    p.connection.bind('message', (m) => m.channel === `private-${room}` && m.event === 'leak' && leaked.push(m));
    await sdk.trigger(`private-${room}`, 'leak', {});
    const mark = waitFor(pub, 'mark');
    await sdk.trigger(pub.name, 'mark', {});
    await mark;
    assert.deepEqual(leaked, []);
  });

  test('auth signed for another socket id is refused', async () => {
    const other = await clients.connected();
    const p = await withAuthorizer((sid, ch) => sdk.authorizeChannel(other.connection.socket_id, ch));
    const echo = echoFor(p);
    const [err] = await echoNext((cb) => echo.private(uniq('stolen-')).error(cb), 5000, 'Echo .error()');
    assertAuthError(err);
    assert.equal(p.connection.state, 'connected');
  });

  test('presence channel_data altered after signing is refused', async () => {
    const p = await withAuthorizer((sid, ch) => {
      const auth = sdk.authorizeChannel(sid, ch, { user_id: 'honest', user_info: {} });
      return { ...auth, channel_data: JSON.stringify({ user_id: 'admin', user_info: {} }) };
    });
    const echo = echoFor(p);
    const [err] = await echoNext((cb) => echo.join(uniq('forged-')).error(cb), 5000, 'Echo .error()');
    assertAuthError(err);
    assert.equal(p.connection.state, 'connected');
  });

  test('private channel without any auth is refused', async () => {
    const p = await clients.connected();
    const name = uniq('private-noauth-');
    const outcome = waitFor(
      p.connection,
      'message',
      5000,
      (m) =>
        m.channel === name &&
        ['pusher:subscription_error', 'pusher_internal:subscription_succeeded'].includes(m.event),
    );
    // Raw frame: pusher-js would not send a private subscribe without auth.
    p.send_event('pusher:subscribe', { channel: name });
    const m = await outcome;
    assert.equal(m.event, 'pusher:subscription_error', JSON.stringify(m));
    assertAuthError(m.data);
    assert.equal(p.connection.state, 'connected');
  });

  test('a correctly signed Echo private channel subscribes (control)', async () => {
    const p = await withAuthorizer((sid, ch) => sdk.authorizeChannel(sid, ch));
    const echo = echoFor(p);
    const ch = echo.private(uniq('fine-'));
    await echoSubscribed(ch);
    const got = echoNext((cb) => ch.listen('.OrderShipped', cb), 5000, 'Echo listen');
    await sdk.trigger(ch.name, 'OrderShipped', { id: 7 });
    assert.deepEqual((await got)[0], { id: 7 });
  });
});
