#!/usr/bin/env bash
# The whole test suite, as root: build the Debian package and check it
# (contents, install, unit, udev rules, purge), run the fuzz smoke test,
# clippy and rustfmt, then every cargo test, the namespace-lab and QEMU tests included.
# Under CI=true a test that needs root or QEMU fails instead of skipping.
# Run packaging/build-deps.sh first (README.md, "Run the tests").
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(packaging/build-deb.sh | tail -n 1)
packaging/check-deb.sh "$deb"
# Fuzz smoke test: each cargo-fuzz target for 30 s from fuzz/corpus/
# (fuzz/README.md); fails on any crash.
fuzz/smoke.sh
# Lints and formatting (workspace lints in Cargo.toml); the fuzz crate is
# its own workspace and is built by smoke.sh above.
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo fmt --all --check
# Last, so its summary closes the output.
cargo test --workspace --release --locked
