#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient cases (via kosoku, which executes the same case
# files on Python 3) against herald itself, on /app/{key}, in its echo mode (`websocket_echo`):
# the real upgrade and admission, permessage-deflate negotiation, the socket task's reads, the
# outbox and its writes, pongs, closing and failing, and the codec (crates/herald-ws). Only what
# is done with a data message differs: it is echoed instead of parsed as Pusher JSON, and nothing
# else is sent (no pusher:connection_established, no pusher:ping).
#
# The whole suite runs (517 cases): every case must be OK / NON-STRICT / INFORMATIONAL, the 216
# compression cases (12.*, 13.*) included; UNIMPLEMENTED fails. Exits non-zero if any case is
# not acceptable, if a required case group did not run, or if kosoku produced no report.
#
# Env: AUTOBAHN_OUT   report directory (default: target/autobahn)
#      HERALD_BIN     the herald binary (default: build target/release/herald)
#      AUTOBAHN_CASES space-separated case globs to include (default: the whole suite)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

OUT="${AUTOBAHN_OUT:-$ROOT/target/autobahn}"

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -r tests/autobahn/requirements.txt

if [[ -n "${HERALD_BIN:-}" ]]; then
    herald_bin="$HERALD_BIN"
else
    cargo build --release --locked -q -p herald-server --bin herald
    herald_bin="$ROOT/target/release/herald"
fi
[[ -x "$herald_bin" ]] || { echo "autobahn: herald binary $herald_bin not found" >&2; exit 1; }

port="$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
log="$(mktemp -t herald-autobahn.XXXXXX.log)"
# Limits sized for the suite rather than for Pusher traffic: 9.x sends messages of up to 16 MiB
# (herald's default max_frame_bytes, 64 KiB, would make those cases test only the 1009 refusal),
# and thousands of messages a second.
env -i PATH="$PATH" \
    HERALD_HOST=127.0.0.1 HERALD_PORT="$port" HERALD_WEBSOCKET_ECHO=true \
    HERALD_LIMITS__MAX_FRAME_BYTES=$((16 * 1024 * 1024)) \
    HERALD_LIMITS__OUTBOX_MAX_BYTES=$((64 * 1024 * 1024)) \
    HERALD_LIMITS__MAX_MESSAGES_PER_SECOND=1000000 \
    HERALD_APPS='[{id = "1", key = "autobahn", secret = "autobahn-secret"}]' \
    "$herald_bin" >"$log" 2>&1 &
herald_pid=$!
cleanup() {
    if kill -0 "$herald_pid" 2>/dev/null; then
        kill -KILL "$herald_pid" 2>/dev/null || true
        wait "$herald_pid" 2>/dev/null || true
    fi
    rm -f "$log"
}
trap cleanup EXIT

# Wait (bounded) until herald accepts connections.
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        break
    fi
    if ! kill -0 "$herald_pid" 2>/dev/null; then
        echo "autobahn: herald exited:" >&2
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
timeout 1500 .venv/bin/kosoku "${args[@]}" "ws://127.0.0.1:$port/app/autobahn?protocol=7" >"$OUT/kosoku.log" 2>&1
status=$?
set -e
echo "autobahn: kosoku finished in $((SECONDS - start))s (exit $status; any case not OK makes it 1)"
if [[ $status -ne 0 && $status -ne 1 ]]; then
    echo "autobahn: kosoku failed or timed out:" >&2
    tail -20 "$OUT/kosoku.log" >&2
    exit 1
fi

.venv/bin/python tests/autobahn/summarize.py "$OUT"
