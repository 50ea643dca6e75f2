#!/usr/bin/env bash
# tests/e2e/run.sh: handover's end-to-end suite under a real systemd 254, in one command.
#
#   sudo tests/e2e/run.sh
#
# Builds the release binary, builds the Debian package from it, boots systemd 254 (Debian
# bookworm-backports) as PID 1 of a container of its own (tests/e2e/sandbox.sh), installs
# the package there, runs the scenarios of tests/e2e_systemd.rs with systemctl/journalctl
# and load from the host, and powers the container off again (also on failure or Ctrl-C).
# Ends with cargo's "test result:" line; exit status 0 only if every scenario passed.
#
# Needs root, a kernel with overlayfs and cgroup2, and, the first time on a machine, the
# network to deb.debian.org (the container's root fs, ~1 min, cached in
# /var/lib/handover-e2e). Installs missing host tools with apt-get on Debian/Ubuntu.
# Environment: E2E_DIR, E2E_MIRROR (see sandbox.sh); CARGO_TEST_ARGS (extra cargo args).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
[[ $(id -u) == 0 ]] || { echo "run.sh: must run as root (it boots a container)" >&2; exit 1; }

# Host tools the sandbox and the packaging need, by Debian package.
declare -A PKG_OF=([unshare]=util-linux [nsenter]=util-linux [setsid]=util-linux
  [setpriv]=util-linux [flock]=util-linux [findmnt]=mount [script]=bsdutils [wget]=wget
  [gpgv]=gpgv [perl]=perl-base [dpkg-deb]=dpkg [gzip]=gzip [objdump]=binutils [strip]=binutils)
missing=()
for c in "${!PKG_OF[@]}"; do command -v "$c" >/dev/null || missing+=("${PKG_OF[$c]}"); done
if ((${#missing[@]})); then
  echo "run.sh: installing host packages: ${missing[*]}" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -q -y --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi
# The suite's own Drop powers the container off; this covers a killed cargo.
trap 'tests/e2e/sandbox.sh down >/dev/null 2>&1 || true' EXIT

t0=$SECONDS
# Build the root fs first (a no-op when cached), so its one-time cost shows separately.
tests/e2e/sandbox.sh build
# The test builds the .deb itself (packaging/build-deb.sh) from the binary cargo builds
# for it, so what is tested is what is packaged.
# shellcheck disable=SC2086
HANDOVER_E2E=1 cargo test --release --locked ${CARGO_TEST_ARGS:-} --test e2e_systemd -- --nocapture
echo "run.sh: e2e suite done in $((SECONDS - t0)) s"
