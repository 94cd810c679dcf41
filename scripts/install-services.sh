#!/usr/bin/env bash
# Installs the services the tests run against, if missing: redis-server (Debian package) and
# SecantusDB, a MongoDB-wire-compatible server (PyPI), in .tools/mongo. Idempotent and quick when
# everything is there. The tests start and stop their own instances on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # The tests run their own servers; don't leave the packaged one on the default port.
  if command -v service >/dev/null 2>&1; then $SUDO service redis-server stop >/dev/null 2>&1 || true; fi
fi

SECANTUS_VERSION="0.7.0b3"
VENV=.tools/mongo
if ! "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('SecantusDB') == '$SECANTUS_VERSION'" >/dev/null 2>&1; then
  echo "== installing SecantusDB $SECANTUS_VERSION (MongoDB wire protocol test server)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "SecantusDB==$SECANTUS_VERSION"
fi
