#!/usr/bin/env bash
# tests/real_apps/setup.sh [VENV]: installs what tests/real_apps.rs runs, idempotent and quiet.
#
#   - gunicorn and uvicorn from PyPI, pinned, in a venv of their own (default
#     target/realapps-venv), created once and reused while the versions match;
#   - wrk from Debian's packages (apt-get, when run as root and it is missing);
#   - checks that Node >= 18 and systemd-notify are on PATH (the Node recipe uses both).
# Exits non-zero with a message on stderr when something cannot be installed (e.g. no
# network): the tests then fail with that message instead of skipping.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${1:-$ROOT/target/realapps-venv}
GUNICORN_VERSION=27.0.1
UVICORN_VERSION=0.54.0

have_versions() {
  [[ -x $VENV/bin/python ]] && "$VENV/bin/python" - "$GUNICORN_VERSION" "$UVICORN_VERSION" <<'PY' 2>/dev/null
import sys, gunicorn, uvicorn
sys.exit(0 if (gunicorn.__version__, uvicorn.__version__) == (sys.argv[1], sys.argv[2]) else 1)
PY
}

if ! have_versions; then
  echo "setup.sh: installing gunicorn $GUNICORN_VERSION and uvicorn $UVICORN_VERSION into $VENV" >&2
  python3 -m venv "$VENV" || { echo "setup.sh: python3 -m venv $VENV failed" >&2; exit 1; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "gunicorn==$GUNICORN_VERSION" "uvicorn==$UVICORN_VERSION" >&2 \
    || { echo "setup.sh: pip could not install gunicorn/uvicorn from PyPI (network?)" >&2; exit 1; }
  have_versions || { echo "setup.sh: $VENV still lacks the pinned versions" >&2; exit 1; }
fi

if ! command -v wrk >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "setup.sh: installing wrk (Debian package)" >&2
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -q -y --no-install-recommends wrk; } >/dev/null \
      || { echo "setup.sh: apt-get install wrk failed (network?)" >&2; exit 1; }
  else
    echo "setup.sh: wrk is missing: apt-get install wrk" >&2
    exit 1
  fi
fi

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if ((node_major < 18)); then
  echo "setup.sh: Node >= 18 is needed on PATH (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi
command -v systemd-notify >/dev/null || { echo "setup.sh: systemd-notify is missing (package systemd)" >&2; exit 1; }
