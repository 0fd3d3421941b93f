#!/usr/bin/env bash
# The QEMU end-to-end test, alone, in one command (as root):
#
#   tests/qemu/run.sh            # what CI runs too (4 MiB TCP echo, 2 migrations per vfailover case)
#   tests/qemu/run.sh full       # 16 MiB and 4 migrations per vfailover case, run directory kept
#
# Extra arguments go to the test binary, e.g. `tests/qemu/run.sh ci qemu_harness`.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-ci}
[ $# -gt 0 ] && shift
if [ "$mode" = full ]; then
    export VFAILOVER_QEMU_BYTES=$((16 << 20)) VFAILOVER_QEMU_MIGRATIONS=4 VFAILOVER_QEMU_KEEP=1
fi
exec cargo test --release -p vfailover --test qemu_migration -- --nocapture --test-threads=1 "$@"
