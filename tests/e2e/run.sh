#!/usr/bin/env bash
# tests/e2e/run.sh: handover's end-to-end suite under real systemd versions, in one command.
#
#   sudo tests/e2e/run.sh                                   # systemd 254 (the default)
#   sudo E2E_SYSTEMD="252 254 257 sid" tests/e2e/run.sh     # each in turn (what CI runs)
#
# Builds the release binary, builds the Debian package from it, and for each systemd version
# boots it as PID 1 of a container of its own (tests/e2e/sandbox.sh; 252 = Debian bookworm,
# 254 = bookworm-backports, 257 = trixie, sid = the newest Debian has), installs the package
# there, runs the scenarios of tests/e2e_systemd.rs with systemctl/journalctl and load from
# the host, and powers the container off again (also on failure or Ctrl-C). Scenarios that
# do not apply to a version are skipped with the reason printed. Ends with one line per
# version (passed/failed and the time it took); exit status 0 only if every version passed.
#
# Needs root, a kernel with overlayfs and cgroup2, and, the first time on a machine, the
# network to deb.debian.org (each version's root fs, ~1.5 min, cached in
# /var/lib/handover-e2e/rootfs-VERSION). Installs missing host tools with apt-get on
# Debian/Ubuntu. Environment: E2E_SYSTEMD (versions, space-separated), E2E_DIR, E2E_MIRROR
# (see sandbox.sh); CARGO_TEST_ARGS (extra cargo args).
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

versions=${E2E_SYSTEMD:-254}
summary=()
failed=0
for v in $versions; do
  t0=$SECONDS
  echo "run.sh: === systemd $v" >&2
  # Build the root fs first (a no-op when cached), so its one-time cost shows separately.
  E2E_SYSTEMD=$v tests/e2e/sandbox.sh build
  t_root=$((SECONDS - t0))
  # The test builds the .deb itself (packaging/build-deb.sh) from the binary cargo builds
  # for it, so what is tested is what is packaged.
  # shellcheck disable=SC2086
  if E2E_SYSTEMD=$v cargo test --release --locked ${CARGO_TEST_ARGS:-} --test e2e_systemd -- --ignored --nocapture; then
    result=passed
  else
    result=FAILED; failed=$((failed + 1))
  fi
  summary+=("run.sh: systemd $v: $result in $((SECONDS - t0)) s (root fs ${t_root} s)")
  echo "${summary[-1]}"
done
((${#summary[@]} < 2)) || printf '%s\n' "${summary[@]}"
echo "run.sh: e2e suite done for systemd ${versions}: $failed version(s) failed"
((failed == 0))
