#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer, AddressSanitizer) of the frame decoders and of
# the server's socket state machine. Targets, invariants and past runs: docs/FUZZING.md.
#
# Usage:
#   scripts/fuzz.sh smoke          # short replay for the test suite: builds, then runs every
#                                  # target ~7 s from the committed seeds (about 20 s of fuzzing)
#   scripts/fuzz.sh run [SECONDS]  # the long run: every target SECONDS (default 600), one after
#                                  # the other, keeping its corpus in fuzz/corpus/<target>
#
# Installs cargo-fuzz when it is missing. Exits non-zero when a target crashes; the input is then
# in fuzz/artifacts/<target>/ (replay: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(decode_client_frame decode_server_frame socket_machine)
# cargo fuzz passes nightly-only rustc flags (-Zsanitizer=address, coverage instrumentation);
# the project's toolchain is stable, and RUSTC_BOOTSTRAP lets it accept them.
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz > /dev/null; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi

mode="${1:-}"
case "$mode" in
smoke) seconds=7 ;;
run) seconds="${2:-600}" ;;
*)
    echo "usage: $0 smoke | run [SECONDS]" >&2
    exit 2
    ;;
esac

mkdir -p fuzz/logs
echo "== build fuzz targets"
cargo fuzz build

for t in "${TARGETS[@]}"; do
    if [ "$mode" = smoke ]; then
        # A throwaway corpus: the smoke run must not add files next to the committed seeds.
        corpus="$(mktemp -d)"
        trap 'rm -rf "$corpus"' EXIT
    else
        corpus="fuzz/corpus/$t"
        mkdir -p "$corpus"
    fi
    echo "== fuzz $t for ${seconds}s"
    log="fuzz/logs/$t.log"
    # One process at lowered priority: the machines this runs on are small and shared. That is
    # libFuzzer's default; `-jobs=1` would do the same through a child writing ./fuzz-0.log.
    nice -n 10 cargo fuzz run "$t" "$corpus" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 > "$log" 2>&1 || {
        tail -n 60 "$log"
        echo "== $t FAILED: full output in $log, input in fuzz/artifacts/$t/" >&2
        exit 1
    }
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" || tail -n 3 "$log"
    if [ "$mode" = smoke ]; then
        rm -rf "$corpus"
    fi
done
echo "== fuzzing: no crash"
