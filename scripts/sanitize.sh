#!/usr/bin/env bash
# The Rust code under the nightly checkers (not in CI: they need nightly, and CI must not):
#   bash scripts/sanitize.sh [tsan|asan|miri]...      (default: all three)
# - tsan: ThreadSanitizer over the multi-thread and multi-process tests (tests/multiprocess.rs, whose
#   children are the same instrumented binary, and the store's concurrent tests);
# - asan: AddressSanitizer (with LeakSanitizer) over the unit tests, the ABI tests and the damaged-file
#   tests (tests/abi.rs, tests/defects.rs);
# - miri: Miri over the pure modules (key, period, gcra, policy, spec, cli_values, headers): undefined
#   behaviour in their unsafe-free code would be a compiler or dependency bug, and Miri is what finds it.
# The standard library is rebuilt with the sanitizer (-Zbuild-std), or it would hide races and misuse in
# its own code; the bundled SQLite (C) is not instrumented. Each run is its own target dir.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
if ! cargo +nightly --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
rustup +nightly component add rust-src miri >/dev/null
target=x86_64-unknown-linux-gnu
# RUSTFLAGS replaces .cargo/config.toml's flags, so the CPU feature the counters need is repeated here.
base="-C target-feature=+cmpxchg16b -C force-frame-pointers=yes"
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(tsan asan miri)

for run in "${runs[@]}"; do
    case $run in
    tsan)
        echo "== ThreadSanitizer: multi-process and store tests"
        # halt_on_error: the first race fails the run instead of scrolling by.
        TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" RUSTFLAGS="$base -Zsanitizer=thread" \
            RUSTDOCFLAGS="-Zsanitizer=thread" CARGO_TARGET_DIR=target/tsan \
            cargo +nightly test -Zbuild-std --target "$target" --test multiprocess --test store -- --test-threads=2
        ;;
    asan)
        echo "== AddressSanitizer: unit, ABI and damaged-file tests"
        # Leaks the tests make on purpose are listed, with the reason, in scripts/lsan.supp.
        ASAN_OPTIONS="detect_leaks=1 abort_on_error=1 detect_stack_use_after_return=1" \
            LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp" \
            RUSTFLAGS="$base -Zsanitizer=address" CARGO_TARGET_DIR=target/asan \
            cargo +nightly test -Zbuild-std --target "$target" --lib --test abi --test defects --test fuzz_regressions
        ;;
    miri)
        echo "== Miri: pure modules"
        # Isolation off: some tests read the clock. Module paths select the pure modules' tests only.
        MIRIFLAGS="-Zmiri-disable-isolation" CARGO_TARGET_DIR=target/miri \
            cargo +nightly miri test --lib -- key:: period:: gcra:: policy:: spec:: cli_values:: headers::
        ;;
    *)
        echo "unknown run $run (tsan, asan, miri)" >&2
        exit 2
        ;;
    esac
done
echo "== sanitize: passed"
