#!/usr/bin/env bash
# The browser package's size as an application ships it, against its budget: the README's
# example (tests/browser/bundlers/app: connect with a token, ask, subscribe) built by Vite in
# production mode, every emitted .js and .wasm gzipped (-9) and summed; and the npm tarball's
# unpacked size (`npm pack --dry-run`). Exits non-zero above the budget.
#
# Budget: SSS_SIZE_BUDGET bytes gzipped (default 25600: 25 KB, issue 9). Run by
# scripts/test-browser.sh; builds pkg/dist first (scripts/build-pkg.sh, idempotent).
# Usage: scripts/size.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
BUDGET=${SSS_SIZE_BUDGET:-25600}
log() { printf '[size] %s\n' "$*"; }

scripts/build-pkg.sh >/dev/null
# shellcheck source=scripts/wasm-env.sh
source scripts/wasm-env.sh
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sss-size.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cp -r tests/browser/bundlers/app "$WORK/app"
mkdir "$WORK/app/node_modules"
ln -s "$REPO/pkg" "$WORK/app/node_modules/super-scaled-sockets"
(cd "$WORK/app" && "$SSS_WASM_TOOLS/node/node_modules/.bin/vite" build --logLevel error)

gz() { gzip -9 -c "$1" | wc -c; }
JS=0
WASM=0
while IFS= read -r f; do
  case "$f" in
    *.wasm) WASM=$((WASM + $(gz "$f"))) ;;
    *) JS=$((JS + $(gz "$f"))) ;;
  esac
done < <(find "$WORK/app/dist" -type f \( -name '*.js' -o -name '*.wasm' \))
TOTAL=$((JS + WASM))
PACK=$(cd pkg && npm pack --dry-run --json 2>/dev/null)
UNPACKED=$(node -e 'console.log(JSON.parse(process.argv[1])[0].unpackedSize)' "$PACK")
log "Vite production build of the README example (gzip -9):"
printf '  JS (the .wasm inlined) %7d bytes\n' "$JS"
printf '  .wasm files            %7d bytes\n' "$WASM"
# KB to one decimal, rounded.
kb() { printf '%d.%d' $((($1 * 10 + 512) / 10240)) $(((($1 * 10 + 512) / 1024) % 10)); }
printf '  total                  %7d bytes (%s KB; budget %s KB)\n' "$TOTAL" "$(kb "$TOTAL")" "$(kb "$BUDGET")"
printf '  npm pack               %7d bytes unpacked\n' "$UNPACKED"
if [ "$TOTAL" -gt "$BUDGET" ]; then
  log "FAILED: $TOTAL bytes gzipped, over the budget of $BUDGET"
  exit 1
fi
log "within the budget"
