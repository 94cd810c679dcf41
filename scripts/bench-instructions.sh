#!/usr/bin/env bash
# Server instructions per operation, counted by valgrind's callgrind rather than timed: the
# same build and inputs give the same count within a few percent whatever else the machine
# does, where `sss-bench`'s CPU times move by ±20 % from run to run on a busy 2-core VM. Use it
# to see what a change to a hot path buys; the CPU times (`sss-bench`) remain the figures that
# count, since they include the kernel (most of a delivery's cost on loopback) and cache misses.
#
# Runs the scenario twice with its server children under callgrind, for 3 s and for 9 s, and
# divides the difference in each server's instructions by the difference in operations:
# start-up and connections cancel out. One line per server the scenario starts (the raw floor
# first, where it has one).
#
# Usage: scripts/bench-instructions.sh fanout|rpc|baseline|tells [sss-bench options]
#   e.g. scripts/bench-instructions.sh fanout --subscribers 200 --rate 5
# SSS_BENCH_BIN=path counts that build of sss-bench instead of building this tree's (keep a
# copy of the binary to compare a change with what it replaces).
# Needs valgrind (Debian's package). Slow servers: keep the load small (the defaults below
# are what a server under callgrind keeps up with).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
SCENARIO=${1:?usage: scripts/bench-instructions.sh fanout|rpc|baseline|tells [options]}
shift
case "$SCENARIO" in
  fanout) FIELD=deliveries DEFAULTS=(--subscribers 200 --rate 5) ;;
  rpc | baseline) FIELD=round_trips DEFAULTS=(--connections 10) ;;
  tells) FIELD=batches DEFAULTS=(--connections 10) ;;
  *) echo "unknown scenario $SCENARIO" >&2; exit 2 ;;
esac
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
BIN=${SSS_BENCH_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --locked -q -p sss-bench
  BIN=target/release/sss-bench
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sss-instructions.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/wrap" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file=$WORK/out/\$\$.cg -- "\$@"
EOF
chmod +x "$WORK/wrap"

for d in 3 9; do
  rm -rf "$WORK/out"
  mkdir "$WORK/out"
  SSS_BENCH_SERVER_WRAP="$WORK/wrap" "$BIN" "$SCENARIO" --duration "$d" \
    "${DEFAULTS[@]}" "$@" 2>/dev/null |
    python3 -c "import sys, json
for line in sys.stdin:
    if line.startswith('{'):
        j = json.loads(line)
        print(j.get('server', 'sss'), j['$FIELD'])" >"$WORK/ops.$d"
  # The servers in the order they started, as the scenario reports them.
  for f in $(ls -tr "$WORK"/out/*.cg); do
    callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ && !seen { gsub(",", "", $1); print $1; seen = 1 }'
  done >"$WORK/ins.$d"
done
paste "$WORK/ops.3" "$WORK/ops.9" "$WORK/ins.3" "$WORK/ins.9" |
  awk -v f="$FIELD" '{ printf "%-12s %8.0f instructions per operation (%s: %d, then %d)\n", $1, ($6 - $5) / ($4 - $2), f, $2, $4 }'
