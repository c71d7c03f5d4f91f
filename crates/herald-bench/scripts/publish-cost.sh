#!/usr/bin/env bash
# Signed publishes/s: one node alone, and through node 1 of a 3-node cluster on one Redis (nodes 2
# and 3 receive every event over Redis), with Redis CPU and memory per 1,000 events from INFO.
#   crates/herald-bench/scripts/publish-cost.sh BIN TAG   (BENCH_DIR holds herald-bench, fanout-floor)
here=$(cd "$(dirname "$0")" && pwd)
cd "${BENCH_DIR:-target/release}"; mkdir -p pub
BIN=${1:-./herald}; TAG=${2:-main}
for i in 1 2 3; do
  "$here"/run-one.sh pub/single-$TAG-$i.json $BIN publish -k 32 -d 10s -n 1 -s 100
  python3 -c "import json;r=json.load(open('pub/single-$TAG-$i.json'));print('single $TAG', r['publishes_per_sec'], r['cpu'])"
done
for i in 1 2 3; do
  rp=6899; redis-server --port $rp --bind 127.0.0.1 --save "" --appendonly no > pub/redis.log 2>&1 & RP=$!
  sleep 0.5
  P=(); for n in 1 2 3; do $BIN start --host 127.0.0.1 --port 690$n --redis-url redis://127.0.0.1:$rp > pub/node$n.log 2>&1 & P+=($!); done
  for n in 1 2 3; do for _ in $(seq 100); do curl -fs http://127.0.0.1:690$n/up >/dev/null && break; sleep 0.1; done; done
  b=$(redis-cli -p $rp info | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/{s+=$2} /^used_memory:/{m=$2} END{print s, m}')
  ./herald-bench publish -k 32 -d 10s -n 1 -s 100 --ws-url ws://127.0.0.1:6901 --http-url http://127.0.0.1:6901 --server-pid ${P[0]} --json --quiet > pub/cluster-$TAG-$i.json 2> pub/cluster-$TAG-$i.log
  a=$(redis-cli -p $rp info | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/{s+=$2} /^used_memory:/{m=$2} END{print s, m}')
  python3 - "$b" "$a" pub/cluster-$TAG-$i.json <<'PY'
import json,sys
b=list(map(float,sys.argv[1].split())); a=list(map(float,sys.argv[2].split())); r=json.load(open(sys.argv[3]))
n=r.get('published_ok') or 0
print('cluster', r['publishes_per_sec'], 'ok', n, 'failed', r.get('published_failed'), 'redis cpu ms/1000 events', round((a[0]-b[0])*1e6/n,1) if n else None, 'redis mem bytes/event', round((a[1]-b[1])/n,1) if n else None, 'p99', r['http_latency_ms']['p99_ms'])
PY
  kill -KILL ${P[@]} $RP 2>/dev/null; wait 2>/dev/null
done
echo PUBDONE
