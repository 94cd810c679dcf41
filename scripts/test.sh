#!/usr/bin/env bash
# Runs every test: lint, unit, end-to-end, multi-instance (real Redis, a MongoDB-wire server),
# and the browser tests in headless Chromium. Installs what is missing first; idempotent.
# Exits non-zero on any failure.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== install (skipped when present)"
scripts/install-services.sh
scripts/install-wasm-toolchain.sh

echo "== lint, docs, feature sets"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
# The server's features are independent: each set must build on its own.
cargo check -p sss-server --locked --quiet --no-default-features
cargo check -p sss-server --locked --quiet --no-default-features --features redis
cargo check -p sss-server --locked --quiet --no-default-features --features mongo

echo "== unit, state-machine, adversarial, end-to-end and multi-instance tests"
cargo test --workspace --locked

echo "== fuzzing, smoke mode (decoders and the socket state machine from the seeds; long runs: docs/FUZZING.md)"
scripts/fuzz.sh smoke

echo "== browser tests (headless Chromium)"
scripts/test-browser.sh

echo "== benchmarks, smoke mode (correctness of every scenario; full runs: docs/PERFORMANCE.md)"
cargo run --release --quiet -p sss-bench -- --smoke
