#!/usr/bin/env bash
# Installs the wasm32 toolchain and the browser-test tools for client-wasm. Idempotent: every step
# checks first, so a run with everything in place takes a second or two.
#
# What it sets up (rustup's default toolchain is never touched; plain `cargo` stays rustup's):
#   apt      rustc-web cargo-web rust-web-src (Debian's Rust 1.96 with the std source that matches it),
#            lld-<LLVM major of rustc-web>, chromium, chromium-driver
#   sysroot  <Debian sysroot>/lib/rustlib/<host>/bin/rust-lld -> lld (Debian ships no rust-lld), and
#            the wasm32-unknown-unknown std (std, panic_abort, test) built once from rust-web-src and
#            installed into <Debian sysroot>/lib/rustlib/wasm32-unknown-unknown/lib (rebuilt only when
#            rustc-web changes: see the .stamp file beside that lib dir)
#   .tools/wasm/bin       cargo rustc rustdoc -> /usr/bin (Debian 1.96), wasm-opt (npm binaryen),
#                         wasm-bindgen, wasm-bindgen-test-runner (cargo install --root .tools/wasm)
#   .tools/wasm/node      npm prefix: binaryen@132 (wasm-opt; NOT Debian's binaryen 108, whose wasm-opt
#                         breaks wasm-bindgen's externref table), playwright-core (uses /usr/bin/chromium;
#                         never downloads a browser), typescript (tsc, for the typings test), ws,
#                         vite, webpack, rollup (with its node-resolve plugin) and esbuild (the
#                         bundler tests; esbuild also bundles the package in scripts/build-pkg.sh)
#   .tools/wasm/node22    Node 22 (npm node-linux-<arch>; linked as .tools/wasm/bin/node22): the
#                         package's Node tests run on it as well as on the machine's Node 20
#
# Use: scripts/install-wasm-toolchain.sh, then `source scripts/wasm-env.sh` before wasm builds.
# Overrides: WASM_BINDGEN_VERSION (default: the wasm-bindgen version in Cargo.lock, else 0.2.130),
#            BINARYEN_NPM_VERSION (132), PLAYWRIGHT_CORE_VERSION (1.64.1).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=$REPO/.tools/wasm
BIN=$TOOLS/bin
NODE_PREFIX=$TOOLS/node
TARGET=wasm32-unknown-unknown
BINARYEN_NPM_VERSION=${BINARYEN_NPM_VERSION:-132}
PLAYWRIGHT_CORE_VERSION=${PLAYWRIGHT_CORE_VERSION:-1.64.1}
# tsc: the package's typings are checked with `tsc --strict` (tests/browser/types).
TYPESCRIPT_VERSION=${TYPESCRIPT_VERSION:-5.9.3}
# ws: the WebSocket a Node program without a global one passes to the client (tests/browser).
WS_VERSION=${WS_VERSION:-8.18.3}
# vite: a tiny app is built with it, as a user would, and run in Chromium (tests/browser).
VITE_VERSION=${VITE_VERSION:-7.1.12}
WEBPACK_VERSION=${WEBPACK_VERSION:-5.102.1}
WEBPACK_CLI_VERSION=${WEBPACK_CLI_VERSION:-6.0.1}
ROLLUP_VERSION=${ROLLUP_VERSION:-4.68.8}
ROLLUP_RESOLVE_VERSION=${ROLLUP_RESOLVE_VERSION:-16.0.3}
# esbuild: the version vite depends on (one copy in node_modules).
ESBUILD_VERSION=${ESBUILD_VERSION:-0.25.12}
# Node 22, beside the machine's Node 20: the package's Node tests run on both (.tools/wasm/bin/node22).
NODE22_VERSION=${NODE22_VERSION:-22.23.5}
NODE22_PREFIX=$TOOLS/node22
DEFAULT_WASM_BINDGEN_VERSION=0.2.130
T0=$SECONDS

log() { printf '[wasm-toolchain] %s\n' "$*"; }
die() { printf '[wasm-toolchain] ERROR: %s\n' "$*" >&2; exit 1; }

# Our own shim dir must not be first on PATH while we work (cargo install must use rustup's cargo),
# and nothing from a caller's wasm environment may leak into the builds below.
PATH=$(printf '%s' "$PATH" | tr ':' '\n' | { grep -vxF "$BIN" || true; } | paste -sd: -)
export PATH="$HOME/.cargo/bin:$PATH"
unset RUSTC RUSTDOC RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER RUSTFLAGS RUSTDOCFLAGS CARGO_ENCODED_RUSTFLAGS \
      RUSTC_BOOTSTRAP CARGO_TARGET_DIR CARGO_BUILD_TARGET CARGO_BUILD_TARGET_DIR CARGO_BUILD_RUSTC_WRAPPER \
      CARGO_UNSTABLE_BUILD_STD

if [ "$(id -u)" = 0 ]; then SUDO=(); elif command -v sudo >/dev/null; then SUDO=(sudo); else
  die "needs root (or sudo) for apt-get and for writing into Debian's Rust sysroot"; fi

mkdir -p "$BIN" "$NODE_PREFIX"
# One install at a time (scripts/test.sh and a developer may both call this).
exec 9>"$TOOLS/.install.lock"
flock 9

# --------------------------------------------------------------------------------------------------
# 1. apt packages
pkg_installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
APT_UPDATED=0
apt_ensure() {
  local missing=() p
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt: installing ${missing[*]}"
  if [ "$APT_UPDATED" = 0 ]; then
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

apt_ensure rustc-web cargo-web rust-web-src chromium chromium-driver
[ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] || die "rustc-web/cargo-web did not provide /usr/bin/rustc and /usr/bin/cargo"
RUSTC_VV=$(/usr/bin/rustc -vV)
LLVM_MAJOR=$(sed -n 's/^LLVM version: \([0-9]*\)\..*/\1/p' <<<"$RUSTC_VV")
HOST=$(sed -n 's/^host: //p' <<<"$RUSTC_VV")
[ -n "$LLVM_MAJOR" ] && [ -n "$HOST" ] || die "cannot read LLVM version/host from /usr/bin/rustc -vV"
apt_ensure "lld-$LLVM_MAJOR"            # wasm-ld matching rustc-web's LLVM (lld-22 for 1.96)
LLD=/usr/lib/llvm-$LLVM_MAJOR/bin/lld
[ -x "$LLD" ] || die "$LLD missing"

RV=$(dpkg-query -W -f='${Version}' rustc-web)
SV=$(dpkg-query -W -f='${Version}' rust-web-src)
[ "$RV" = "$SV" ] || die "rustc-web $RV != rust-web-src $SV (the std source must match the compiler exactly)"

# --------------------------------------------------------------------------------------------------
# 2. toolchain shim (only ever put first on PATH for wasm builds, by scripts/wasm-env.sh)
for t in cargo rustc rustdoc; do
  [ "$(readlink "$BIN/$t" 2>/dev/null)" = "/usr/bin/$t" ] || ln -sfn "/usr/bin/$t" "$BIN/$t"
done

# Debian ships no rust-lld, the wasm32 target's default linker: point it at lld-$LLVM_MAJOR.
SYSROOT=$(/usr/bin/rustc --print sysroot)
HOSTBIN=$SYSROOT/lib/rustlib/$HOST/bin
if [ "$(readlink "$HOSTBIN/rust-lld" 2>/dev/null)" != "$LLD" ]; then
  log "linking $HOSTBIN/rust-lld -> $LLD"
  "${SUDO[@]}" mkdir -p "$HOSTBIN"
  "${SUDO[@]}" ln -sfn "$LLD" "$HOSTBIN/rust-lld"
fi

# --------------------------------------------------------------------------------------------------
# 3. wasm32 std in Debian's sysroot, built once from rust-web-src
WTARGET=$SYSROOT/lib/rustlib/$TARGET
WLIB=$WTARGET/lib
STD_COMPONENTS=std,panic_abort,test
STD_RUSTFLAGS=-Cembed-bitcode=yes     # keeps LLVM bitcode in the std rlibs so lto works in user crates
STAMP_WANT="$(printf '%s\nrust-web-src %s\ncomponents %s\nrustflags %s\n' \
  "$RUSTC_VV" "$SV" "$STD_COMPONENTS" "$STD_RUSTFLAGS")"
std_ok() {
  [ "$(cat "$WTARGET/.stamp" 2>/dev/null)" = "$STAMP_WANT" ] || return 1
  local c
  for c in std core alloc panic_abort test; do compgen -G "$WLIB/lib$c-*.rlib" >/dev/null || return 1; done
}
if ! std_ok; then
  SRC=$SYSROOT/lib/rustlib/src/rust/library
  [ -f "$SRC/Cargo.lock" ] || die "no std source at $SRC (rust-web-src)"
  log "building the $TARGET std ($STD_COMPONENTS) from $SRC (about a minute)"
  B=$(mktemp -d "${TMPDIR:-/tmp}/wasm-sysroot-build.XXXXXX")
  trap 'rm -rf "$B"' EXIT
  mkdir -p "$B/src"; : > "$B/src/lib.rs"
  cat > "$B/Cargo.toml" <<'EOF'
[package]
name = "wasm_sysroot_dummy"
version = "0.0.0"
edition = "2021"
[workspace]
[profile.release]
opt-level = 3
debug = 0
EOF
  (cd "$B" && RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 RUSTFLAGS="$STD_RUSTFLAGS" \
     /usr/bin/cargo build --quiet --release --target "$TARGET" -Zbuild-std="$STD_COMPONENTS")
  NEW=$B/lib; mkdir -p "$NEW"
  find "$B/target/$TARGET/release/deps" -name '*.rlib' ! -name 'libwasm_sysroot_dummy-*' -exec cp {} "$NEW/" \;
  "${SUDO[@]}" mkdir -p "$WTARGET"
  "${SUDO[@]}" rm -rf "$WLIB.new" "$WLIB"
  "${SUDO[@]}" cp -r "$NEW" "$WLIB.new"
  "${SUDO[@]}" mv "$WLIB.new" "$WLIB"
  printf '%s\n' "$STAMP_WANT" | "${SUDO[@]}" tee "$WTARGET/.stamp" >/dev/null
  rm -rf "$B"; trap - EXIT
  std_ok || die "wasm32 std install check failed"
fi

# --------------------------------------------------------------------------------------------------
# 4. wasm-bindgen-cli, exactly the wasm-bindgen version of Cargo.lock
if [ -z "${WASM_BINDGEN_VERSION:-}" ]; then
  WASM_BINDGEN_VERSION=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; if ($1 == "version") { gsub(/"/, "", $3); print $3; exit } }' \
    "$REPO/Cargo.lock" 2>/dev/null || true)
  if [ -z "$WASM_BINDGEN_VERSION" ]; then
    WASM_BINDGEN_VERSION=$DEFAULT_WASM_BINDGEN_VERSION
    log "note: Cargo.lock has no wasm-bindgen entry yet; using wasm-bindgen-cli $WASM_BINDGEN_VERSION" \
        "(re-run this script once Cargo.lock has one: the CLI must match it exactly)"
  fi
fi
have_wb() { "$BIN/$1" --version 2>/dev/null | awk '{print $2}'; }
if [ "$(have_wb wasm-bindgen)" != "$WASM_BINDGEN_VERSION" ] ||
   [ "$(have_wb wasm-bindgen-test-runner)" != "$WASM_BINDGEN_VERSION" ]; then
  log "cargo install wasm-bindgen-cli $WASM_BINDGEN_VERSION (rustup's cargo; a few minutes)"
  # Not --locked: its lockfile pins a webpki-roots version the registry index does not offer.
  # Run outside the repo so no project .cargo/config.toml applies.
  (cd / && cargo install --quiet --force wasm-bindgen-cli --version "=$WASM_BINDGEN_VERSION" --root "$TOOLS")
  [ "$(have_wb wasm-bindgen)" = "$WASM_BINDGEN_VERSION" ] || die "wasm-bindgen $WASM_BINDGEN_VERSION not installed"
fi

# --------------------------------------------------------------------------------------------------
# 5. npm: binaryen (wasm-opt), playwright-core and typescript into .tools/wasm/node
# The top-level "version" of an installed package (indentation differs between packages).
npm_version() { node -p "require('$NODE_PREFIX/node_modules/$1/package.json').version" 2>/dev/null; }
NPM_WANT=()
case "$(npm_version binaryen)" in "$BINARYEN_NPM_VERSION" | "$BINARYEN_NPM_VERSION".*) ;; *) NPM_WANT+=("binaryen@$BINARYEN_NPM_VERSION") ;; esac
[ "$(npm_version playwright-core)" = "$PLAYWRIGHT_CORE_VERSION" ] || NPM_WANT+=("playwright-core@$PLAYWRIGHT_CORE_VERSION")
[ "$(npm_version typescript)" = "$TYPESCRIPT_VERSION" ] || NPM_WANT+=("typescript@$TYPESCRIPT_VERSION")
[ "$(npm_version ws)" = "$WS_VERSION" ] || NPM_WANT+=("ws@$WS_VERSION")
[ "$(npm_version vite)" = "$VITE_VERSION" ] || NPM_WANT+=("vite@$VITE_VERSION")
[ "$(npm_version webpack)" = "$WEBPACK_VERSION" ] || NPM_WANT+=("webpack@$WEBPACK_VERSION")
[ "$(npm_version webpack-cli)" = "$WEBPACK_CLI_VERSION" ] || NPM_WANT+=("webpack-cli@$WEBPACK_CLI_VERSION")
[ "$(npm_version rollup)" = "$ROLLUP_VERSION" ] || NPM_WANT+=("rollup@$ROLLUP_VERSION")
[ "$(npm_version @rollup/plugin-node-resolve)" = "$ROLLUP_RESOLVE_VERSION" ] ||
  NPM_WANT+=("@rollup/plugin-node-resolve@$ROLLUP_RESOLVE_VERSION")
[ "$(npm_version esbuild)" = "$ESBUILD_VERSION" ] || NPM_WANT+=("esbuild@$ESBUILD_VERSION")
if [ ${#NPM_WANT[@]} -gt 0 ]; then
  command -v npm >/dev/null || die "npm not found (Node.js is needed for wasm-opt and playwright-core)"
  log "npm install ${NPM_WANT[*]} into $NODE_PREFIX"
  [ -f "$NODE_PREFIX/package.json" ] || printf '{ "private": true }\n' > "$NODE_PREFIX/package.json"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --silent \
    --save-exact "${NPM_WANT[@]}"
fi
WASM_OPT_JS=$NODE_PREFIX/node_modules/.bin/wasm-opt
[ -e "$WASM_OPT_JS" ] || die "$WASM_OPT_JS missing after npm install"
[ "$(readlink "$BIN/wasm-opt" 2>/dev/null)" = "$WASM_OPT_JS" ] || ln -sfn "$WASM_OPT_JS" "$BIN/wasm-opt"

# --------------------------------------------------------------------------------------------------
# 6. Node 22 (the npm package's Node tests run on it too: its global WebSocket, no flag). The
# machine's Node is 20; Node's own builds come from the npm registry as node-linux-<arch>, the
# binary itself in the tarball, kept in a prefix of its own so that it never shadows `node`.
case "$(uname -m)" in x86_64) NODE_ARCH=x64 ;; aarch64) NODE_ARCH=arm64 ;; *) NODE_ARCH=$(uname -m) ;; esac
NODE22=$NODE22_PREFIX/node_modules/node-linux-$NODE_ARCH/bin/node
if [ "$("$NODE22" --version 2>/dev/null)" != "v$NODE22_VERSION" ]; then
  log "npm install node-linux-$NODE_ARCH@$NODE22_VERSION into $NODE22_PREFIX"
  mkdir -p "$NODE22_PREFIX"
  [ -f "$NODE22_PREFIX/package.json" ] || printf '{ "private": true }\n' > "$NODE22_PREFIX/package.json"
  npm install --prefix "$NODE22_PREFIX" --no-audit --no-fund --silent --save-exact \
    "node-linux-$NODE_ARCH@$NODE22_VERSION"
  [ "$("$NODE22" --version 2>/dev/null)" = "v$NODE22_VERSION" ] || die "$NODE22 is not Node $NODE22_VERSION"
fi
[ "$(readlink "$BIN/node22" 2>/dev/null)" = "$NODE22" ] || ln -sfn "$NODE22" "$BIN/node22"

# --------------------------------------------------------------------------------------------------
# Summary
log "done in $((SECONDS - T0))s"
printf '  %-26s %s\n' \
  "rustc (wasm shim)" "$(/usr/bin/rustc --version) [rustc-web $RV, LLVM $LLVM_MAJOR]" \
  "cargo (wasm shim)" "$(/usr/bin/cargo --version)" \
  "rust-lld" "$HOSTBIN/rust-lld -> $LLD" \
  "wasm32 std" "$WLIB" \
  "wasm-bindgen" "$("$BIN/wasm-bindgen" --version)" \
  "wasm-opt" "$("$BIN/wasm-opt" --version) (npm binaryen $(npm_version binaryen))" \
  "playwright-core" "$(npm_version playwright-core) (executablePath: /usr/bin/chromium)" \
  "typescript" "$(npm_version typescript)" \
  "ws" "$(npm_version ws)" \
  "vite" "$(npm_version vite)" \
  "webpack" "$(npm_version webpack) (webpack-cli $(npm_version webpack-cli))" \
  "rollup" "$(npm_version rollup) (node-resolve $(npm_version @rollup/plugin-node-resolve))" \
  "esbuild" "$(npm_version esbuild)" \
  "node22" "$("$BIN/node22" --version) ($NODE22)" \
  "chromium" "$(dpkg-query -W -f='${Version}' chromium)" \
  "chromedriver" "$(dpkg-query -W -f='${Version}' chromium-driver)"
cat <<EOF

Environment for wasm builds and browser tests (or just: source scripts/wasm-env.sh):
  export PATH="$BIN:\$PATH"      # cargo/rustc/rustdoc = Debian 1.96 with the wasm32 std; wasm-bindgen; wasm-opt
  export CHROMEDRIVER=/usr/bin/chromedriver
  export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
  export NODE_PATH="$NODE_PREFIX/node_modules"   # require('playwright-core') from any script
  cargo build --target $TARGET --release -p <crate>
  wasm-bindgen --target web --out-dir <dir> target/$TARGET/release/<crate>.wasm
  wasm-opt -Oz <dir>/<crate>_bg.wasm -o <dir>/<crate>_bg.wasm
  cargo test --target $TARGET -p <crate>   # headless Chromium; needs webdriver.json beside the crate
                                           # (binary /usr/bin/chromium + the no-network flags)
EOF
