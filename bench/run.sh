#!/bin/sh
# Build and run `vfailover bench` (as root): the stack against the guest
# kernel in a namespace lab, written to bench/RESULTS.md. Extra arguments go
# to the command (see `vfailover bench --help`). Takes about 3-5 minutes.
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p vfailover
bin="${CARGO_TARGET_DIR:-target}/release/vfailover"
exec "$bin" bench --output bench/RESULTS.md "$@"
