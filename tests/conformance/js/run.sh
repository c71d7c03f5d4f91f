#!/usr/bin/env bash
# Conformance suite: real pusher-js, laravel-echo and the `pusher` Node server
# SDK against the herald binary. Uses $HERALD_BIN, else target/release/herald,
# else target/debug/herald (relative to the repository root).
set -euo pipefail
# A relative HERALD_BIN is relative to where the script was started from.
if [[ -n "${HERALD_BIN:-}" && "$HERALD_BIN" != /* ]]; then
  HERALD_BIN="$PWD/$HERALD_BIN"
  export HERALD_BIN
fi
cd "$(dirname "${BASH_SOURCE[0]}")"

if ! command -v node >/dev/null 2>&1; then
  echo "node (>= 20) is required" >&2
  exit 1
fi

# Install dependencies when node_modules is missing or older than the lockfile.
stamp=node_modules/.package-lock.json
if [[ ! -d node_modules || ! -f "$stamp" || package-lock.json -nt "$stamp" || package.json -nt "$stamp" ]]; then
  npm ci --no-audit --no-fund
fi

if [[ -n "${HERALD_BIN:-}" ]]; then
  if [[ ! -x "$HERALD_BIN" ]]; then
    echo "HERALD_BIN=$HERALD_BIN is not an executable file" >&2
    exit 1
  fi
else
  root="$(cd ../../.. && pwd)"
  for candidate in "$root/target/release/herald" "$root/target/debug/herald"; do
    if [[ -x "$candidate" ]]; then
      export HERALD_BIN="$candidate"
      break
    fi
  done
  if [[ -z "${HERALD_BIN:-}" ]]; then
    echo "herald binary not found: build it with 'cargo build --release -p herald-server' or set HERALD_BIN" >&2
    exit 1
  fi
fi
echo "conformance: using herald at $HERALD_BIN"

# --test-force-exit: when the server closes a socket (4001, 4009, ...),
# pusher-js calls close() on the already-closed faye-websocket client, which
# arms a 30 s close timer that nothing clears; without this flag every such
# test file would idle 30 s before exiting. Tests and after() hooks still run
# to completion first.
exec node --test --test-concurrency=1 --test-force-exit test/
