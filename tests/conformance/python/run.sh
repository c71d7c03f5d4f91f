#!/usr/bin/env bash
# Python server SDK conformance: the official `pusher` PyPI package drives herald's HTTP API
# while raw Pusher-protocol WebSocket clients (`websockets`) check delivery.
#
# Uses the herald binary from HERALD_BIN, else target/release/herald, else target/debug/herald
# (build one first: cargo build --release -p herald-server). Uses (and creates if needed) the
# shared venv at .venv in the repo root. Extra arguments go to pytest.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
# pytest runs from this directory: make a relative HERALD_BIN absolute first.
if [[ -n "${HERALD_BIN:-}" && "$HERALD_BIN" != /* ]]; then
    export HERALD_BIN="$PWD/$HERALD_BIN"
fi
cd "$ROOT"

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -r tests/conformance/python/requirements.txt

cd tests/conformance/python
exec "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
