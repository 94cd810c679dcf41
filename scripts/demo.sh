#!/usr/bin/env bash
# Runs the demo: the chat server on the embedded in-memory scaler, serving a web app that uses
# the WASM package. Installs and builds what is missing first; idempotent.
# Usage: scripts/demo.sh [--addr HOST:PORT]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-wasm-toolchain.sh
scripts/build-pkg.sh
exec cargo run --release -p sss-server --example chat -- "$@"
