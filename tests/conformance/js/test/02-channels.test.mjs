// 2. Subscribing to every channel type with pusher-js, and SDK triggers
// reaching them with data that round-trips exactly.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { Clients, serverSdk, startServer, subscribed, uniq, waitFor } from '../lib/harness.mjs';

const OBJECT_PAYLOAD = {
  text: 'héllo wörld — ✓ 🚀 中文 العربية',
  quote: 'she said "hi" \\ back',
  newline: 'a\nb\tc',
  n: 42,
  f: -1.5e-7,
  big: 9007199254740991,
  bool: true,
  nil: null,
  nested: { list: [1, 'two', { three: [3] }], empty: {}, emptyList: [] },
};
// Not JSON, so pusher-js keeps it as the raw string.
const STRING_PAYLOAD = 'plain string ✓ 🚀 with "quotes" and \\ backslash';

describe('channels', () => {
  let server;
  let clients;
  let sdk;

  before(async () => {
    server = await startServer();
    clients = new Clients(server);
    sdk = serverSdk(server, { encryptionMasterKeyBase64: randomBytes(32).toString('base64') });
  });
  after(async () => {
    clients?.closeAll();
    await server?.stop();
  });

  async function roundTrip(client, channelName) {
    const { channel } = await subscribed(client, channelName);
    for (const payload of [OBJECT_PAYLOAD, STRING_PAYLOAD]) {
      const got = waitFor(channel, 'my-event');
      const res = await sdk.trigger(channelName, 'my-event', payload);
      assert.equal(res.status, 200);
      assert.deepEqual(await got, payload);
    }
    return channel;
  }

  test('public channel: subscribe, SDK trigger, object and string data round-trip', async () => {
    const c = await clients.connected();
    await roundTrip(c, uniq('public-'));
  });

  test('private channel: authorized via the server SDK, trigger round-trips', async () => {
    const c = await clients.connected({ sdk });
    await roundTrip(c, uniq('private-'));
  });

  test('private-encrypted channel: shared_secret from the SDK, pusher-js decrypts SDK-encrypted events', async () => {
    const c = await clients.connected({ sdk });
    const name = uniq('private-encrypted-');
    const { channel } = await subscribed(c, name);
    // The server relays ciphertext; pusher-js decrypts with the shared secret.
    const raw = waitFor(c.connection, 'message', 5000, (m) => m.channel === name && m.event === 'secret');
    const got = waitFor(channel, 'secret');
    await sdk.trigger(name, 'secret', OBJECT_PAYLOAD);
    const frame = await raw;
    assert.ok(frame.data.nonce && frame.data.ciphertext, `relayed data should be ciphertext: ${JSON.stringify(frame)}`);
    assert.deepEqual(await got, OBJECT_PAYLOAD);
  });

  test('presence channel: subscribe and receive SDK triggers', async () => {
    const c = await clients.connected({ sdk, presence: () => ({ user_id: 'alice', user_info: { name: 'Alice ✓' } }) });
    const name = uniq('presence-');
    const ch = await roundTrip(c, name);
    assert.equal(ch.members.count, 1);
    assert.deepEqual(ch.members.me, { id: 'alice', info: { name: 'Alice ✓' } });
  });

  test('one SDK trigger to several channels reaches the subscriber of each channel', async () => {
    const a = await clients.connected({ sdk });
    const b = await clients.connected({ sdk });
    const pub = uniq('multi-');
    const priv = uniq('private-multi-');
    const { channel: ca } = await subscribed(a, pub);
    const { channel: cb } = await subscribed(b, priv);
    const ga = waitFor(ca, 'fanout');
    const gb = waitFor(cb, 'fanout');
    await sdk.trigger([pub, priv], 'fanout', { x: 1 });
    assert.deepEqual(await ga, { x: 1 });
    assert.deepEqual(await gb, { x: 1 });
  });

  test('unsubscribe stops delivery; resubscribe works', async () => {
    const c = await clients.connected();
    const name = uniq('unsub-');
    await subscribed(c, name);
    c.unsubscribe(name);
    // An event on another channel, sent after the unsubscribe, acts as a
    // barrier: once it arrives the earlier trigger would have arrived too.
    const other = uniq('barrier-');
    const { channel: bch } = await subscribed(c, other);
    const seen = [];
    c.connection.bind('message', (m) => m.channel === name && seen.push(m));
    await sdk.trigger(name, 'after-unsub', { n: 1 });
    const barrier = waitFor(bch, 'barrier');
    await sdk.trigger(other, 'barrier', {});
    await barrier;
    assert.deepEqual(seen, []);
    const { channel } = await subscribed(c, name);
    const got = waitFor(channel, 'back');
    await sdk.trigger(name, 'back', { n: 2 });
    assert.deepEqual(await got, { n: 2 });
  });
});
