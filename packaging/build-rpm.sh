#!/usr/bin/env bash
# build-rpm.sh: build the RPM of handover (for RHEL, Fedora and their kin) from this repository.
#
#   packaging/build-rpm.sh [--no-build]      -> target/generate-rpm/handover-<version>-<release>.<arch>.rpm
#
# It prints the path of the .rpm on standard output (and nothing else there).
# No spec file: `cargo generate-rpm` (cargo install --locked cargo-generate-rpm) builds the
# package from the `[package.metadata.generate-rpm]` table of Cargo.toml, which lists every
# file. This script builds the release binary (unless --no-build), then stages the files
# that are generated rather than kept in the repository, in target/release/packaging/: the
# stripped binary, the gzipped man pages and the shell completions (the same ones
# packaging/build-deb.sh puts in the .deb).
# Set SOURCE_DATE_EPOCH for reproducible timestamps (default: the last commit's time),
# HANDOVER_BIN to package another build of the binary, HANDOVER_RPM_DIR to write the .rpm
# elsewhere (tests/packaging.rs builds it in a temporary directory).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
die() { echo "build-rpm.sh: $*" >&2; exit 1; }
for c in cargo gzip; do command -v "$c" >/dev/null || die "missing $c"; done
cargo generate-rpm --version >/dev/null 2>&1 ||
  die "missing cargo-generate-rpm: cargo install --locked cargo-generate-rpm"

[[ ${1:-} == --no-build ]] || cargo build --release --locked
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# HANDOVER_BIN: package this binary instead of the one cargo just built.
BIN=${HANDOVER_BIN:-$TARGET/release/handover}
[[ -x $BIN ]] || die "no $BIN; run cargo build --release first"
OUT=${HANDOVER_RPM_DIR:-$TARGET/generate-rpm}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

# cargo generate-rpm reads "target/release/..." sources from the target directory it is
# given, wherever CARGO_TARGET_DIR puts it.
STAGE=$TARGET/release/packaging
rm -rf "$STAGE"
install -d "$STAGE" "$OUT"
install -m 0755 "$BIN" "$STAGE/handover"
# Shipped stripped, as rpmbuild's brp-strip would (the symbols are 90% of the file).
if command -v strip >/dev/null; then strip --strip-unneeded --remove-section=.comment "$STAGE/handover"; fi
# Compressed as rpmbuild's brp-compress would; -n keeps the build reproducible.
gzip -9n < man/handover.1 > "$STAGE/handover.1.gz"
gzip -9n < man/handover.toml.5 > "$STAGE/handover.toml.5.gz"
"$BIN" completions bash > "$STAGE/handover.bash"
"$BIN" completions zsh > "$STAGE/_handover"
"$BIN" completions fish > "$STAGE/handover.fish"

rm -f "$OUT"/handover-*.rpm
cargo generate-rpm --target-dir "$TARGET" -o "$OUT" >/dev/null
shopt -s nullglob
rpms=("$OUT"/handover-*.rpm)
[[ ${#rpms[@]} -eq 1 ]] || die "expected one handover-*.rpm in $OUT, found ${#rpms[@]}"
echo "${rpms[0]}"
