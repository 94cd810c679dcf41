#!/usr/bin/env bash
# Builds the generated part of the npm package: pkg/dist/{web,bundler,node} from the crate
# client-wasm (sss-wasm). One command, idempotent; never edit pkg/dist by hand.
#
#   1. cargo build -p sss-wasm --target wasm32-unknown-unknown --profile wasm-release
#      (opt-level "s", fat LTO, one codegen unit: [profile.wasm-release] in the root Cargo.toml),
#      with Debian's rustc from scripts/wasm-env.sh, into target/wasm-pkg
#   2. wasm-bindgen --target web | bundler | nodejs  (out-name "sss")
#   3. wasm-opt -Oz --converge on every .wasm
#   4. prints the gzipped size of the web target's .wasm + JS glue (budget: 80 KB)
#
# SSS_WASM_STD=prebuilt uses the wasm32 std installed by scripts/install-wasm-toolchain.sh
# instead of rebuilding std with the crate (-Zbuild-std, panic=immediate-abort: no panic
# messages or locations, ~10 KB gzipped smaller; the first build takes a few minutes longer).
# Usage: scripts/build-pkg.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
T0=$SECONDS
log() { printf '[build-pkg] %s\n' "$*"; }

if ! out=$(scripts/install-wasm-toolchain.sh 2>&1); then
  printf '%s\n' "$out" >&2
  exit 1
fi
# shellcheck source=scripts/wasm-env.sh
source scripts/wasm-env.sh

TARGET=wasm32-unknown-unknown
STD_MODE=${SSS_WASM_STD:-build-std}
case "$STD_MODE" in
  build-std)
    export CARGO_TARGET_DIR="$REPO/target/wasm-pkg"
    # Nightly-only flags on Debian's stable 1.96 (the std source matches the compiler exactly).
    export RUSTC_BOOTSTRAP=1
    export RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort"
    BUILD_STD=(-Zbuild-std=std,panic_abort)
    ;;
  prebuilt)
    export CARGO_TARGET_DIR="$REPO/target/wasm-pkg-prebuilt"
    unset RUSTFLAGS RUSTC_BOOTSTRAP
    BUILD_STD=()
    ;;
  *) echo "SSS_WASM_STD must be build-std or prebuilt" >&2; exit 2 ;;
esac

log "cargo build (profile wasm-release, std: $STD_MODE)"
cargo build --quiet -p sss-wasm --target "$TARGET" --profile wasm-release "${BUILD_STD[@]}"
WASM=$CARGO_TARGET_DIR/$TARGET/wasm-release/sss_wasm.wasm

DIST=$REPO/pkg/dist
# Nothing to do when pkg/dist was generated from this very .wasm by this very script.
TYPINGS=("$REPO/pkg/sss.d.ts" "$REPO/pkg/init.d.ts" "$REPO/client-wasm/js/errors.js")
STAMP="$(sha256sum "$WASM" "${BASH_SOURCE[0]}" "${TYPINGS[@]}" | awk '{print $1}' | paste -sd-) $(wasm-bindgen --version)"
STAMP_FILE=$CARGO_TARGET_DIR/pkg-dist.stamp
if [ ! -f "$DIST/web/sss_bg.wasm" ] || [ "$(cat "$STAMP_FILE" 2>/dev/null)" != "$STAMP" ]; then
  rm -rf "$DIST.tmp"
  mkdir -p "$DIST.tmp"
  log "wasm-bindgen (web, bundler, nodejs) and wasm-opt -Oz --converge"
  for pair in web:web bundler:bundler nodejs:node; do
    target=${pair%%:*}
    dir=$DIST.tmp/${pair##*:}
    wasm-bindgen --target "$target" --out-dir "$dir" --out-name sss "$WASM"
    # --converge repeats -Oz until the module stops shrinking (~0.3 KB gzipped).
    wasm-opt -Oz --converge --strip-debug --strip-producers \
      --enable-bulk-memory --enable-nontrapping-float-to-int --enable-reference-types \
      --enable-multivalue --enable-sign-ext \
      "$dir/sss_bg.wasm" -o "$dir/sss_bg.wasm"
    # The hand-written typings replace wasm-bindgen's (which type nothing and expose the
    # module's mangled exports); only the web entry has `init`.
    rm -f "$dir/sss_bg.wasm.d.ts"
    if [ "$target" = web ]; then
      cat "$REPO/pkg/sss.d.ts" "$REPO/pkg/init.d.ts" > "$dir/sss.d.ts"
    else
      cp "$REPO/pkg/sss.d.ts" "$dir/sss.d.ts"
    fi
    # The error class lives in a snippet the module imports; every entry exports it too.
    errors=$(cd "$dir" && ls snippets/*/js/errors.js)
    if [ "$target" = nodejs ]; then
      printf 'const { SssError, isSssError } = require("./%s");
module.exports.SssError = SssError;
module.exports.isSssError = isSssError;
' "$errors" >> "$dir/sss.js"
    else
      printf 'export { SssError, isSssError } from "./%s";
' "$errors" >> "$dir/sss.js"
    fi
  done
  # The package is "type": "module"; the nodejs target is CommonJS, and requires its snippets,
  # which are ES modules (require(esm): Node >= 22.12, which has the global WebSocket too).
  printf '{ "type": "commonjs" }\n' > "$DIST.tmp/node/package.json"
  if [ -d "$DIST.tmp/node/snippets" ]; then
    printf '{ "type": "module" }\n' > "$DIST.tmp/node/snippets/package.json"
  fi
  rm -rf "$DIST"
  mv "$DIST.tmp" "$DIST"
  printf '%s\n' "$STAMP" > "$STAMP_FILE"
fi

gz() { gzip -9 -c "$1" | wc -c; }
W=$(gz "$DIST/web/sss_bg.wasm")
J=$(gz "$DIST/web/sss.js")
for f in "$DIST"/web/snippets/*/*.js; do [ -e "$f" ] && J=$((J + $(gz "$f"))); done
TOTAL=$((W + J))
log "pkg/dist built in $((SECONDS - T0))s"
printf '  web/sss_bg.wasm  %7d bytes, %6d gzipped\n' "$(stat -c %s "$DIST/web/sss_bg.wasm")" "$W"
printf '  web JS glue      %7d bytes, %6d gzipped\n' "$(cat "$DIST/web/sss.js" "$DIST"/web/snippets/*/*.js | wc -c)" "$J"
printf '  total gzipped    %7d bytes (%d.%d KB; budget 80 KB)\n' "$TOTAL" $((TOTAL / 1024)) $(((TOTAL % 1024) * 10 / 1024))
if [ "$TOTAL" -gt $((80 * 1024)) ]; then
  log "WARNING: over the 80 KB gzipped budget"
fi
