#!/usr/bin/env bash
# The browser tests, in headless Chromium against a real server (tests/src/bin/browser-test-server.rs
# on the embedded MemoryScaler, on a free loopback port):
#   a. the browser client's behaviours, case by case (tests/browser/client-cases.mjs, run by
#      client.test.cjs), in a page that imports the npm package (pkg/dist, rebuilt by
#      scripts/build-pkg.sh), driven by playwright-core under `node --test`; then the same cases
#      in Node 22 with its global WebSocket (client-node.test.mjs);
#   b. the package from plain JS in a page (tests/browser/package.test.cjs); a tiny app
#      (tests/browser/bundlers/app) built with Vite, webpack, esbuild and Rollup, run there; and
#      the size budget (scripts/size.sh: a Vite production build of that app, gzipped);
#   c. the chat demo (server/examples/chat) in two pages: a message from one shows in the other,
#      each sees the other in the room's member list, and a leave when one closes; screenshots
#      under target/. And Node programs log in with a token: the package's CommonJS and ES
#      module builds with Node's global WebSocket (Node 22, and Node 20 with its flag), and with
#      the ws package (Node 20 without the flag);
#   d. the same against the demo as a cluster (2 instances behind its round-robin proxy, one
#      Redis) whose chat handlers run in 2 worker processes (worker mode);
#   e. the same against the demo as 2 instances on a local Redis Cluster (3 masters with a
#      replica each, scripts/redis-cluster.sh).
# And first the package's typings under `tsc --strict` (tests/browser/types). Runs them all,
# prints the runners' summaries, exits non-zero if any failed. Idempotent; kills every process it
# starts.
# Usage: scripts/test-browser.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
log() { printf '[test-browser] %s\n' "$*"; }

if ! out=$(scripts/install-wasm-toolchain.sh 2>&1); then
  printf '%s\n' "$out" >&2
  exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sss-browser-test.XXXXXX")
SERVER_PID=
REDIS_PID=
stop_redis() {
  if [ -n "$REDIS_PID" ]; then
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=
  fi
}
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
cleanup() {
  stop_server
  stop_redis
  scripts/redis-cluster.sh stop "$WORK/redis-cluster"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

T=$SECONDS
log "building the test server (native) and the npm package"
cargo build --quiet -p sss-tests --bin browser-test-server
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
SERVER_BIN=$TARGET_DIR/debug/browser-test-server
scripts/build-pkg.sh
log "builds took $((SECONDS - T))s"

# start_server SED_EXPR CMD...: starts a fresh server, waits for the line from which SED_EXPR
# extracts its URL, and sets URL (http://127.0.0.1:PORT).
start_server() {
  stop_server
  local pattern=$1
  shift
  : > "$WORK/server.log"
  "$@" > "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  URL=
  for _ in $(seq 1 100); do
    URL=$(sed -n "$pattern" "$WORK/server.log")
    [ -n "$URL" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$URL" ]; then
    cat "$WORK/server.log" >&2
    log "ERROR: $1 did not start"
    exit 1
  fi
  log "server at $URL (pid $SERVER_PID)"
}
TEST_SERVER=('s/^LISTENING //p' "$SERVER_BIN")

FAILED=()

# ---- the typings: the README's example, typed, under tsc --strict (skipLibCheck false) --------
log "typings: tsc --strict (tests/browser/types, lib es2022 and esnext)"
if (
  # shellcheck source=scripts/wasm-env.sh
  source scripts/wasm-env.sh
  tsc=$SSS_WASM_TOOLS/node/node_modules/.bin/tsc
  "$tsc" -p tests/browser/types/tsconfig.json && "$tsc" -p tests/browser/types/tsconfig.esnext.json
); then
  log "typings passed"
else
  log "typings FAILED"
  FAILED+=("typings (tsc)")
fi

# run_step STEP WHAT FN: runs FN with the wasm toolchain's environment, in a subshell (errexit
# does not apply inside an `if` condition: each FN chains its commands with &&), logs the time
# since T, and records WHAT as failed if FN fails.
run_step() {
  local step=$1 what=$2 fn=$3
  if (
    # shellcheck source=scripts/wasm-env.sh
    source scripts/wasm-env.sh
    "$fn"
  ); then
    log "$step. passed in $((SECONDS - T))s"
  else
    log "$step. FAILED in $((SECONDS - T))s"
    FAILED+=("$what")
    tail -n 30 "$WORK/server.log" >&2
  fi
}

client_cases() { SSS_TEST_URL="$URL" node --test tests/browser/client.test.cjs; }
client_cases_node() { SSS_TEST_URL="$URL" node22 --test tests/browser/client-node.test.mjs; }

package_tests() {
  SSS_TEST_URL="$URL" node --test tests/browser/package.test.cjs &&
    SSS_TEST_URL="$URL" node --test tests/browser/bundlers.test.cjs &&
    scripts/size.sh
}

# The demo in two pages, then Node programs logging in with a token: on Node 22 and on Node 20
# (which keeps its global WebSocket behind a flag).
demo_and_node() {
  SSS_DEMO_URL="$URL" node --test tests/browser/demo.test.cjs &&
    SSS_DEMO_URL="$URL" node22 --test tests/browser/node.test.cjs &&
    SSS_DEMO_URL="$URL" node --experimental-websocket --no-warnings \
      --test tests/browser/node.test.cjs &&
    SSS_DEMO_URL="$URL" node --test tests/browser/node-ws.test.cjs
}

demo_pages() { SSS_DEMO_URL="$URL" node --test tests/browser/demo.test.cjs; }

# ---- a. the client's behaviours in headless Chromium (tests/browser/client.test.cjs) ---------
start_server "${TEST_SERVER[@]}"
T=$SECONDS
log "a. the browser client's behaviours (tests/browser/client.test.cjs)"
run_step a "browser client (playwright)" client_cases
# The same cases in Node 22, on a fresh server (they count a channel's seqs from 1).
start_server "${TEST_SERVER[@]}"
T=$SECONDS
log "a. the same cases in Node 22 (tests/browser/client-node.test.mjs)"
run_step a "the client in Node 22" client_cases_node

# ---- b. the npm package from plain JS (playwright-core + node --test) --------------------------
start_server "${TEST_SERVER[@]}"
T=$SECONDS
log "b. npm package in a page (tests/browser/package.test.cjs), bundlers, size budget"
run_step b "npm package (playwright, bundlers, size budget)" package_tests
stop_server

# ---- c. the demo, as a person uses it: two pages chat (tests/browser/demo.test.cjs) -----------
T=$SECONDS
log "c. the chat demo in two pages (tests/browser/demo.test.cjs; screenshots: target/demo-ann.png, target/demo-bob.png, target/demo-presence.png)"
cargo build --quiet -p sss-server --features redis --example chat
start_server 's/.*open \(http[^ ]*\) in a browser.*/\1/p' \
  "$TARGET_DIR/debug/examples/chat" --addr 127.0.0.1:0
run_step c "demo (playwright)" demo_and_node
stop_server

# ---- d. the demo as a cluster, its handlers in worker processes (the same demo.test.cjs) ------
T=$SECONDS
log "d. the chat demo as 2 instances + 2 workers on Redis (tests/browser/demo.test.cjs)"
scripts/install-services.sh >/dev/null
REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
  --daemonize no >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 50); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done
start_server 's/.*open \(http[^ ]*\) in a browser.*/\1/p' \
  "$TARGET_DIR/debug/examples/chat" --addr 127.0.0.1:0 \
  --redis "redis://127.0.0.1:$REDIS_PORT/" --instances 2 --workers 2
run_step d "demo as a cluster with workers (playwright)" demo_pages
stop_server
stop_redis

# ---- e. the demo as 2 instances on a local Redis Cluster (the same demo.test.cjs) -------------
T=$SECONDS
log "e. the chat demo as 2 instances on a Redis Cluster (tests/browser/demo.test.cjs)"
NODES=$(scripts/redis-cluster.sh start "$WORK/redis-cluster")
start_server 's/.*open \(http[^ ]*\) in a browser.*/\1/p' \
  "$TARGET_DIR/debug/examples/chat" --addr 127.0.0.1:0 --redis-cluster "$NODES" --instances 2
run_step e "demo on a Redis Cluster (playwright)" demo_pages
stop_server
scripts/redis-cluster.sh stop "$WORK/redis-cluster"

if [ ${#FAILED[@]} -gt 0 ]; then
  log "FAILED: ${FAILED[*]}"
  exit 1
fi
log "all browser tests passed"
