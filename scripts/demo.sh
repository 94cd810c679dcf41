#!/usr/bin/env bash
# Runs the demo: the chat server serving a web app that uses the WASM package. Installs and
# builds what is missing first; idempotent.
#
# Usage:
#   scripts/demo.sh [--addr HOST:PORT]              one instance on the embedded in-memory scaler
#   scripts/demo.sh --cluster [N] [--addr HOST:PORT] N instances (default 2) joined by Redis,
#                                                   behind a round-robin TCP proxy; uses
#                                                   REDIS_URL, or starts a redis-server of its own
#   scripts/demo.sh --cluster [N] --workers M       the same, with the chat's asks and tells
#                                                   handled by M worker processes (worker mode)
#   scripts/demo.sh --cluster [N] --redis-cluster   N instances on a Redis Cluster: REDIS_CLUSTER
#                                                   (comma-separated node URLs), or a local one of
#                                                   its own (3 masters with a replica each)
#
# Operators' endpoints: /metrics (Prometheus text), /healthz, /readyz, on the demo's own port
# with one instance, on a port per instance in the cluster (the demo prints them). Logs follow
# RUST_LOG (default info; RUST_LOG=info,sss_server=debug traces every handshake, ask and sub).
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=0
workers=0
sharded=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cluster)
      cluster=2
      if [[ "${2:-}" =~ ^[0-9]+$ ]]; then cluster="$2"; shift; fi
      ;;
    --workers)
      if ! [[ "${2:-}" =~ ^[1-9][0-9]*$ ]]; then echo "--workers needs a count" >&2; exit 2; fi
      workers="$2"; shift
      ;;
    --redis-cluster) sharded=1 ;;
    *) args+=("$1") ;;
  esac
  shift
done

if [ "$workers" -gt 0 ] && [ "$cluster" -eq 0 ]; then
  echo "--workers needs --cluster (workers meet the instances through Redis)" >&2
  exit 2
fi
if [ "$sharded" -eq 1 ] && { [ "$cluster" -eq 0 ] || [ "$workers" -gt 0 ]; }; then
  echo "--redis-cluster needs --cluster, and not --workers (worker mode needs one Redis)" >&2
  exit 2
fi

scripts/install-wasm-toolchain.sh
scripts/build-pkg.sh

if [ "$cluster" -eq 0 ]; then
  exec cargo run --release -p sss-server --example chat -- "${args[@]}"
fi

scripts/install-services.sh

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

if [ "$sharded" -eq 1 ]; then
  nodes="${REDIS_CLUSTER:-}"
  if [ -z "$nodes" ]; then
    dir=$(mktemp -d)
    trap 'scripts/redis-cluster.sh stop "$dir"; rm -rf "$dir"' EXIT
    nodes=$(scripts/redis-cluster.sh start "$dir")
    echo "Redis Cluster (3 masters, 3 replicas): $nodes (stopped when the demo stops)"
  fi
  cargo run --release -p sss-server --features redis --example chat -- \
    --redis-cluster "$nodes" --instances "$cluster" "${args[@]}"
  exit
fi

redis_url="${REDIS_URL:-}"
if [ -z "$redis_url" ]; then
  port=$(free_port)
  dir=$(mktemp -d)
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize no >"$dir/redis.log" 2>&1 &
  redis_pid=$!
  trap 'kill "$redis_pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
  for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis_url="redis://127.0.0.1:$port/"
  echo "redis-server on $redis_url (stopped when the demo stops)"
fi
if [ "$workers" -gt 0 ]; then args+=(--workers "$workers"); fi
cargo run --release -p sss-server --features redis --example chat -- \
  --redis "$redis_url" --instances "$cluster" "${args[@]}"
