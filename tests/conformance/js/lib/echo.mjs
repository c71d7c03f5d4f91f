// Laravel Echo helpers: Echo wraps a real pusher-js client.
import { DEFAULT_TIMEOUT, Echo, withTimeout } from './harness.mjs';

/** A Laravel Echo instance ("pusher" broadcaster) over an existing pusher-js client. */
export function echoFor(pusherClient) {
  return new Echo({ broadcaster: 'pusher', client: pusherClient, withoutInterceptors: true });
}

/**
 * Resolve once the Echo channel's subscription succeeded (Echo `.subscribed`),
 * reject on Echo `.error` or after `ms`. For presence channels, use `here`.
 */
export function echoSubscribed(echoChannel, ms = DEFAULT_TIMEOUT) {
  return withTimeout(
    new Promise((res, rej) => {
      // The subscription may already have succeeded before we got here.
      if (echoChannel.subscription?.subscribed) {
        res(echoChannel);
        return;
      }
      echoChannel.subscribed(() => res(echoChannel));
      echoChannel.error((e) => rej(new Error(`Echo channel ${echoChannel.name} error: ${JSON.stringify(e)}`)));
    }),
    ms,
    `Echo subscription to ${echoChannel.name}`,
  );
}

/** Resolve with the first argument(s) an Echo callback-registering method receives. */
export function echoNext(register, ms = DEFAULT_TIMEOUT, what = 'Echo callback') {
  return withTimeout(new Promise((res) => register((...args) => res(args))), ms, what);
}
