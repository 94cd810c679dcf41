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
  # The three targets' glue differ, their .wasm does not (checked): one copy ships, in bundler/
  # (where its import "./sss_bg.js" resolves, as bundlers and Node's wasm modules read it);
  # the web and Node entries load it from there.
  for pair in bundler:bundler web:web nodejs:node; do
    target=${pair%%:*}
    dir=$DIST.tmp/${pair##*:}
    wasm-bindgen --target "$target" --out-dir "$dir" --out-name sss "$WASM"
    if [ "$target" = bundler ]; then
      cp "$dir/sss_bg.wasm" "$DIST.tmp/bindgen.wasm"
      # --converge repeats -Oz until the module stops shrinking (~0.3 KB gzipped).
      wasm-opt -Oz --converge --strip-debug --strip-producers \
        --enable-bulk-memory --enable-nontrapping-float-to-int --enable-reference-types \
        --enable-multivalue --enable-sign-ext \
        "$dir/sss_bg.wasm" -o "$dir/sss_bg.wasm"
    else
      cmp -s "$dir/sss_bg.wasm" "$DIST.tmp/bindgen.wasm" ||
        { log "ERROR: the $target target's .wasm differs from the bundler one's"; exit 1; }
      rm "$dir/sss_bg.wasm"
    fi
    case "$target" in
      web) sed -i "s|new URL('sss_bg.wasm', import.meta.url)|new URL('../bundler/sss_bg.wasm', import.meta.url)|" "$dir/sss.js" ;;
      nodejs) sed -i 's|`${__dirname}/sss_bg.wasm`|`${__dirname}/../bundler/sss_bg.wasm`|' "$dir/sss.js" ;;
    esac
    grep -q "sss_bg.wasm" "$dir/sss.js" || { log "ERROR: $target glue does not load the .wasm"; exit 1; }
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
      printf 'const { SssError, isSssError } = require("./%s");\nmodule.exports.SssError = SssError;\nmodule.exports.isSssError = isSssError;\n' "$errors" >> "$dir/sss.js"
    else
      printf 'export { SssError, isSssError } from "./%s";\n' "$errors" >> "$dir/sss.js"
    fi
    # The web entry is usable only after `await init()`: before, its glue would fail with
    # "Cannot read properties of undefined (reading 'client_connect')". Say what is missing.
    if [ "$target" = web ]; then
      # And a `.wasm` the bundler did not emit (esbuild, Rollup leave `new URL(...)` as is) is
      # named as such, with what to do, instead of "expected magic word 00 61 73 6d".
      sed -i 's/wasm\.client_connect(/initialized().client_connect(/; s/wasm\.client_new(/initialized().client_new(/; s/^export { initSync, __wbg_init as default };$/export { initSync, init as default };/' "$dir/sss.js"
      [ "$(grep -c 'initialized()\.client_\|init as default' "$dir/sss.js")" = 3 ] ||
        { log "ERROR: the web glue changed: Client.connect, new Client or the init export not found"; exit 1; }
      cat >> "$dir/sss.js" <<EOF
import { SssError as NotLoaded } from "./$errors";
function initialized() {
  if (wasm === undefined) {
    throw new NotLoaded("invalid", "the module is not loaded: call (and await) init() before using the client");
  }
  return wasm;
}
async function init(module_or_path) {
  try {
    return await __wbg_init(module_or_path);
  } catch (e) {
    throw new NotLoaded("invalid", "could not load the client's .wasm (" + (e && e.message) + "). A bundler that does not emit it (esbuild, Rollup) needs it served (node_modules/super-scaled-sockets/dist/bundler/sss_bg.wasm) and its URL passed: init({ module_or_path: url })");
  }
}
EOF
    fi
    node --check "$dir/sss.js" || { log "ERROR: $dir/sss.js does not parse"; exit 1; }
  done
  rm "$DIST.tmp/bindgen.wasm"
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
WASM_OUT=$DIST/bundler/sss_bg.wasm
W=$(gz "$WASM_OUT")
GLUE=("$DIST/web/sss.js")
while IFS= read -r f; do GLUE+=("$f"); done < <(find "$DIST/web/snippets" -name '*.js')
J=0
for f in "${GLUE[@]}"; do J=$((J + $(gz "$f"))); done
TOTAL=$((W + J))
log "pkg/dist built in $((SECONDS - T0))s"
printf '  sss_bg.wasm      %7d bytes, %6d gzipped\n' "$(stat -c %s "$WASM_OUT")" "$W"
printf '  web JS glue      %7d bytes, %6d gzipped\n' "$(cat "${GLUE[@]}" | wc -c)" "$J"
printf '  total gzipped    %7d bytes (%d.%d KB; budget 80 KB)\n' "$TOTAL" $((TOTAL / 1024)) $(((TOTAL % 1024) * 10 / 1024))
if [ "$TOTAL" -gt $((80 * 1024)) ]; then
  log "WARNING: over the 80 KB gzipped budget"
fi
# What `npm pack` would publish (no network: a dry run).
PACK=$(cd "$REPO/pkg" && npm pack --dry-run --json 2>/dev/null)
printf '  npm pack         %7s bytes unpacked, %s bytes packed, %s files\n' \
  "$(node -e 'const p = JSON.parse(process.argv[1])[0]; console.log(p.unpackedSize)' "$PACK")" \
  "$(node -e 'const p = JSON.parse(process.argv[1])[0]; console.log(p.size)' "$PACK")" \
  "$(node -e 'const p = JSON.parse(process.argv[1])[0]; console.log(p.entryCount)' "$PACK")"
