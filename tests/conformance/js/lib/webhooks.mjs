// A real webhook receiver (node:http) for the conformance suite. Every request
// is validated with the official `pusher` Node SDK (`webhook().isValid()`,
// `getEvents()`); the receiver can answer with failures to exercise retries.
import { createServer } from 'node:http';

import { APP, DEFAULT_TIMEOUT, PusherServer } from './harness.mjs';

/** The Node server SDK with the app's credentials (or a wrong secret for negative controls). */
export function webhookSdk(secret = APP.secret) {
  return new PusherServer({ appId: APP.id, key: APP.key, secret, host: '127.0.0.1', useTLS: false });
}

/**
 * Start a webhook receiver on a free loopback port.
 * `respond(n, req)` gives the status for the n-th request (0-based); default 200.
 * Returns { url, requests, delivered, invalid, waitEvent, waitCount, matching, close }.
 *  - requests: every request { at, status, headers, rawBody, valid, events }
 *  - delivered: events of requests answered 2xx, each with `at` (arrival ms)
 *  - invalid: requests whose signature the SDK rejected
 */
export async function startReceiver({ path = '/hook', respond = () => 200 } = {}) {
  const sdk = webhookSdk();
  const requests = [];
  const delivered = [];
  const invalid = [];
  const waiters = [];

  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const rawBody = Buffer.concat(chunks).toString('utf8');
      const at = Date.now();
      const n = requests.length;
      const status = req.method === 'POST' && req.url === path ? respond(n, req) : 404;
      const hook = sdk.webhook({ headers: req.headers, rawBody });
      const valid = hook.isValid();
      const events = valid ? hook.getEvents() : [];
      const entry = { at, status, method: req.method, url: req.url, headers: req.headers, rawBody, valid, events };
      requests.push(entry);
      if (!valid) invalid.push(entry);
      if (valid && status >= 200 && status < 300) {
        for (const e of events) delivered.push({ ...e, at, request: entry });
        for (const w of [...waiters]) w.check();
      }
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(status < 300 ? 'ok' : 'fail');
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();

  const strip = (e) => {
    const { at, request, ...rest } = e;
    return rest;
  };

  const recv = {
    port,
    url: `http://127.0.0.1:${port}${path}`,
    requests,
    delivered,
    invalid,
    /** Delivered events matching `pred`. */
    matching(pred) {
      return delivered.filter(pred);
    },
    /** Resolve with the n-th (1-based) delivered event matching `pred`; reject after `ms`. */
    waitCount(pred, n, ms = DEFAULT_TIMEOUT, what = 'webhook event') {
      return new Promise((res, rej) => {
        const w = {
          check() {
            const m = delivered.filter(pred);
            if (m.length >= n) {
              done();
              res(m[n - 1]);
            }
          },
        };
        const timer = setTimeout(() => {
          done();
          rej(
            new Error(
              `timed out after ${ms} ms waiting for ${what} #${n}; delivered: ` +
                JSON.stringify(delivered.map(strip)),
            ),
          );
        }, ms);
        const done = () => {
          clearTimeout(timer);
          const i = waiters.indexOf(w);
          if (i >= 0) waiters.splice(i, 1);
        };
        waiters.push(w);
        w.check();
      });
    },
    /** Resolve with the first delivered event matching `pred`. */
    waitEvent(pred, ms = DEFAULT_TIMEOUT, what = 'webhook event') {
      return recv.waitCount(pred, 1, ms, what);
    },
    strip,
    close() {
      server.closeAllConnections?.();
      return new Promise((r) => server.close(() => r()));
    },
  };
  return recv;
}

/** Predicate: a webhook event named `name` on `channel` (and extra field matches). */
export const is =
  (name, channel, extra = {}) =>
  (e) =>
    e.name === name && e.channel === channel && Object.entries(extra).every(([k, v]) => e[k] === v);

/**
 * Bounded silence window used only to prove that something does NOT happen
 * (a cancelled delayed webhook): slightly longer than the leave delay.
 */
export function quiet(ms) {
  return new Promise((r) => setTimeout(r, ms));
}
