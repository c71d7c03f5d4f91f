#!/usr/bin/env bash
# One benchmark run: starts SERVER (a herald binary, or "floor"), runs herald-bench with the
# given arguments, stops the server. Usage: run.sh OUTJSON SERVER ARGS...
set -euo pipefail
out=$1; server=$2; shift 2
B=${BENCH_DIR:-target/release}
PORT=${PORT:-6101}
if [ "$server" = floor ]; then
  $B/fanout-floor --ws-port $PORT --http-port $((PORT+1)) > $out.server.log 2>&1 &
  urls=(--ws-url ws://127.0.0.1:$PORT --http-url http://127.0.0.1:$((PORT+1)))
  up() { grep -q "fanout-floor: ws" $out.server.log 2>/dev/null; }
else
  $server start --host 127.0.0.1 --port $PORT > $out.server.log 2>&1 &
  urls=(--ws-url ws://127.0.0.1:$PORT --http-url http://127.0.0.1:$PORT)
  up() { curl -fs http://127.0.0.1:$PORT/up >/dev/null 2>&1; }
fi
pid=$!
trap 'kill -KILL $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 200); do up && break; sleep 0.05; done
timeout 600 $B/herald-bench "$@" "${urls[@]}" --server-pid $pid --json --quiet > $out 2> $out.log || echo "bench failed: $out" >&2
python3 - "$out" <<'PY'
import json,sys
r=json.load(open(sys.argv[1]))
cpu=r.get('cpu') or {}
d=r.get('deliveries') or r.get('received') or 0
lat=r.get('latency_ms') or {}
us = cpu.get('server_cpu_s',0)*1e6/d if d else float('nan')
print(f"{sys.argv[1]}: deliveries={d} lost={r.get('lost')} p50={lat.get('p50_ms')} p99={lat.get('p99_ms')} server_cores={cpu.get('server_cores',0):.2f} us/delivery={us:.2f} other={cpu.get('other_cores',0):.2f} rss/conn={r.get('server_rss_per_conn_bytes')}")
PY
