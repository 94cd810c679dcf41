#!/usr/bin/env bash
# A local Redis Cluster for the demo and the browser tests: six redis-server nodes on free
# loopback ports (three masters with a replica each, `redis-cli --cluster create`), without
# persistence, their files in DIR. Waits until the cluster is ok and every replica synced (the
# state says ok 2-4 s before the replicas' first sync), then prints the nodes' URLs,
# comma-separated. A node timeout of 1 s and replica validity factor 0 let a replica take over a
# killed master within seconds (see tests/src/services.rs, RedisCluster, which the Rust tests use).
#
# Usage: scripts/redis-cluster.sh start DIR    (prints redis://127.0.0.1:P/,... on stdout)
#        scripts/redis-cluster.sh stop DIR     (kills the nodes started in DIR)
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [ -z "$dir" ] || { [ "$cmd" != start ] && [ "$cmd" != stop ]; }; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi

if [ "$cmd" = stop ]; then
  [ -f "$dir/pids" ] && xargs -r kill <"$dir/pids" 2>/dev/null || true
  rm -f "$dir/pids"
  exit 0
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

mkdir -p "$dir"
ports=()
while [ "${#ports[@]}" -lt 6 ]; do
  p=$(free_port)
  # Each node also listens on its port + 10000 (the cluster bus): that one must be free too.
  if [ "$p" -lt 55000 ] && ! (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null; then
    ports+=("$p")
  fi
done
: >"$dir/pids"
for p in "${ports[@]}"; do
  mkdir -p "$dir/$p"
  (cd "$dir/$p" && exec redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
    --cluster-replica-validity-factor 0 --save '' --appendonly no --daemonize no \
    >"$dir/$p/log" 2>&1) &
  echo $! >>"$dir/pids"
done
for p in "${ports[@]}"; do
  for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas 1 \
  --cluster-yes >"$dir/create.log"
for p in "${ports[@]}"; do
  for _ in $(seq 600); do
    info=$(redis-cli -p "$p" info replication)
    if redis-cli -p "$p" cluster info | grep -q cluster_state:ok &&
      { grep -q role:master <<<"$info" || grep -q master_link_status:up <<<"$info"; }; then
      break
    fi
    sleep 0.05
  done
done
urls=$(printf 'redis://127.0.0.1:%s/,' "${ports[@]}")
echo "${urls%,}"
