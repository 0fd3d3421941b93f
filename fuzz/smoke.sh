#!/usr/bin/env bash
# Fuzz smoke test for CI: build every cargo-fuzz target and run each one
# for FUZZ_SECONDS (default 30) from the corpus kept in fuzz/corpus/.
# Fails when a target fails to build, crashes, times out or runs out of
# memory; the input that did it is in fuzz/artifacts/<target>/ and the
# libFuzzer report is printed.
#
# The machine has a stable Rust toolchain only. cargo-fuzz passes
# unstable flags (-Zsanitizer, -Cpasses=sancov-module, -Zbuild-std off);
# RUSTC_BOOTSTRAP=1 lets the stable compiler take them. New inputs found
# here go to a scratch folder, never into the repo's corpus.
#
# Env: FUZZ_SECONDS (per target), FUZZ_TARGETS (space separated; default
# all), CARGO_TARGET_DIR (default fuzz/target). Needs what
# packaging/build-deps.sh installs (clang, a C++ compiler for libFuzzer).
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.2
seconds=${FUZZ_SECONDS:-30}
export RUSTC_BOOTSTRAP=1

if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
target_dir=${CARGO_TARGET_DIR:-$PWD/target}

# Fails if Cargo.lock is stale, so CI builds exactly what was fuzzed.
cargo fetch --locked --quiet || {
    echo "fuzz/Cargo.lock is stale (a dependency of agent/ or netstack/ changed): run 'cd fuzz && cargo fetch' and commit it" >&2
    exit 1
}
echo "== building fuzz targets: $(echo $targets)"
# Debug assertions and overflow checks on (cargo-fuzz's default), as in the long runs.
for target in $targets; do
    cargo fuzz build --target-dir "$target_dir" "$target"
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
passed=0
for target in $targets; do
    echo "== fuzzing $target for ${seconds}s"
    mkdir -p "$scratch/$target" "corpus/$target"
    # -max_total_time bounds libFuzzer; timeout(1) bounds everything else.
    if timeout --kill-after=10 $((seconds + 120)) \
        cargo fuzz run --target-dir "$target_dir" "$target" \
            "$scratch/$target" "corpus/$target" -- \
            -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
            -print_final_stats=1 >"$scratch/$target.log" 2>&1; then
        grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$scratch/$target.log" || true
        passed=$((passed + 1))
    else
        echo "!! $target FAILED; libFuzzer's report:"
        tail -n 60 "$scratch/$target.log"
        ls -l "artifacts/$target/" 2>/dev/null || true
        failed+=("$target")
    fi
done

echo "fuzz: ${passed} passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
