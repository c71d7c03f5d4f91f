// A round-robin TCP load balancer that follows each backend's GET /ready, as a
// production balancer in front of a herald cluster would: it polls every
// backend's /ready every `pollMs` and sends each new connection to the next
// ready backend. Existing connections are never moved: a draining node closes
// its own sockets (4200) and pusher-js reconnects through the balancer.
import { connect, createServer } from 'node:net';

/**
 * Start a balancer on a free loopback port in front of `backends`, an array of
 * `{ port }` objects read at each connection (so a backend restarted on its
 * port is picked up; one replaced by another object can be set with
 * `setBackend(i, backend)`).
 * Returns { port, base, stats, setBackend, delayNew(ms), ready(), close() }.
 */
export async function startBalancer(backends, { pollMs = 100 } = {}) {
  const list = [...backends];
  const ready = list.map(() => false);
  const sockets = new Set();
  const stats = { accepted: 0, refused: 0, perBackend: list.map(() => 0) };
  let next = 0;
  let closed = false;
  let delayMs = 0;

  async function poll(i) {
    const b = list[i];
    try {
      const r = await fetch(`http://127.0.0.1:${b.port}/ready`, { signal: AbortSignal.timeout(500) });
      await r.arrayBuffer();
      return r.status === 200;
    } catch {
      return false;
    }
  }

  let polling = null;
  async function pollAll() {
    const results = await Promise.all(list.map((_, i) => poll(i)));
    results.forEach((ok, i) => (ready[i] = ok));
  }
  async function loop() {
    while (!closed) {
      await pollAll();
      // The polling interval of the balancer (what a real balancer's health check does).
      await new Promise((r) => setTimeout(r, pollMs));
    }
  }

  const server = createServer({ pauseOnConnect: true }, (client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    let pick = -1;
    for (let k = 0; k < list.length; k++) {
      const i = (next + k) % list.length;
      if (ready[i]) {
        pick = i;
        next = i + 1;
        break;
      }
    }
    if (pick < 0) {
      stats.refused += 1;
      client.destroy();
      return;
    }
    stats.accepted += 1;
    stats.perBackend[pick] += 1;
    const upstream = connect({ host: '127.0.0.1', port: list[pick].port });
    sockets.add(upstream);
    upstream.on('close', () => sockets.delete(upstream));
    upstream.setNoDelay(true);
    client.setNoDelay(true);
    const hold = delayMs;
    const join = () => {
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    };
    // With a hold, a slow reconnect (a mobile network, say): the client waits before it
    // reaches its node.
    upstream.once('connect', () => (hold > 0 ? setTimeout(join, hold) : join()));
    // An end is passed on by pipe (after the data before it); an error or an abrupt
    // close of one side resets the other.
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.end());
    upstream.on('close', () => client.end());
  });
  await new Promise((res, rej) => {
    server.once('error', rej);
    server.listen(0, '127.0.0.1', res);
  });
  await pollAll();
  polling = loop();
  const { port } = server.address();
  return {
    port,
    base: `http://127.0.0.1:${port}`,
    stats,
    setBackend(i, backend) {
      list[i] = backend;
    },
    /** Holds each new connection `ms` before it reaches its node (0: none). */
    delayNew(ms) {
      delayMs = ms;
    },
    /** Which backends the last poll found ready. */
    ready: () => [...ready],
    async close() {
      closed = true;
      server.close();
      for (const s of sockets) s.destroy();
      await polling;
    },
  };
}
