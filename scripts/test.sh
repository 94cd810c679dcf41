#!/usr/bin/env bash
# Runs every test of the workspace. Installs what is missing first; idempotent.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== unit and end-to-end tests"
cargo test --workspace
