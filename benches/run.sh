#!/usr/bin/env bash
# benches/run.sh: handover's benchmark suite, in one command.
#
#   benches/run.sh [--quick] [--publish] [--only 1,2,...] [--note TEXT] [--e2e-root DIR] ...
#
# Prepares what the scenarios need, then runs `cargo bench --bench handover -- ARGS`
# (the program is benches/handover/main.rs; its header lists every option):
#   - gunicorn and uvicorn in a venv of their own, target/bench-venv (python3 -m venv + pip,
#     pinned below): gunicorn for scenarios 1, 2, 4, 7, 9 and 10, uvicorn for 7 and 10;
#   - wrk, from Debian's packages (apt-get, when run as root and it is missing): scenarios 1, 2
#     and 6 are counted a second time by wrk (keep-alive, never retries); 4 measures with it.
# --quick needs neither: it runs scenario 1 for handover with the built-in demo worker and
# exits 1 if a request failed (about a minute; usable as a CI smoke test).
#
# Writes target/bench/results.json (everything, machine-readable), results.md (the tables)
# and reload.svg; --publish also rewrites docs/benchmarks.md, docs/benchmark-reload.svg and
# the README's Benchmarks section from this run. Loopback only; the whole run bounds itself
# (30 minutes at most; about 17 in practice on 2 cores, 5 of them scenario 9's reloads under
# CPU saturation, 4 scenario 10's deploys of a release that boots but fails) and kills only
# what it started. `--only 9 --publish` rewrites only scenario 9's section of
# docs/benchmarks.md; `--only 10 --publish` only scenario 10's, and its row of the README's
# Benchmarks table.
# Scenario 3 (systemd) needs root and the e2e harness (tests/e2e/sandbox.sh,
# packaging/build-deb.sh); without it, it is skipped and says why.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

GUNICORN_VERSION=27.0.1
UVICORN_VERSION=0.54.0
VENV=$ROOT/target/bench-venv

quick=0
for a in "$@"; do [[ $a == --quick ]] && quick=1; done

if ((!quick)); then
  if [[ ! -x $VENV/bin/gunicorn ]] || ! "$VENV/bin/gunicorn" --version 2>/dev/null | grep -q "$GUNICORN_VERSION" \
    || ! "$VENV/bin/uvicorn" --version 2>/dev/null | grep -q "$UVICORN_VERSION"; then
    echo "run.sh: creating $VENV with gunicorn $GUNICORN_VERSION and uvicorn $UVICORN_VERSION" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "gunicorn==$GUNICORN_VERSION" "uvicorn==$UVICORN_VERSION"
  fi
  if ! command -v wrk >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      echo "run.sh: installing wrk (Debian package)" >&2
      apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -q -y --no-install-recommends wrk >/dev/null
    else
      echo "run.sh: wrk is missing: apt-get install wrk (scenarios 1, 2, 4 and 6 need it)" >&2
      exit 1
    fi
  fi
fi

exec cargo bench --locked --bench handover -- "$@"
