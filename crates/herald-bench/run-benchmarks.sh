#!/usr/bin/env bash
# Reruns the numbers of BENCHMARKS.md: each case 3 times, each run against a fresh herald
# (so RSS baselines are an empty server). Reports go to OUTDIR as JSON, and a summary of
# medians is printed at the end.
#
#   cargo build --release -p herald-server -p herald-bench
#   crates/herald-bench/run-benchmarks.sh [OUTDIR] [CASE...]
#
# Environment: HERALD_BIN (default target/release/herald), HERALD_BENCH (default
# target/release/herald-bench), FLOOR_BIN (default target/release/fanout-floor), PORT
# (default 6001), RUNS (default 3).
#
# The *-floor cases run the same load against fanout-floor (src/floor.rs), the least work a
# server can do per delivery, to measure what this machine allows.
set -euo pipefail

HERALD_BIN=${HERALD_BIN:-target/release/herald}
HERALD_BENCH=${HERALD_BENCH:-target/release/herald-bench}
FLOOR_BIN=${FLOOR_BIN:-target/release/fanout-floor}
PORT=${PORT:-6001}
RUNS=${RUNS:-3}
OUT=${1:-bench-results}
shift || true
CASES=("$@")
[ ${#CASES[@]} -eq 0 ] && CASES=(idle19k fanout10 saturate handshakes publish churn)
mkdir -p "$OUT"
URLS=(--ws-url "ws://127.0.0.1:$PORT" --http-url "http://127.0.0.1:$PORT")

start_server() {
    if [ "${FLOOR:-}" = 1 ]; then
        "$FLOOR_BIN" --ws-port "$PORT" --http-port "$((PORT + 1))" >"$OUT/server.log" 2>&1 &
        URLS=(--ws-url "ws://127.0.0.1:$PORT" --http-url "http://127.0.0.1:$((PORT + 1))")
        up() { grep -q "fanout-floor: ws" "$OUT/server.log" 2>/dev/null; }
    else
        "$HERALD_BIN" start --host 127.0.0.1 --port "$PORT" >"$OUT/server.log" 2>&1 &
        URLS=(--ws-url "ws://127.0.0.1:$PORT" --http-url "http://127.0.0.1:$PORT")
        up() { curl -fs "http://127.0.0.1:$PORT/up" >/dev/null 2>&1; }
    fi
    SERVER=$!
    for _ in $(seq 200); do
        if up; then return 0; fi
        sleep 0.05
    done
    echo "the server did not come up (see $OUT/server.log)" >&2
    exit 1
}

stop_server() {
    kill -KILL "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
}
trap stop_server EXIT

# Busy CPU of the whole machine over one second, in percent of one core.
busy_pct() {
    local a b
    a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    echo "$a $b" | awk '{busy=$3-$1; idle=$4-$2; print int(100*busy/((busy+idle)/'"$(nproc)"'))}'
}

# Waits (up to QUIET_WAIT seconds, default 300) until the machine is nearly idle, so other
# work (builds, tests) does not share the cores with the measurement.
wait_quiet() {
    local deadline=$((SECONDS + ${QUIET_WAIT:-300}))
    while [ "$(busy_pct)" -gt "${QUIET_PCT:-15}" ] && [ $SECONDS -lt $deadline ]; do :; done
}

bench() { # NAME ARGS...
    local name=$1
    shift
    for i in $(seq "$RUNS"); do
        for try in $(seq "${TRIES:-1}"); do
            wait_quiet
            start_server
            echo "== $name run $i: herald-bench $* (loadavg $(cut -d' ' -f1-3 /proc/loadavg))" >&2
            timeout 600 "$HERALD_BENCH" "$@" "${URLS[@]}" --server-pid "$SERVER" --json --quiet \
                >"$OUT/$name-$i.json"
            stop_server
            sleep 2
            # With MAX_OTHER set (cores, e.g. 0.15), rerun (up to TRIES times) a run during
            # which other processes used more CPU than that.
            if [ -z "${MAX_OTHER:-}" ]; then break; fi
            other=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print((r.get('cpu') or r.get('cpu_connect') or {}).get('other_cores') or 0)" "$OUT/$name-$i.json")
            echo "   other processes: $other cores" >&2
            if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "$other" "$MAX_OTHER"; then
                break
            fi
        done
    done
}

for c in "${CASES[@]}"; do
    case $c in
    # 19,000 idle subscribed connections (two worker processes: the fd limit is per process).
    idle19k) bench idle19k connect -n 19000 --hold 5s ;;
    # 1 KB events to 10,000 subscribers of one channel at 10 events/s (subscribers in two
    # single-threaded worker processes).
    fanout10) bench fanout10 broadcast -n 10000 -c 1 -s 1024 --rate 10 -d 20s --workers 2 ;;
    # The same load against fanout-floor: what this box allows with the load generator on it.
    fanout10-floor) FLOOR=1 bench fanout10-floor broadcast -n 10000 -c 1 -s 1024 --rate 10 -d 20s --workers 2 ;;
    # One node's share of the three-node target (19,000 subscribers at 10 events/s), against
    # fanout-floor.
    fanout19k-floor) FLOOR=1 bench fanout19k-floor broadcast -n 19000 -c 1 -s 1024 --rate 10 -d 20s --workers 2 ;;
    # Saturation: as many 1 KB events to the same 10,000 subscribers as the server accepts.
    saturate) bench saturate broadcast -n 10000 -c 1 -s 1024 --rate max --publishers 2 -d 10s --workers 2 ;;
    # Handshakes/s: 18,000 connections as fast as possible, at most 2 x 64 handshakes in
    # flight (herald's listen backlog is 128: more in flight overflows it and costs 1 s SYN
    # retransmits; see BENCHMARKS.md).
    handshakes) bench handshakes connect -n 18000 --hold 1s --workers 2 --max-inflight 64 ;;
    # Signed HTTP publishes/s to a channel with one subscriber.
    publish) bench publish publish -k 32 -d 10s -n 1 -s 100 ;;
    # Churn: 3 rounds of 1,000 loops x 20 connect/subscribe/disconnect cycles; server RSS
    # before, after each round (3 s settle).
    churn) bench churn churn -n 1000 --cycles 20 --rounds 3 --kinds public,private,presence --settle 3s ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
    esac
done

python3 - "$OUT" "${CASES[@]}" <<'PY'
import json, statistics, sys, glob
out, cases = sys.argv[1], sys.argv[2:]
def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None
def load(name):
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{name}-[0-9]*.json"))]
fields = {
    "idle19k": [("subscribed", lambda r: r["subscribed"]),
                ("server RSS per connection (KB)", lambda r: r["server_rss_per_conn_bytes"] / 1024)],
    "fanout10-floor": None,
    "fanout19k-floor": None,
    "fanout10": [("lost", lambda r: r["lost"]), ("subscribed", lambda r: r["subscribed"]), ("p50 ms", lambda r: r["latency_ms"]["p50_ms"]),
                 ("p99 ms", lambda r: r["latency_ms"]["p99_ms"]), ("p99.9 ms", lambda r: r["latency_ms"]["p999_ms"]),
                 ("max ms", lambda r: r["latency_ms"]["max_ms"]),
                 ("tool cores", lambda r: r["cpu"]["tool_cores"]), ("server cores", lambda r: r["cpu"]["server_cores"]),
                 ("other processes cores", lambda r: r["cpu"]["other_cores"])],
    "saturate": [("deliveries/s", lambda r: r["deliveries_per_sec"]), ("lost", lambda r: r["lost"]),
                 ("publishes/s", lambda r: r["publishes_per_sec"]),
                 ("p50 ms", lambda r: r["latency_ms"]["p50_ms"]), ("p99 ms", lambda r: r["latency_ms"]["p99_ms"]),
                 ("tool cores", lambda r: r["cpu"]["tool_cores"]), ("server cores", lambda r: r["cpu"]["server_cores"]),
                 ("other processes cores", lambda r: r["cpu"]["other_cores"])],
    "handshakes": [("handshakes/s", lambda r: r["handshakes_per_sec"]), ("failed", lambda r: r["failed"]),
                   ("p99 ms", lambda r: r["connection_established_ms"]["p99_ms"]),
                   ("tool cores", lambda r: r["cpu_connect"]["tool_cores"]), ("server cores", lambda r: r["cpu_connect"]["server_cores"]),
                   ("other processes cores", lambda r: r["cpu_connect"]["other_cores"])],
    "publish": [("publishes/s", lambda r: r["publishes_per_sec"]), ("lost", lambda r: r["lost"]),
                ("HTTP p99 ms", lambda r: r["http_latency_ms"]["p99_ms"]),
                ("tool cores", lambda r: r["cpu"]["tool_cores"]), ("server cores", lambda r: r["cpu"]["server_cores"]),
                ("other processes cores", lambda r: r["cpu"]["other_cores"])],
    "churn": [("cycles/s", lambda r: r["cycles_per_sec"]), ("failed", lambda r: r["failed"]),
              ("RSS before (MB)", lambda r: r["server_rss_before_bytes"] / 1048576),
              ("RSS after round 1 (MB)", lambda r: r["server_rss_after_each_round_bytes"][0] / 1048576),
              ("RSS after last round (MB)", lambda r: r["server_rss_final_bytes"] / 1048576),
              ("RSS last/first round", lambda r: r["server_rss_last_over_first_round"]),
              ("RSS final/before", lambda r: r["server_rss_final_over_before"])],
}
fields["fanout10-floor"] = fields["fanout19k-floor"] = fields["fanout10"]
for c in cases:
    runs = load(c)
    print(f"{c} ({len(runs)} runs)")
    for label, fn in fields[c]:
        vals = []
        for r in runs:
            try: vals.append(fn(r))
            except Exception: vals.append(None)
        shown = ", ".join("-" if v is None else f"{v:.2f}" for v in vals)
        m = med(vals)
        print(f"  {label:32} median {m if m is None else round(m, 2)}   runs: {shown}")
PY
