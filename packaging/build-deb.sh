#!/usr/bin/env bash
# build-deb.sh: build the Debian package of handover from this repository.
#
#   packaging/build-deb.sh [--no-build]      -> target/debian/handover_<version>-<rev>_<arch>.deb
#
# It prints the path of the .deb on standard output (and nothing else there).
# Builds the release binary (unless --no-build), then lays out the package tree and calls
# `dpkg-deb --build`. Needs only cargo, dpkg-deb and gzip, which a Debian machine has: no
# cargo-deb, no debhelper, nothing to download beyond the crates `cargo build` fetches.
# The package holds:
#   /usr/bin/handover
#   /usr/lib/systemd/system/handover@.service, handover@.socket
#   /usr/lib/systemd/system-generators/handover-generator (notify-reload guard for systemd < 253)
#   /usr/share/man/man1/handover.1.gz, /usr/share/man/man5/handover.toml.5.gz
#   /usr/share/doc/handover/examples/app.toml (and systemd/: app.service, app.socket,
#     notify-reload.conf; the recipes for real servers, each with its app.toml: gunicorn/
#     gunicorn.conf.py, uvicorn/uvicorn_drain.py, uvicorn/handover_outcomes.py, node/server.js),
#     copyright, changelog.Debian.gz
#   /usr/share/lintian/overrides/handover (packaging/lintian-overrides: each one justified)
#   /usr/share/bash-completion/completions/handover, /usr/share/zsh/vendor-completions/_handover,
#     /usr/share/fish/vendor_completions.d/handover.fish (from `handover completions SHELL`)
#   /etc/handover/ (empty: one APP.toml per app goes here)
# The version is Cargo.toml's, the Debian revision the top entry of packaging/changelog's
# (which must name the same upstream version: bump both together).
# Set SOURCE_DATE_EPOCH for reproducible timestamps (default: the last commit's time),
# HANDOVER_BIN to package another build of the binary, HANDOVER_DEB_DIR to write the .deb
# elsewhere than target/debian (tests/packaging.rs builds it in a temporary directory), and
# HANDOVER_DEB_VERSION to give it another upstream version (the e2e upgrade test packages a
# second build of the binary, which reports that version, as a newer package).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
die() { echo "build-deb.sh: $*" >&2; exit 1; }
for c in cargo dpkg-deb gzip; do command -v "$c" >/dev/null || die "missing $c"; done

[[ ${1:-} == --no-build ]] || cargo build --release --locked
# HANDOVER_BIN: package this binary instead (the e2e test passes the one cargo built for it).
BIN=${HANDOVER_BIN:-$ROOT/target/release/handover}
[[ -x $BIN ]] || die "no $BIN; run cargo build --release first"

# HANDOVER_DEB_VERSION: another upstream version (the e2e upgrade test packages a second
# build of the binary, which reports that version, as a newer package).
VERSION=${HANDOVER_DEB_VERSION:-$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)}
[[ -n $VERSION ]] || die "cannot read the version from Cargo.toml"
ARCH=$(dpkg --print-architecture)
# The Debian changelog's top entry gives the full version: "handover (0.1.0-1) unstable; ...".
CHANGELOG=packaging/changelog
if [[ -n ${HANDOVER_DEB_VERSION:-} ]]; then
  # A test build of another version: its own top entry above the real changelog.
  CHANGELOG=$(mktemp)
  trap 'rm -f "$CHANGELOG"' EXIT
  { printf 'handover (%s-1) unstable; urgency=medium\n\n  * Test build of the same code under version %s.\n\n' "$VERSION" "$VERSION"
    printf ' -- handover developers <dev@handover.invalid>  %s\n\n' "$(sed -n 's/^ -- .*>  //p' packaging/changelog | head -n1)"
    cat packaging/changelog; } > "$CHANGELOG"
fi
DEBVER=$(sed -n '1s/^handover (\([^)]*\)) .*/\1/p' "$CHANGELOG")
[[ ${DEBVER%-*} == "$VERSION" ]] ||
  die "packaging/changelog's top entry is ${DEBVER:-unreadable}, Cargo.toml says $VERSION: add a changelog entry"
OUT=${HANDOVER_DEB_DIR:-$ROOT/target/debian}
PKG=$OUT/handover_${DEBVER}_${ARCH}
DEB=$PKG.deb
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

rm -rf "$PKG"
install -d "$PKG/DEBIAN" "$PKG/usr/bin" "$PKG/usr/lib/systemd/system" "$PKG/usr/lib/systemd/system-generators" \
  "$PKG/usr/share/man/man1" "$PKG/usr/share/man/man5" \
  "$PKG/usr/share/doc/handover/examples/systemd" "$PKG/usr/share/doc/handover/examples/gunicorn" \
  "$PKG/usr/share/doc/handover/examples/uvicorn" "$PKG/usr/share/doc/handover/examples/node" "$PKG/etc/handover"

install -m 0755 "$BIN" "$PKG/usr/bin/handover"
# Debian policy: binaries are shipped stripped (the symbols are 90% of the file).
if command -v strip >/dev/null; then strip --strip-unneeded --remove-section=.comment "$PKG/usr/bin/handover"; fi

install -m 0644 systemd/handover@.service systemd/handover@.socket "$PKG/usr/lib/systemd/system/"
install -m 0755 systemd/handover-generator "$PKG/usr/lib/systemd/system-generators/"
install -m 0644 systemd/app.service systemd/app.socket systemd/notify-reload.conf \
  "$PKG/usr/share/doc/handover/examples/systemd/"
install -m 0644 packaging/examples/app.toml "$PKG/usr/share/doc/handover/examples/"
# The recipes for real servers (README "Running a real app"; tests/real_apps.rs runs them).
for f in gunicorn/app.toml gunicorn/gunicorn.conf.py uvicorn/app.toml uvicorn/uvicorn_drain.py \
  uvicorn/handover_outcomes.py node/app.toml node/server.js; do
  install -m 0644 "packaging/examples/$f" "$PKG/usr/share/doc/handover/examples/$f"
done
install -m 0644 packaging/copyright "$PKG/usr/share/doc/handover/copyright"
# Man pages gzipped with -n (no name/timestamp inside: reproducible), as policy wants.
gzip -9n < man/handover.1 > "$PKG/usr/share/man/man1/handover.1.gz"
gzip -9n < man/handover.toml.5 > "$PKG/usr/share/man/man5/handover.toml.5.gz"
chmod 0644 "$PKG"/usr/share/man/man*/*.gz
# The Debian changelog, compressed the same way (policy 12.7: changelog.Debian.gz for a
# package whose version has a Debian revision).
gzip -9n < "$CHANGELOG" > "$PKG/usr/share/doc/handover/changelog.Debian.gz"
chmod 0644 "$PKG/usr/share/doc/handover/changelog.Debian.gz"
# lintian's overrides, each with the reason it does not apply.
install -D -m 0644 packaging/lintian-overrides "$PKG/usr/share/lintian/overrides/handover"

# Shell completions, generated by the binary from its own command-line definition, in the
# directories bash-completion, zsh and fish load them from on demand.
install -d "$PKG/usr/share/bash-completion/completions" "$PKG/usr/share/zsh/vendor-completions" \
  "$PKG/usr/share/fish/vendor_completions.d"
"$BIN" completions bash > "$PKG/usr/share/bash-completion/completions/handover"
"$BIN" completions zsh > "$PKG/usr/share/zsh/vendor-completions/_handover"
"$BIN" completions fish > "$PKG/usr/share/fish/vendor_completions.d/handover.fish"
chmod 0644 "$PKG/usr/share/bash-completion/completions/handover" \
  "$PKG/usr/share/zsh/vendor-completions/_handover" "$PKG/usr/share/fish/vendor_completions.d/handover.fish"

# Shared library dependencies: the highest glibc symbol version the binary uses (Rust links
# libc and libgcc_s dynamically). objdump comes with binutils; without it, the floor of
# Debian 12 is stated.
GLIBC=2.34
if command -v objdump >/dev/null; then
  GLIBC=$(objdump -T "$BIN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
fi
DEPENDS="libc6 (>= $GLIBC)"
if command -v readelf >/dev/null && readelf -d "$BIN" | grep -q 'libgcc_s.so'; then
  DEPENDS="$DEPENDS, libgcc-s1 (>= 4.2)"
fi
SIZE_KB=$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)

cat > "$PKG/DEBIAN/control" <<EOF
Package: handover
Version: $DEBVER
Architecture: $ARCH
Maintainer: handover developers <dev@handover.invalid>
Installed-Size: $SIZE_KB
Depends: $DEPENDS
Recommends: systemd (>= 249)
Section: admin
Priority: optional
Description: systemd-native master for pre-forked web workers
 handover runs N workers of a web app on sockets that systemd (or handover)
 holds, and rolls a new generation of workers in on "systemctl reload": the
 reload returns only once the new workers serve, or rolls back and fails while
 the old ones keep serving. "systemctl restart" refuses no connection.
 .
 Ships the unit templates handover@.service and handover@.socket; put one
 /etc/handover/APP.toml per app and run handover@APP.
EOF
# Maintainer scripts (packaging/maintainer/): daemon-reload, and on upgrade `handover
# upgrade` of every running handover@APP (in place: no app is restarted).
for script in postinst postrm; do
  install -m 0755 "packaging/maintainer/$script" "$PKG/DEBIAN/$script"
done
(cd "$PKG" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
  > "$PKG/DEBIAN/md5sums"

find "$PKG" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
dpkg-deb --root-owner-group -Zxz --build "$PKG" "$DEB" >/dev/null
rm -rf "$PKG"
echo "$DEB"
