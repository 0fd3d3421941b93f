#!/usr/bin/env bash
# Build the Debian package vfailover_<version>_amd64.deb with cargo-deb.
#
# Usage: packaging/build-deb.sh            (run packaging/build-deps.sh first)
# Prints the path of the .deb as the last line of standard output.
# Honours CARGO_TARGET_DIR; the .deb lands in $CARGO_TARGET_DIR/debian/
# (default: target/debian/).
set -euo pipefail

# cargo-deb 3.8.0 (rust-version 1.85) builds with the toolchain here
# (rustc 1.95); a pinned version keeps the package layout reproducible.
CARGO_DEB_VERSION=3.8.0

cd "$(dirname "$0")/.."

have_cargo_deb() {
    cargo deb --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"
}
if ! have_cargo_deb; then
    echo "installing cargo-deb $CARGO_DEB_VERSION" >&2
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked >&2
fi
for tool in dpkg-deb strip; do
    command -v "$tool" >/dev/null || { echo "missing $tool: run packaging/build-deps.sh" >&2; exit 1; }
done

# Release profile (cargo-deb's default). The workspace keeps debug = 1 for
# profiling; --strip keeps it out of the package. --locked: build what
# Cargo.lock says. cargo-deb prints the .deb's path on stdout.
out=$(cargo deb -p vfailover --profile release --strip -- --locked)
deb=$(printf '%s\n' "$out" | tail -n 1)
[ -f "$deb" ] || { echo "cargo deb did not report a .deb (got: $out)" >&2; exit 1; }
case "$(basename "$deb")" in
    vfailover_*_amd64.deb|vfailover_*_*.deb) ;;
    *) echo "unexpected package name: $deb" >&2; exit 1 ;;
esac
echo "$deb"
