#!/usr/bin/env bash
# Broadcast across a herald cluster on this box: Redis plus NODES herald nodes, subscribers
# round-robin over the nodes, events published through node 1's HTTP API. Each run starts a
# fresh Redis and fresh nodes, and stops them afterwards.
#
#   cargo build --release -p herald-server -p herald-bench
#   crates/herald-bench/run-cluster.sh OUTDIR NAME [herald-bench broadcast options...]
#   e.g. crates/herald-bench/run-cluster.sh out c57k -n 57000 -c 1 -s 1024 --rate 10 -d 20s --workers 4
#
# Writes OUTDIR/NAME-RUN.json (the bench report) and OUTDIR/NAME-RUN.procs (one line per
# second: unix time, then VmRSS in kB and utime+stime in clock ticks of node 1..N and Redis).
# Environment: HERALD_BIN, HERALD_BENCH, NODES (3), BASE_PORT (6701), REDIS_PORT (6799),
# RUNS (3), QUIET_WAIT (600 s: wait for no cargo/rustc/scripts/test and an idle CPU before
# each run), QUIET_PCT (10).
set -euo pipefail

HERALD_BIN=${HERALD_BIN:-target/release/herald}
HERALD_BENCH=${HERALD_BENCH:-target/release/herald-bench}
NODES=${NODES:-3}
BASE_PORT=${BASE_PORT:-6701}
REDIS_PORT=${REDIS_PORT:-6799}
RUNS=${RUNS:-3}
OUT=$1
NAME=$2
shift 2
mkdir -p "$OUT"

PIDS=()
SAMPLER=
stop_all() {
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
    SAMPLER=
}
trap stop_all EXIT

wait_up() { # PORT
    for _ in $(seq 200); do
        if curl -fs "http://127.0.0.1:$1/up" >/dev/null 2>&1; then return 0; fi
        sleep 0.05
    done
    echo "node on port $1 did not come up" >&2
    exit 1
}

wait_no_builds() {
    local deadline=$((SECONDS + ${QUIET_WAIT:-600}))
    while pgrep -f 'scripts/test|rustc|cargo ' >/dev/null && [ $SECONDS -lt $deadline ]; do
        sleep 5
    done
    if pgrep -f 'scripts/test|rustc|cargo ' >/dev/null; then
        echo "   still running after ${QUIET_WAIT:-600}s: $(pgrep -af 'scripts/test|rustc|cargo ' | head -3)" >&2
    fi
}

# Busy CPU of the whole machine over one second, in percent of the machine.
busy_pct() {
    local a b
    a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    echo "$a $b" | awk '{busy=$3-$1; idle=$4-$2; print int(100*busy/(busy+idle))}'
}

# Then waits (up to QUIET_WAIT) until the machine is nearly idle (QUIET_PCT, default 10%):
# test binaries of other work do not match the pattern above.
wait_quiet() {
    local deadline=$((SECONDS + ${QUIET_WAIT:-600}))
    while [ "$(busy_pct)" -gt "${QUIET_PCT:-10}" ] && [ $SECONDS -lt $deadline ]; do :; done
}

proc_sample() { # PID -> "rss_kB cpu_ticks"
    local rss cpu
    rss=$(awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
    cpu=$(awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0)
    echo "${rss:-0} ${cpu:-0}"
}

for i in $(seq "$RUNS"); do
    wait_no_builds
    wait_quiet
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        >"$OUT/redis.log" 2>&1 &
    REDIS=$!
    PIDS+=("$REDIS")
    for _ in $(seq 100); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
        sleep 0.05
    done
    URLS=()
    NODE_PIDS=()
    for n in $(seq "$NODES"); do
        port=$((BASE_PORT + n - 1))
        "$HERALD_BIN" start --host 127.0.0.1 --port "$port" \
            --redis-url "redis://127.0.0.1:$REDIS_PORT" >"$OUT/node$n.log" 2>&1 &
        NODE_PIDS+=($!)
        PIDS+=($!)
        URLS+=(--ws-url "ws://127.0.0.1:$port")
    done
    for n in $(seq "$NODES"); do wait_up $((BASE_PORT + n - 1)); done
    (
        while :; do
            line="$(date +%s.%N)"
            for p in "${NODE_PIDS[@]}" "$REDIS"; do line="$line $(proc_sample "$p")"; done
            echo "$line"
            sleep 1
        done
    ) >"$OUT/$NAME-$i.procs" &
    SAMPLER=$!
    echo "== $NAME run $i: herald-bench broadcast $* (loadavg $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    timeout 900 "$HERALD_BENCH" broadcast "$@" "${URLS[@]}" \
        --http-url "http://127.0.0.1:$BASE_PORT" --server-pid "${NODE_PIDS[0]}" --json --quiet \
        >"$OUT/$NAME-$i.json" 2>"$OUT/$NAME-$i.err" || echo "   bench failed: $(tail -2 "$OUT/$NAME-$i.err")" >&2
    date +%s.%N >"$OUT/$NAME-$i.end"
    line="final"
    for p in "${NODE_PIDS[@]}" "$REDIS"; do line="$line $(proc_sample "$p")"; done
    echo "$line" >>"$OUT/$NAME-$i.procs"
    stop_all
    sleep 2
done
