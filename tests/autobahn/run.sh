#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient cases (via kosoku, which executes the same case
# files on Python 3) against crates/herald-server/examples/echo.rs: an echo server on herald's
# own WebSocket code, the same that serves /app/{key}: the upgrade and permessage-deflate
# negotiation (herald_server::websocket::switch_protocols), the connection's reads, pongs,
# closing and failing (herald_server::websocket::WebSocket) and the codec (crates/herald-ws).
# Only what happens to a message differs: it is echoed instead of parsed as Pusher JSON.
#
# The whole suite runs (517 cases): every case must be OK / NON-STRICT / INFORMATIONAL, the 216
# compression cases (12.*, 13.*) included; UNIMPLEMENTED fails. Exits non-zero if any case is
# not acceptable, if a required case group did not run, or if kosoku produced no report.
#
# Env: AUTOBAHN_OUT   report directory (default: target/autobahn)
#      ECHO_BIN       use this echo binary instead of building the example
#      AUTOBAHN_CASES space-separated case globs to include (default: the whole suite)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

OUT="${AUTOBAHN_OUT:-$ROOT/target/autobahn}"

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -r tests/autobahn/requirements.txt

if [[ -n "${ECHO_BIN:-}" ]]; then
    echo_bin="$ECHO_BIN"
else
    cargo build --release --locked -q -p herald-server --example echo
    echo_bin="$ROOT/target/release/examples/echo"
fi
[[ -x "$echo_bin" ]] || { echo "autobahn: echo binary $echo_bin not found" >&2; exit 1; }

port="$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
log="$(mktemp -t herald-echo.XXXXXX.log)"
"$echo_bin" --port "$port" >"$log" 2>&1 &
echo_pid=$!
cleanup() {
    if kill -0 "$echo_pid" 2>/dev/null; then
        kill "$echo_pid" 2>/dev/null || true
        wait "$echo_pid" 2>/dev/null || true
    fi
    rm -f "$log"
}
trap cleanup EXIT

# Wait (bounded) until the echo server accepts connections.
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        break
    fi
    if ! kill -0 "$echo_pid" 2>/dev/null; then
        echo "autobahn: echo server exited:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done

args=(-m fuzzingclient -o "$OUT")
for case in ${AUTOBAHN_CASES:-}; do
    args+=(-i "$case")
done

rm -rf "$OUT"
mkdir -p "$OUT"
start=$SECONDS
# kosoku exits 1 whenever any case is not OK (NON-STRICT included), so its status is not the
# verdict; summarize.py reads the report and decides. The suite is bounded to 25 minutes.
set +e
timeout 1500 .venv/bin/kosoku "${args[@]}" "127.0.0.1:$port" >"$OUT/kosoku.log" 2>&1
status=$?
set -e
echo "autobahn: kosoku finished in $((SECONDS - start))s (exit $status; any case not OK makes it 1)"
if [[ $status -ne 0 && $status -ne 1 ]]; then
    echo "autobahn: kosoku failed or timed out:" >&2
    tail -20 "$OUT/kosoku.log" >&2
    exit 1
fi

.venv/bin/python tests/autobahn/summarize.py "$OUT"
