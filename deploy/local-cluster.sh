#!/usr/bin/env bash
# Local 3-node herald cluster behind nginx, sharing state through Redis.
#
#   deploy/local-cluster.sh          # then connect to ws://127.0.0.1:8080/app/app-key
#
# Starts:
#   redis-server      on $REDIS_PORT (default 6390)
#   3 herald nodes    on $BASE_PORT, +1, +2 (default 6001-6003), HERALD_REDIS_URL set
#   nginx             on $NGINX_PORT (default 8080), in the foreground
# Everything lives in a mktemp dir (configs, logs, nginx temp dirs), so no
# root is needed. Ctrl-C stops all of it.
#
# Requires: redis-server, nginx, and a herald binary ($HERALD_BIN, default
# target/release/herald; built with cargo if missing).
# Test credentials: app id "1", key "app-key", secret "app-secret".
# Not run in CI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REDIS_PORT="${REDIS_PORT:-6390}"
BASE_PORT="${BASE_PORT:-6001}"
NGINX_PORT="${NGINX_PORT:-8080}"
HERALD_BIN="${HERALD_BIN:-$ROOT/target/release/herald}"
NGINX_BIN="${NGINX_BIN:-nginx}"
REDIS_BIN="${REDIS_BIN:-redis-server}"
NODES=3

for tool in "$NGINX_BIN" "$REDIS_BIN"; do
    if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x "$tool" ]]; then
        echo "error: $tool not found (e.g. apt-get install nginx redis-server)" >&2
        exit 1
    fi
done

if [[ ! -x "$HERALD_BIN" ]]; then
    echo ">> building herald (cargo build --release -p herald-server)"
    (cd "$ROOT" && cargo build --release -p herald-server)
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/herald-cluster.XXXXXX")"
PIDS=()

cleanup() {
    trap - EXIT INT TERM
    echo
    echo ">> stopping"
    # Reverse start order: nginx, then the herald nodes (they drain on
    # SIGTERM), then Redis.
    local i pid
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid="${PIDS[$i]}"
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "${KEEP_LOGS:-}" ]]; then
        echo ">> logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- herald config (shared by all nodes) ----------------------------------
cat >"$WORK/herald.toml" <<'TOML'
host = "127.0.0.1"

[drain]
delay = "1s"
window = "2s"
deadline = "5s"

[[apps]]
id = "1"
key = "app-key"
secret = "app-secret"
enabled = true
client_events = true
TOML

# --- redis ----------------------------------------------------------------
echo ">> redis-server on 127.0.0.1:$REDIS_PORT"
"$REDIS_BIN" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=("$!")

# --- herald nodes ---------------------------------------------------------
ports=()
for i in $(seq 0 $((NODES - 1))); do
    port=$((BASE_PORT + i))
    ports+=("$port")
    echo ">> herald node $((i + 1)) on 127.0.0.1:$port (log: $WORK/herald-$port.log)"
    HERALD_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
        "$HERALD_BIN" start --config "$WORK/herald.toml" --port "$port" \
        >"$WORK/herald-$port.log" 2>&1 &
    PIDS+=("$!")
done

# Wait (up to ~10 s) for every node to answer /up.
if command -v curl >/dev/null 2>&1; then
    for port in "${ports[@]}"; do
        for _ in $(seq 1 50); do
            curl -fsS "http://127.0.0.1:$port/up" >/dev/null 2>&1 && break
            sleep 0.2
        done
        curl -fsS "http://127.0.0.1:$port/up" >/dev/null 2>&1 \
            || echo "warning: node on :$port is not answering /up; see $WORK/herald-$port.log" >&2
    done
else
    sleep 1
fi

# --- nginx ----------------------------------------------------------------
# deploy/nginx/herald.conf with this run's ports, wrapped in a main config
# whose pid file, logs and temp dirs all live in $WORK.
mkdir -p "$WORK/nginx/tmp"
sed -e "s/127\.0\.0\.1:6001/127.0.0.1:${ports[0]}/" \
    -e "s/127\.0\.0\.1:6002/127.0.0.1:${ports[1]}/" \
    -e "s/127\.0\.0\.1:6003/127.0.0.1:${ports[2]}/" \
    -e "s/listen 8080;/listen 127.0.0.1:${NGINX_PORT};/" \
    "$ROOT/deploy/nginx/herald.conf" >"$WORK/nginx/herald.conf"

cat >"$WORK/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log $WORK/nginx/access.log;
    client_body_temp_path $WORK/nginx/tmp/client_body;
    proxy_temp_path       $WORK/nginx/tmp/proxy;
    fastcgi_temp_path     $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path       $WORK/nginx/tmp/uwsgi;
    scgi_temp_path        $WORK/nginx/tmp/scgi;

    include $WORK/nginx/herald.conf;
}
NGINX

"$NGINX_BIN" -t -q -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf"

cat <<INFO

herald cluster is up:
  WebSocket   ws://127.0.0.1:$NGINX_PORT/app/app-key?protocol=7
  HTTP API    http://127.0.0.1:$NGINX_PORT/apps/1/events   (key app-key, secret app-secret)
  nodes       ${ports[*]}  (metrics at http://127.0.0.1:<port>/metrics)
  redis       127.0.0.1:$REDIS_PORT
  files       $WORK   (set KEEP_LOGS=1 to keep them)
Ctrl-C to stop.

INFO

# nginx runs with "daemon off" (in the foreground of this script). Waiting on
# it with `wait` lets Ctrl-C / SIGTERM reach the traps at once; the EXIT trap
# then stops nginx, the nodes and Redis. If nginx dies, everything stops.
"$NGINX_BIN" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" &
PIDS+=("$!")
wait "$!"
