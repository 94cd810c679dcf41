# shellcheck shell=bash
# Source this (from any directory) before wasm builds and browser tests:
#     source scripts/wasm-env.sh
# It puts .tools/wasm/bin first on PATH, so `cargo`, `rustc` and `rustdoc` become Debian's 1.96
# (with the wasm32-unknown-unknown std that scripts/install-wasm-toolchain.sh built), next to
# wasm-bindgen, wasm-bindgen-test-runner and wasm-opt (npm binaryen 132).
# Only for wasm work: in a shell that sourced it, `cargo fmt`/`cargo clippy` and native builds no
# longer use rustup's toolchain. To keep the rest of a script native, source it in a subshell:
#     ( source scripts/wasm-env.sh && cargo build -p sss-wasm --target wasm32-unknown-unknown --release )
# Sourcing it twice is harmless.

_sss_dir=${BASH_SOURCE[0]%/*}
[ "$_sss_dir" = "${BASH_SOURCE[0]}" ] && _sss_dir=.
SSS_REPO=$(cd "$_sss_dir/.." && pwd)
unset _sss_dir
export SSS_WASM_TOOLS="$SSS_REPO/.tools/wasm"

if [ ! -x "$SSS_WASM_TOOLS/bin/cargo" ] || [ ! -e "$SSS_WASM_TOOLS/bin/wasm-bindgen" ]; then
  echo "wasm-env.sh: wasm toolchain missing; run scripts/install-wasm-toolchain.sh first" >&2
fi

# .tools/wasm/bin first (moved to the front if it is already on PATH).
_sss_path=":$PATH:"
while [[ $_sss_path == *":$SSS_WASM_TOOLS/bin:"* ]]; do
  _sss_path=${_sss_path/":$SSS_WASM_TOOLS/bin:"/:}
done
_sss_path=${_sss_path#:}
export PATH="$SSS_WASM_TOOLS/bin${_sss_path:+:${_sss_path%:}}"
unset _sss_path
# RUSTC/RUSTDOC (e.g. inherited from a rustup cargo) would override the shim's Debian rustc.
unset RUSTC RUSTDOC RUSTUP_TOOLCHAIN

# `cargo test/run --target wasm32-unknown-unknown` runs the tests in headless Chromium.
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
# Force Chrome/chromedriver (Debian's) in wasm-bindgen-test-runner and wasm-pack.
export CHROMEDRIVER=/usr/bin/chromedriver
export CHROME_BIN=/usr/bin/chromium
# playwright-core lives in .tools/wasm/node; it must use /usr/bin/chromium (executablePath) and
# never download a browser.
case ":${NODE_PATH:-}:" in
  *":$SSS_WASM_TOOLS/node/node_modules:"*) ;;
  *) export NODE_PATH="$SSS_WASM_TOOLS/node/node_modules${NODE_PATH:+:$NODE_PATH}" ;;
esac
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
