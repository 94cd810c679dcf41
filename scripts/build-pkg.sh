#!/usr/bin/env bash
# Builds the generated part of the npm package, pkg/dist, from the crate client-wasm (sss-wasm:
# the client core as WebAssembly) and its JS driver (client-wasm/js). One command, idempotent;
# never edit pkg/dist by hand.
#
#   1. cargo build -p sss-wasm --target wasm32-unknown-unknown --profile wasm-release
#      (opt-level "s", fat LTO, one codegen unit: [profile.wasm-release] in the root Cargo.toml),
#      with Debian's rustc from scripts/wasm-env.sh, into $CARGO_TARGET_DIR/wasm-pkg
#   2. wasm-bindgen --target web (out-name "core"), wasm-opt -Oz --converge
#   3. the .wasm inlined as a string (wasm.js), and client-wasm/js/client.js bundled with the
#      glue by esbuild: dist/sss.js (ES module) and dist/sss.cjs (CommonJS), the same code, its
#      internal `_names` shortened (applications' minifiers leave properties alone). One
#      file per format, nothing to fetch: every bundler (Vite, webpack, esbuild, Rollup) and
#      Node take it with no configuration, and `init()` is optional.
#   4. prints the gzipped size of dist/sss.js and the `npm pack` size (scripts/size.sh measures
#      what an application ships, in a Vite production build, against the budget)
#
# SSS_WASM_STD=prebuilt uses the wasm32 std installed by scripts/install-wasm-toolchain.sh
# instead of rebuilding std with the crate (-Zbuild-std, panic=immediate-abort: no panic
# messages or locations, smaller; the first build takes a few minutes longer).
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
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}/wasm-pkg"
    # Nightly-only flags on Debian's stable 1.96 (the std source matches the compiler exactly).
    export RUSTC_BOOTSTRAP=1
    # fmt-debug=none: every Debug impl prints nothing (nothing in the wasm prints one); with
    # location-detail=none (no file names for panic locations): −3.2 KB gzipped of wasm.
    export RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort -Zfmt-debug=none -Zlocation-detail=none"
    BUILD_STD=(-Zbuild-std=std,panic_abort)
    ;;
  prebuilt)
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}/wasm-pkg-prebuilt"
    unset RUSTFLAGS RUSTC_BOOTSTRAP
    BUILD_STD=()
    ;;
  *) echo "SSS_WASM_STD must be build-std or prebuilt" >&2; exit 2 ;;
esac

log "cargo build (profile wasm-release, std: $STD_MODE)"
cargo build --quiet -p sss-wasm --target "$TARGET" --profile wasm-release "${BUILD_STD[@]}"
WASM=$CARGO_TARGET_DIR/$TARGET/wasm-release/sss_wasm.wasm

DIST=$REPO/pkg/dist
JS=("$REPO/client-wasm/js/client.js" "$REPO/client-wasm/js/errors.js")
TYPINGS=("$REPO/pkg/sss.d.ts")
ESBUILD=$SSS_WASM_TOOLS/node/node_modules/.bin/esbuild
# Nothing to do when pkg/dist was generated from this very .wasm by this very script.
STAMP="$(sha256sum "$WASM" "${BASH_SOURCE[0]}" "${JS[@]}" "${TYPINGS[@]}" | awk '{print $1}' | paste -sd-) $(wasm-bindgen --version)"
STAMP_FILE=$CARGO_TARGET_DIR/pkg-dist.stamp
if [ ! -f "$DIST/sss.js" ] || [ "$(cat "$STAMP_FILE" 2>/dev/null)" != "$STAMP" ]; then
  GEN=$CARGO_TARGET_DIR/pkg-gen
  rm -rf "$GEN" "$DIST.tmp"
  mkdir -p "$GEN" "$DIST.tmp"
  log "wasm-bindgen, wasm-opt -Oz --converge, esbuild"
  # --encode-into always: strings go in with TextEncoder.encodeInto, without the glue's fallback
  # (every browser and Node >= 12 has it).
  wasm-bindgen --target web --encode-into always --omit-default-module-path --out-dir "$GEN" \
    --out-name core "$WASM"
  # --converge repeats -Oz until the module stops shrinking.
  # --flatten --rereloop first: 0.2 KB gzipped smaller.
  wasm-opt --flatten --rereloop -Oz -Oz --converge --strip-debug --strip-producers \
    --enable-bulk-memory --enable-nontrapping-float-to-int --enable-reference-types \
    --enable-multivalue --enable-sign-ext \
    "$GEN/core_bg.wasm" -o "$GEN/core.wasm"
  # Import, export and module names cut to one or two letters (wasm-bindgen's carry a hash:
  # `__wbg___wbindgen_is_null_c22311b1cc228e3a`), in the module and in the glue that uses them
  # (wasm-opt prints the renaming as JSON): 0.4 KB gzipped smaller.
  wasm-opt --minify-imports-and-exports-and-modules --enable-reference-types \
    --enable-bulk-memory --enable-nontrapping-float-to-int --enable-multivalue --enable-sign-ext \
    "$GEN/core.wasm" -o "$GEN/core.min.wasm" > "$GEN/names.json"
  mv "$GEN/core.min.wasm" "$GEN/core.wasm"
  node -e '
    const fs = require("fs");
    const [names, glue, wasm] = process.argv.slice(1);
    const { imports, exports } = JSON.parse(fs.readFileSync(names, "utf8"));
    const module = new WebAssembly.Module(fs.readFileSync(wasm));
    let js = fs.readFileSync(glue, "utf8");
    const swap = (from, to, what) => {
      const n = js.split(from).length - 1;
      if (n === 0 && what) throw new Error(`the glue has no ${what} ${JSON.stringify(from)}`);
      js = js.split(from).join(to);
    };
    // The module the imports come from: the one key of the object __wbg_get_imports returns.
    const from = new Set(imports.map(([m]) => m));
    const to = new Set(WebAssembly.Module.imports(module).map((i) => i.module));
    if (from.size !== 1 || to.size !== 1) throw new Error(`expected one import module: ${[...from]}`);
    swap(`${JSON.stringify([...from][0])}:`, `${JSON.stringify([...to][0])}:`, "import module");
    for (const [, name, short] of imports) swap(`        ${name}: function(`, `        ${short}: function(`, "import");
    // Longest first (no name is then cut inside a longer one). Exports the glue does not call
    // (wasm-bindgen abort hooks, __wbindgen_free) are fine.
    exports.sort(([a], [b]) => b.length - a.length);
    for (const [name, short] of exports) swap(`wasm.${name}`, `wasm.${short}`, null);
    fs.writeFileSync(glue, js);
  ' "$GEN/names.json" "$GEN/core.js" "$GEN/core.wasm"
  if grep -Eq 'wasm\.(__w|core_)|__wbg_[a-z_]+_[0-9a-f]{16}' "$GEN/core.js"; then
    log "ERROR: the glue still uses a wasm name that was minified"
    exit 1
  fi
  # The module's bytes as a JS string, one character per byte (U+0000..U+00FF, raw in UTF-8,
  # only `"`, `\`, CR, LF and NUL escaped): gzip still finds the module's repeats, byte-aligned
  # (base64 hides them: the package was 14 KB gzipped larger with it). Each byte is XORed with
  # the key that gzips smallest (the module's commonest bytes, 0x00 first, then need no escape
  # and no second UTF-8 byte: 1.1 KB gzipped smaller than no key).
  node -e '
    const fs = require("fs");
    const zlib = require("zlib");
    const bytes = fs.readFileSync(process.argv[1]);
    const esc = { 0: "\\x00", 10: "\\n", 13: "\\r", 34: "\\\"", 92: "\\\\" };
    const encode = (key) => {
      let s = "";
      for (const b of bytes) s += esc[b ^ key] || String.fromCharCode(b ^ key);
      return `export const key = ${key};\nexport default "${s}";\n`;
    };
    let best;
    for (let key = 0; key < 256; key++) {
      const js = encode(key);
      const size = zlib.gzipSync(js, { level: 9 }).length;
      if (!best || size < best.size) best = { js, size };
    }
    fs.writeFileSync(process.argv[2], best.js);
  ' "$GEN/core.wasm" "$GEN/wasm.js"
  cp "${JS[@]}" "$GEN/"
  for format in esm:js cjs:cjs; do
    "$ESBUILD" "$GEN/client.js" --bundle --format="${format%%:*}" --log-level=warning \
      --legal-comments=none --charset=utf8 --mangle-props='^_[a-zA-Z]' \
      --outfile="$DIST.tmp/sss.${format##*:}"
    node --check "$DIST.tmp/sss.${format##*:}" || { log "ERROR: sss.${format##*:} does not parse"; exit 1; }
  done
  # The glue's own loader (a fetch of `new URL("core_bg.wasm", import.meta.url)`) must not
  # survive the bundling: bundlers would look for a .wasm that is not there.
  if grep -q 'import\.meta\|_bg\.wasm' "$DIST.tmp/sss.js" "$DIST.tmp/sss.cjs"; then
    log "ERROR: the bundle still refers to a .wasm file"
    exit 1
  fi
  cp "${TYPINGS[@]}" "$DIST.tmp/"
  rm -rf "$DIST"
  mv "$DIST.tmp" "$DIST"
  printf '%s\n' "$STAMP" > "$STAMP_FILE"
fi

gz() { gzip -9 -c "$1" | wc -c; }
GEN=$CARGO_TARGET_DIR/pkg-gen
log "pkg/dist built in $((SECONDS - T0))s"
printf '  core.wasm        %7d bytes, %6d gzipped (inlined in dist/sss.js)\n' \
  "$(stat -c %s "$GEN/core.wasm")" "$(gz "$GEN/core.wasm")"
printf '  dist/sss.js      %7d bytes, %6d gzipped (not minified: see scripts/size.sh)\n' \
  "$(stat -c %s "$DIST/sss.js")" "$(gz "$DIST/sss.js")"
# What `npm pack` would publish (no network: a dry run).
PACK=$(cd "$REPO/pkg" && npm pack --dry-run --json 2>/dev/null)
printf '  npm pack         %7s bytes unpacked, %s bytes packed, %s files\n' \
  "$(node -e 'const p = JSON.parse(process.argv[1])[0]; console.log(p.unpackedSize)' "$PACK")" \
  "$(node -e 'const p = JSON.parse(process.argv[1])[0]; console.log(p.size)' "$PACK")" \
  "$(node -e 'const p = JSON.parse(process.argv[1])[0]; console.log(p.entryCount)' "$PACK")"
